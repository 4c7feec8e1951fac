"""The HTTP endpoints of a pipeline fed by a MemorySource: status codes, readiness, every metric."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from unsflow.components import Context
from unsflow.config.loading import parse_config
from unsflow.engine.metrics import METRICS
from unsflow.engine.pipeline import Pipeline
from unsflow.message import Message
from unsflow.testing import MemorySource


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(port: int, path: str, method: str = "GET") -> tuple[int, str, str]:
    """(status, content type, body) of one request."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def config(tmp_path, port: int):
    return parse_config({
        "targets": {"out": {"type": "file", "path": str(tmp_path / "out.jsonl"),
                            "processors": ["parse"]}},
        "processors": {"parse": {"type": "parse", "format": "json"}},
        "subscriptions": {"plant/+/press/#": {"qos": 1, "target": "out"},
                          "plant/#": {"qos": 1, "target": "out"}},
        "dead-letter": {"path": str(tmp_path / "dead.jsonl")},
        "http": {"host": "127.0.0.1", "port": port},
    }, env={})


async def test_endpoints_report_what_flowed(tmp_path):
    port = free_port()
    source = MemorySource("mem")
    pipeline = Pipeline(config(tmp_path, port), Context(env={}), source=source)
    source.push([Message("plant/l1/press/vib", b'{"n": 1}', 1, received_at=time.time()),
                 Message("plant/l1/oven/temp", b'{"n": 2}', 1, received_at=time.time()),
                 Message("plant/l1/oven/temp", b"not json", 1, received_at=time.time())])
    stop = asyncio.Event()
    before = time.time()
    task = asyncio.create_task(pipeline.run(stop))
    try:
        for _ in range(200):
            if source.acked_batches == 1 and pipeline.http is not None:
                break
            await asyncio.sleep(0.02)
        assert source.acked_batches == 1

        assert await asyncio.to_thread(http, port, "/healthz") == (200, "text/plain", "ok\n")
        status, ctype, body = await asyncio.to_thread(http, port, "/readyz")
        assert (status, ctype) == (200, "application/json")
        assert json.loads(body) == {"ready": True, "reason": None, "sources": {"mem": True},
                                    "spools_full": {}, "dead_letter": None}
        assert (await asyncio.to_thread(http, port, "/nope"))[0] == 404
        assert (await asyncio.to_thread(http, port, "/metrics", "POST"))[0] == 405

        status, ctype, body = await asyncio.to_thread(http, port, "/metrics")
        assert status == 200
        assert ctype == "text/plain; version=0.0.4; charset=utf-8"
        got = samples(body)
        assert got[("unsflow_target_received_total", (("target", "out"),))] == 3
        assert got[("unsflow_target_accepted_total", (("target", "out"),))] == 2
        assert got[("unsflow_target_dead_lettered_total", (("target", "out"),))] == 1
        assert got[("unsflow_processor_received_total", (("processor", "parse"),))] == 3
        assert got[("unsflow_processor_emitted_total", (("processor", "parse"),))] == 2
        assert got[("unsflow_processor_dead_lettered_total", (("processor", "parse"),))] == 1
        assert got[("unsflow_dead_letter_total", ())] == 1
        assert got[("unsflow_ready", ())] == 1
        assert got[("unsflow_batch_seconds_count", (("stage", "target:out"),))] == 1
        assert got[("unsflow_batch_seconds_count", (("stage", "processor:parse"),))] == 1
        # Both filters matched the press topic, only plant/# the oven one.
        for flt in ("plant/+/press/#", "plant/#"):
            when = got[("unsflow_last_message_timestamp_seconds", (("subscription", flt),))]
            assert before <= when <= time.time()
        # Every name of the typed list is exported (the families, as Prometheus names them).
        families = {f.name for f in text_string_to_metric_families(body)}
        assert {m.name.removesuffix("_total") for m in METRICS} <= families
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    # Stopped: nothing listens any more.
    try:
        await asyncio.to_thread(http, port, "/healthz")
        raise AssertionError("still serving after stop")
    except urllib.error.URLError:
        pass


async def test_a_taken_port_does_not_stop_the_pipeline(tmp_path, caplog):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        source = MemorySource("mem")
        pipeline = Pipeline(config(tmp_path, port), Context(env={}), source=source)
        source.push([Message("plant/l1/press/vib", b'{"n": 1}', 1)])
        stop = asyncio.Event()
        task = asyncio.create_task(pipeline.run(stop))
        for _ in range(200):
            if source.acked_batches == 1:
                break
            await asyncio.sleep(0.02)
        stop.set()
        await asyncio.wait_for(task, 30)
    assert source.acked_batches == 1
    assert pipeline.http is None
    assert f"cannot listen on 127.0.0.1:{port}" in caplog.text


def test_operations_doc_lists_every_metric():
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    missing = [m.name for m in METRICS if f"| `{m.name}` | {m.kind} |" not in doc]
    assert not missing, f"docs/operations.md does not list {missing}"


async def test_raw_requests_bad_head_and_silent_clients(tmp_path):
    port = free_port()
    pipeline = Pipeline(config(tmp_path, port), Context(env={}), source=MemorySource("mem"))
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))

    async def raw(request: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return data

    try:
        for _ in range(100):
            if pipeline.http is not None and pipeline.running:  # /readyz 200 needs both
                break
            await asyncio.sleep(0.02)
        silent = await asyncio.open_connection("127.0.0.1", port)  # sends nothing
        head = await raw(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"Content-Length: 3\r\n" in head and head.endswith(b"\r\n\r\n")  # no body
        assert (await raw(b"nonsense\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
        assert (await raw(b"GET /readyz?verbose=1 HTTP/1.0\r\n\r\n")).startswith(
            b"HTTP/1.1 200 ")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)  # the silent client does not hold up the stop
    assert await asyncio.wait_for(silent[0].read(), 5) == b""  # closed by the server
    silent[1].close()
