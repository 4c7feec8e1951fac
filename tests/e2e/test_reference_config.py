"""The reference edge config runs end to end through `unsflow run`.

Substituted, as a deployment would: the broker credential comes from a mounted
secret file and the connection uses TLS; the S3 bucket becomes a local
directory (MinIO arrives with the object-store issue); the inference service
is a real HTTP server in this test; topics get a per-test prefix.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.e2e.helpers import UnsflowProcess, wait_for_rows
from unsflow.testing import Collector, publish

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).parents[2] / "examples"


class InferenceHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/api/v1/inference-model-1":
            self.send_response(404)
            self.end_headers()
            return
        answer = json.dumps({"anomaly": body["value"] > 20}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def inference_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), InferenceHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api/v1"
    server.shutdown()


@pytest.mark.e2e
def test_reference_config_end_to_end(mqtt_broker, topic_prefix, tmp_path, inference_server):
    config = json.loads((EXAMPLES / "reference.json").read_text())
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "mqtt-credential").write_text(
        json.dumps({"username": mqtt_broker.username, "password": mqtt_broker.password}))
    config["mqtt-broker-credential"] = {"secret-name": "mqtt-credential", "provider": "file"}
    config["mqtt-broker"] = {"port": mqtt_broker.tls_port, "tls": {"ca-file": mqtt_broker.ca_file}}
    s3 = config["targets"]["s3-target"]
    del s3["s3-bucket"], s3["region"]
    s3["local-path"] = str(tmp_path / "lake")
    s3["batching"] = {"max-age": 0.3}
    mq = config["targets"]["mqtt-target"]
    mq["mqtt-credential"] = {"secret-name": "mqtt-credential", "provider": "file"}
    mq["mqtt-broker-port"] = mqtt_broker.tls_port
    mq["tls"] = {"ca-file": mqtt_broker.ca_file}
    mq["topic"] = f"{topic_prefix}/out/{{topic}}"
    config["processors"]["edge-inference"]["base-url"] = inference_server
    config["subscriptions"] = {f"{topic_prefix}/{k}": v for k, v in config["subscriptions"].items()}
    config["dead-letter"] = {"path": str(tmp_path / "dead.jsonl")}
    path = tmp_path / "reference.json"
    path.write_text(json.dumps(config))

    proc = UnsflowProcess(["run", str(path)], cwd=tmp_path,
                          env={"EDGE_BROKER_HOST": mqtt_broker.host,
                               "UNSFLOW_SECRETS_DIR": str(secrets)}).start()
    try:
        proc.wait_for_log("subscribed:")
        auth = dict(username=mqtt_broker.username, password=mqtt_broker.password,
                    tls_ca=mqtt_broker.ca_file)
        with Collector(mqtt_broker.host, mqtt_broker.tls_port, f"{topic_prefix}/out/#",
                       **auth) as out:
            messages = []
            for i in range(300):
                line = f"line{i % 3}"
                for name, area in (("Message1", "area1"), ("Message2", "area1"),
                                   ("Message1", "area2")):
                    topic = f"{topic_prefix}/com1/plant1/{area}/{line}/{name}"
                    payload = {"seq": i, "value": 10 + i % 20, "area": area, "name": name}
                    messages.append((topic, json.dumps(payload).encode()))
            # One payload that is not UTF-8; it must land in the dead letter, the rest goes on.
            messages.append((f"{topic_prefix}/com1/plant1/area1/line0/Message1", b"\xff\xfe"))
            assert publish(mqtt_broker.host, mqtt_broker.tls_port, messages, qos=2, **auth) == 901

            rows = wait_for_rows(tmp_path / "lake", lambda r: len(r) >= 600)
            try:
                received = out.wait(300, timeout=30)
            except TimeoutError as exc:
                raise AssertionError(f"{exc}\n{proc.output[-4000:]}") from None
    finally:
        code = proc.terminate()
    assert code == 0, proc.output[-3000:]

    # s3-target: both area1 subscriptions, 600 rows, every (seq, name) once.
    assert len(rows) == 600, proc.output[-3000:]
    assert {(r["seq"], r["name"]) for r in rows} == {
        (i, n) for i in range(300) for n in ("Message1", "Message2")}
    assert {r["area"] for r in rows} == {"area1"}
    assert all(r["_topic"].startswith(f"{topic_prefix}/com1/plant1/area1/") for r in rows)
    assert {"date", "hour"} <= set(rows[0])

    # mqtt-target: the area2 messages, each with the inference service's answer.
    assert len(received) == 300
    outputs = [json.loads(p) for _, p in received]
    assert sorted(o["seq"] for o in outputs) == list(range(300))
    for o in outputs:
        assert o["inference"] == {"anomaly": o["value"] > 20}
    assert all(t.startswith(f"{topic_prefix}/out/{topic_prefix}/com1/plant1/area2/")
               for t, _ in received)

    dead = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert len(dead) == 1
    assert dead[0]["stage"] == "target:s3-target" and "UTF-8" in dead[0]["error"]
    assert dead[0]["payload_base64"] == "//4="
