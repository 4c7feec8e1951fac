"""Fault scenario 6: the remote inference service hangs, returns 5xx, returns garbage.

`unsflow run` sends a numbered QoS 1 stream through a `remote` processor
(KServe v2) to Parquet. The inference service is a small HTTP server run by
the test, because the test must make it misbehave on cue; it answers like a
v2 model server (one output row per input row) when it behaves. Phases:
behave, hang (answers later than the processor's timeout), behave, 503,
garbage (200 with a body that is no v2 answer), behave.

Expected: hangs and 5xx are retried, holding the acknowledgements, so those
messages arrive once the service is back; garbage is an answer no retry can
fix, so those messages go to the dead letter with the reason. Nothing is lost
and the pipeline keeps running.
"""

from __future__ import annotations

import collections
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.e2e.helpers import UnsflowProcess, dead_letter_seqs, report_scenario, wait_for_rows
from unsflow.testing import numbered_payload, publish

pytestmark = pytest.mark.e2e

TOTAL = 4000


class FaultyModel:
    """A v2 inference endpoint whose behaviour the test switches: ok, hang, 503, garbage."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.seen = collections.Counter()
        self.release = threading.Event()
        model = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                mode = model.mode
                model.seen[mode] += 1
                if mode == "hang":
                    model.release.wait(5)  # longer than the processor's timeout
                    return self._send(200, b'{"outputs": []}')
                if mode == "503":
                    return self._send(503, b'{"error": "model is loading"}')
                if mode == "garbage":
                    return self._send(200, b"<html>502 Bad Gateway</html>")
                request = json.loads(body)
                data = request["inputs"][0]["data"]
                answer = {"model_name": "vib", "outputs": [
                    {"name": "score", "shape": [len(data), 1], "datatype": "FP32",
                     "data": [float(v) * 2 for v in data]}]}
                self._send(200, json.dumps(answer).encode())

            def _send(self, status: int, body: bytes) -> None:
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up (timeout): that is the point of a hang

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FaultyModel":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def test_inference_hang_5xx_and_garbage_lose_nothing(mqtt_broker, topic_prefix, tmp_path):
    topic = f"{topic_prefix}/press/vibration"
    with FaultyModel() as model:
        config = {
            "mqtt-broker": {"host": mqtt_broker.host, "port": mqtt_broker.port,
                            "client-id": f"infer-{os.getpid()}-{time.time_ns()}",
                            "clean-start": False},
            "processors": {"score": {"type": "remote", "protocol": "v2", "base-url": model.url,
                                     "processor-id": "vib", "input-field": "value",
                                     "timeout": 1.0, "retries": 1, "backoff-max": 0.5}},
            "targets": {"lake": {"type": "s3", "local-path": str(tmp_path / "lake"),
                                 "processors": ["score"], "batching": {"max-age": 0.3}}},
            "subscriptions": {f"{topic_prefix}/#": {"qos": 1, "target": "lake"}},
            "dead-letter": {"path": str(tmp_path / "dead.jsonl")},
            "http": {"port": 0},
        }
        (tmp_path / "infer.json").write_text(json.dumps(config))
        proc = UnsflowProcess(["run", str(tmp_path / "infer.json")], cwd=tmp_path, env={}).start()
        published = {"n": 0}
        # Each fault phase lasts until the service has seen enough requests in that
        # mode (the pipeline's retry backoff decides when they come, not a clock);
        # publishing goes on through every phase.
        phases = [("ok", 0), ("hang", 3), ("ok", 0), ("503", 5), ("garbage", 3), ("ok", 0)]

        def paced():  # one connection, 100 messages every 0.4 s: about 16 s
            for seq in range(TOTAL):
                if seq and seq % 100 == 0:
                    time.sleep(0.4)
                yield topic, numbered_payload(seq)

        def publish_all() -> None:
            published["n"] = publish(mqtt_broker.host, mqtt_broker.port, paced(), qos=1,
                                     timeout=170)

        publisher = threading.Thread(target=publish_all)
        try:
            proc.wait_for_log("subscribed:")
            publisher.start()
            for mode, requests in phases:
                seen_before = model.seen[mode]
                model.mode = mode
                if mode == "hang":
                    model.release.clear()
                else:
                    model.release.set()
                if not requests:
                    time.sleep(1.0)
                    continue
                deadline = time.monotonic() + 40
                while model.seen[mode] - seen_before < requests and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert model.seen[mode] - seen_before >= requests, \
                    f"phase {mode}: {model.seen}\n{proc.output[-3000:]}"
            model.mode = "ok"
            model.release.set()
            publisher.join(180)
            assert published["n"] == TOTAL
            dead_path = tmp_path / "dead.jsonl"

            def settled(rows: list[dict]) -> bool:
                return len({r["seq"] for r in rows} | set(dead_letter_seqs(dead_path))) >= TOTAL

            rows = wait_for_rows(tmp_path / "lake", settled, timeout=120)
            assert proc.proc.poll() is None, "the pipeline stopped:\n" + proc.output[-3000:]
        finally:
            code = proc.terminate()
            publisher.join(5)
    assert code == 0, proc.output[-3000:]
    assert all(model.seen[m] for m in ("ok", "hang", "503", "garbage")), model.seen
    delivered = collections.Counter(r["seq"] for r in rows)
    dead = dead_letter_seqs(tmp_path / "dead.jsonl")
    # Hangs and 5xx were retried, not dead-lettered: only garbage answers are in the dead letter.
    errors = [json.loads(line)["error"] for line in (tmp_path / "dead.jsonl").read_text().splitlines()] \
        if (tmp_path / "dead.jsonl").exists() else []
    assert errors, "the garbage phase dead-lettered nothing"
    assert all("answer" in e or "not JSON" in e or "outputs" in e for e in errors), errors[:3]
    # Rows carry the model's answer for their own value.
    assert all(r["inference"] == pytest.approx(r["value"] * 2) for r in rows)
    report_scenario("6. inference hangs, 5xx, garbage", TOTAL, delivered, dead,
                    note=f"requests by mode {dict(model.seen)}")
