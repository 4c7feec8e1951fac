"""/healthz, /readyz and /metrics of a pipeline on the real broker.

Ready means the broker confirmed the subscriptions, not that a TCP connection
exists; the counts on /metrics are those of the messages published.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from tests.unit.test_health import free_port, http, samples
from unsflow.components import Context
from unsflow.config.loading import parse_config
from unsflow.engine.pipeline import Pipeline
from unsflow.testing import publish, publish_numbered

pytestmark = pytest.mark.integration

COUNT = 200


def config(tmp_path, broker_host: str, broker_port: int, topic_filter: str, http_port: int):
    return parse_config({
        "mqtt-broker": {"host": broker_host, "port": broker_port,
                        "reconnect-min": 0.2, "reconnect-max": 0.5},
        "targets": {"lake": {"type": "file", "path": str(tmp_path / "lake.jsonl")}},
        "subscriptions": {topic_filter: {"qos": 1, "target": "lake"}},
        "dead-letter": {"path": str(tmp_path / "dead.jsonl")},
        "http": {"host": "127.0.0.1", "port": http_port},
    }, env={})


async def http_status(port: int, path: str) -> int | None:
    """The status of GET ``path``; None while nothing listens yet."""
    try:
        return (await asyncio.to_thread(http, port, path))[0]
    except OSError:
        return None


async def wait_for(check, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {what} within {timeout}s")


async def test_ready_once_subscribed_and_metrics_count_what_was_published(
        mqtt_broker, topic_prefix, tmp_path):
    port = free_port()
    topic_filter = f"{topic_prefix}/#"
    pipeline = Pipeline(config(tmp_path, mqtt_broker.host, mqtt_broker.port, topic_filter, port),
                        Context(env={}))
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    started = time.time()
    try:
        async def ready():
            return await http_status(port, "/readyz") == 200 or None

        await wait_for(ready, what="/readyz 200")
        assert pipeline.source.ready  # the broker's SUBACK arrived
        assert await asyncio.to_thread(http, port, "/healthz") == (200, "text/plain", "ok\n")

        sent = await asyncio.to_thread(publish_numbered, mqtt_broker.host, mqtt_broker.port,
                                       f"{topic_prefix}/press/vib", COUNT, qos=1)
        assert sent == COUNT
        # Not JSON: the file target dead-letters it.
        await asyncio.to_thread(publish, mqtt_broker.host, mqtt_broker.port,
                                [(f"{topic_prefix}/press/vib", b"\xff not json")], 1)

        async def settled():
            status, ctype, body = await asyncio.to_thread(http, port, "/metrics")
            got = samples(body)
            if got.get(("unsflow_source_acked_total", (("source", "uns"),))) == COUNT + 1:
                return status, ctype, got
            return None

        status, ctype, got = await wait_for(settled, what="all messages acknowledged")
        assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
        assert got[("unsflow_source_received_total", (("source", "uns"),))] == COUNT + 1
        assert got[("unsflow_source_in_flight", (("source", "uns"),))] == 0
        assert got[("unsflow_source_ready", (("source", "uns"),))] == 1
        assert got[("unsflow_target_received_total", (("target", "lake"),))] == COUNT + 1
        assert got[("unsflow_target_accepted_total", (("target", "lake"),))] == COUNT
        assert got[("unsflow_target_dead_lettered_total", (("target", "lake"),))] == 1
        assert got[("unsflow_target_in_flight", (("target", "lake"),))] == 0
        assert got[("unsflow_dead_letter_total", ())] == 1
        assert got[("unsflow_ready", ())] == 1
        last = got[("unsflow_last_message_timestamp_seconds", (("subscription", topic_filter),))]
        assert started <= last <= time.time()
        assert got[("unsflow_batch_seconds_count", (("stage", "target:lake"),))] >= 1
        # What the counters say is what the files hold.
        assert len((tmp_path / "lake.jsonl").read_text().splitlines()) == COUNT
        assert len((tmp_path / "dead.jsonl").read_text().splitlines()) == 1
    finally:
        stop.set()
        await asyncio.wait_for(task, 40)


async def test_not_ready_while_the_broker_cannot_be_reached(tmp_path, topic_prefix):
    closed = free_port()  # nothing listens here: the source never connects
    port = free_port()
    pipeline = Pipeline(config(tmp_path, "127.0.0.1", closed, f"{topic_prefix}/#", port),
                        Context(env={}))
    task = asyncio.create_task(pipeline.run(asyncio.Event()))
    try:
        async def serving():
            try:
                return await asyncio.to_thread(http, port, "/healthz")
            except OSError:
                return None

        assert await wait_for(serving, what="/healthz") == (200, "text/plain", "ok\n")
        await asyncio.sleep(1.0)  # several connection attempts
        status, ctype, body = await asyncio.to_thread(http, port, "/readyz")
        assert (status, ctype) == (503, "application/json")
        report = json.loads(body)
        assert report["ready"] is False and report["sources"] == {"uns": False}
        assert report["reason"]
        got = samples((await asyncio.to_thread(http, port, "/metrics"))[2])
        assert got[("unsflow_ready", ())] == 0
        assert got[("unsflow_source_ready", (("source", "uns"),))] == 0
    finally:
        # Still connecting: cancelling run() closes what started (a stop would too).
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert pipeline.http is None  # the server went with it


async def test_not_ready_after_the_broker_goes_away(own_mqtt_broker, topic_prefix, tmp_path):
    port = free_port()
    pipeline = Pipeline(config(tmp_path, own_mqtt_broker.host, own_mqtt_broker.port,
                               f"{topic_prefix}/#", port), Context(env={}))
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))

    async def readyz(code):
        return await http_status(port, "/readyz") == code or None

    try:
        await wait_for(lambda: readyz(200), what="ready")
        await asyncio.to_thread(own_mqtt_broker.stop)
        await wait_for(lambda: readyz(503), what="/readyz 503 after the broker stopped")
        await asyncio.to_thread(own_mqtt_broker.start)
        await wait_for(lambda: readyz(200), timeout=30, what="/readyz 200 after the restart")
    finally:
        stop.set()
        await asyncio.wait_for(task, 40)
