"""The reference config runs with its credentials from the AWS Secrets Manager API.

The credential blocks stay exactly as in examples/reference.json
(``secret-name: mqtt-credential``, ``secret-region: us-east-1``); the secret
holds the test broker's user and password and lives in moto's Secrets
Manager, which the pipeline finds through ``UNSFLOW_AWS_SECRETS_ENDPOINT``.
Substituted, as a deployment would: the broker's port and CA (its TLS and
password listener), the S3 bucket (a MinIO bucket, with endpoint and a
credential that also comes from Secrets Manager), the inference service's
URL (a real HTTP server in this test), and a per-test topic prefix.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AwsEndpoint, Broker
from tests.e2e.helpers import UnsflowProcess
from tests.e2e.test_reference_config import inference_server  # noqa: F401  (a fixture)
from unsflow.lake import open_lake
from unsflow.testing import Collector, publish

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).parents[2] / "examples"


def put_secret(sm: AwsEndpoint, name: str, value: dict[str, str]) -> None:
    """Create or update ``name``: moto outlives a test run, and the reference fixes the name."""
    client = sm.client("secretsmanager")
    try:
        client.create_secret(Name=name, SecretString=json.dumps(value))
    except client.exceptions.ResourceExistsException:
        client.put_secret_value(SecretId=name, SecretString=json.dumps(value))


def lake_rows(minio: AwsEndpoint, root: str) -> list[dict[str, Any]]:
    fs = minio.arrow_filesystem()
    import pyarrow.fs

    if fs.get_file_info(root).type == pyarrow.fs.FileType.NotFound:
        return []
    return open_lake(root, filesystem=fs).to_table().to_pylist()


def wait_for_lake_rows(minio: AwsEndpoint, root: str, count: int,
                       timeout: float = 60.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = lake_rows(minio, root)
        if len(rows) >= count:
            return rows
        time.sleep(0.3)
    return rows


@pytest.mark.e2e
def test_reference_config_with_credentials_from_secrets_manager(
        mqtt_broker: Broker, minio: AwsEndpoint, secrets_manager: AwsEndpoint, s3_bucket: str,
        topic_prefix: str, tmp_path: Path, inference_server: str) -> None:  # noqa: F811
    reference = json.loads((EXAMPLES / "reference.json").read_text())
    config = json.loads(json.dumps(reference))
    put_secret(secrets_manager, "mqtt-credential",
               {"username": mqtt_broker.username, "password": mqtt_broker.password})
    minio_secret = f"unsflow-test/minio-{uuid.uuid4().hex[:8]}"
    put_secret(secrets_manager, minio_secret,
               {"username": minio.access_key, "password": minio.secret_key})

    config["mqtt-broker"] = {"port": mqtt_broker.tls_port, "tls": {"ca-file": mqtt_broker.ca_file}}
    s3 = config["targets"]["s3-target"]
    s3.update({"s3-bucket": s3_bucket, "endpoint": minio.endpoint, "allow-http": True,
               "credential": {"secret-name": minio_secret, "secret-region": "us-east-1"},
               "batching": {"max-age": 0.3}})
    mq = config["targets"]["mqtt-target"]
    mq["mqtt-broker-port"] = mqtt_broker.tls_port
    mq["tls"] = {"ca-file": mqtt_broker.ca_file}
    mq["topic"] = f"{topic_prefix}/out/{{topic}}"
    config["processors"]["edge-inference"]["base-url"] = inference_server
    config["subscriptions"] = {f"{topic_prefix}/{k}": v
                               for k, v in config["subscriptions"].items()}
    config["dead-letter"] = {"path": str(tmp_path / "dead.jsonl")}
    # The credential blocks are the reference's, untouched.
    assert config["mqtt-broker-credential"] == reference["mqtt-broker-credential"] == {
        "secret-name": "mqtt-credential", "secret-region": "us-east-1"}
    assert mq["mqtt-credential"] == reference["targets"]["mqtt-target"]["mqtt-credential"]
    path = tmp_path / "reference.json"
    path.write_text(json.dumps(config))

    # Only the Secrets Manager endpoint and a key it takes; nothing about the broker's password.
    env = {"EDGE_BROKER_HOST": mqtt_broker.host,
           "UNSFLOW_AWS_SECRETS_ENDPOINT": secrets_manager.endpoint,
           "AWS_ACCESS_KEY_ID": secrets_manager.access_key,
           "AWS_SECRET_ACCESS_KEY": secrets_manager.secret_key}
    proc = UnsflowProcess(["run", str(path)], cwd=tmp_path, env=env).start()
    try:
        proc.wait_for_log("subscribed:")
        auth = mqtt_broker.tls_options()
        with Collector(mqtt_broker.host, mqtt_broker.tls_port, f"{topic_prefix}/out/#",
                       **auth) as out:
            messages = []
            for i in range(100):
                for name, area in (("Message1", "area1"), ("Message2", "area1"),
                                   ("Message1", "area2")):
                    topic = f"{topic_prefix}/com1/plant1/{area}/line{i % 3}/{name}"
                    payload = {"seq": i, "value": 10 + i % 20, "area": area, "name": name}
                    messages.append((topic, json.dumps(payload).encode()))
            assert publish(mqtt_broker.host, mqtt_broker.tls_port, messages, qos=2,
                           **auth) == 300
            rows = wait_for_lake_rows(minio, f"{s3_bucket}/sample-key", 200)
            received = out.wait(100, timeout=30)
    finally:
        code = proc.terminate()
    assert code == 0, proc.output[-3000:]
    assert mqtt_broker.password not in proc.output and minio.secret_key not in proc.output

    # s3-target: the two area1 subscriptions, in MinIO under the reference's key prefix.
    assert len(rows) == 200, proc.output[-3000:]
    assert {(r["seq"], r["name"]) for r in rows} == {
        (i, n) for i in range(100) for n in ("Message1", "Message2")}
    assert {r["area"] for r in rows} == {"area1"}
    s3_client = minio.client("s3")
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert all(k.startswith("sample-key/date=") and "/sample-obj-" in k for k in keys), keys

    # mqtt-target: the area2 messages, published with the same Secrets Manager credential.
    assert len(received) == 100
    outputs = [json.loads(p) for _, p in received]
    assert sorted(o["seq"] for o in outputs) == list(range(100))
    assert all(o["inference"] == {"anomaly": o["value"] > 20} for o in outputs)


@pytest.mark.e2e
def test_a_missing_secret_stops_startup_with_its_name(
        mqtt_broker: Broker, secrets_manager: AwsEndpoint, tmp_path: Path) -> None:
    name = f"unsflow-test/absent-{uuid.uuid4().hex[:8]}"
    config = {"mqtt-broker-credential": {"secret-name": name, "secret-region": "us-east-1"},
              "mqtt-broker": {"port": mqtt_broker.tls_port,
                              "tls": {"ca-file": mqtt_broker.ca_file}},
              "targets": {"lake": {"type": "s3", "local-path": str(tmp_path / "lake")}},
              "subscriptions": {"t/never/#": {"qos": 1, "target": "lake"}}}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    env = {"EDGE_BROKER_HOST": mqtt_broker.host,
           "UNSFLOW_AWS_SECRETS_ENDPOINT": secrets_manager.endpoint,
           "AWS_ACCESS_KEY_ID": secrets_manager.access_key,
           "AWS_SECRET_ACCESS_KEY": secrets_manager.secret_key}
    proc = UnsflowProcess(["run", str(path)], cwd=tmp_path, env=env).start()
    assert proc.proc is not None
    code = proc.proc.wait(60)
    proc.terminate()
    assert code == 1, proc.output[-3000:]
    assert f"secret {name!r}" in proc.output and "not found [ResourceNotFoundException]" in \
        proc.output, proc.output[-3000:]
