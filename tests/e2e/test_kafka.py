"""The Red Hat edge pattern's two Kafka integrations, through `unsflow run`.

- MQTT -> Kafka bridge: UNS messages to a Kafka topic, key = the site name from
  the topic, payload byte-identical.
- Kafka -> data lake: a consumer group writes Parquet, flushing at 50 rows
  (the pattern's integration cut objects of 50 messages), every message a row
  in the partition its timestamp and MQTT topic say, offsets committed after.
- Both chained over SASL_SSL with SCRAM-SHA-512 into MinIO: an edge process
  bridges, a core process writes the lake.
"""

from __future__ import annotations

import collections
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import UnsflowProcess, wait_for_rows
from unsflow.testing import publish, publish_numbered

pytestmark = pytest.mark.e2e

SITES = ["site1", "site2", "site3"]
PER_SITE = 1000


def run(config: dict[str, Any], cwd: Path, name: str, env: dict[str, str] | None = None
        ) -> UnsflowProcess:
    path = cwd / f"{name}.json"
    path.write_text(json.dumps(config, indent=2))
    return UnsflowProcess(["run", str(path)], cwd=cwd, env=env or {}).start()


def payload(site: str, seq: int) -> bytes:
    # Not canonical JSON on purpose (spaces, key order): the bridge must not re-encode it.
    return b'{ "seq": %d, "site": "%s", "vibration": %.3f }' % (seq, site.encode(), seq / 7)


def wait_until_bridged(kafka, topic: str, broker, warmup_topic: str, proc: UnsflowProcess,
                       **kafka_conf: Any) -> None:
    """Publish to ``warmup_topic`` until one arrives in Kafka: the bridge is subscribed."""
    from confluent_kafka import Consumer

    consumer = Consumer(kafka.client_config(**{"group.id": f"{topic}.warmup",
                                               "auto.offset.reset": "earliest", **kafka_conf}))
    consumer.subscribe([topic])
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            publish(broker.host, broker.port, [(warmup_topic, b"warmup")])
            for rec in consumer.consume(10, 1.0):
                if rec.error() is None and rec.value() == b"warmup":
                    return
        raise AssertionError(f"the bridge did not forward within 60 s:\n{proc.output[-3000:]}")
    finally:
        consumer.close()


def test_mqtt_to_kafka_bridge_keys_by_site_payload_unchanged(mqtt_broker, kafka, kafka_topic,
                                                             topic_prefix, tmp_path):
    kafka.create_topic(kafka_topic, partitions=3)
    config = {
        "mqtt-broker": {"host": mqtt_broker.host, "port": mqtt_broker.port},
        "targets": {"bridge": {"type": "kafka", "bootstrap-servers": kafka.bootstrap,
                               "topic": kafka_topic, "key": "{levels[3]}"}},
        "subscriptions": {f"{topic_prefix}/#": {"qos": 1, "target": "bridge"}},
        "dead-letter": {"path": str(tmp_path / "dead.jsonl")},
    }
    proc = run(config, tmp_path, "bridge")
    try:
        wait_until_bridged(kafka, kafka_topic, mqtt_broker, f"{topic_prefix}/warmup", proc)
        for site in SITES:
            publish_numbered(mqtt_broker.host, mqtt_broker.port, f"{topic_prefix}/{site}/press/vib",
                             PER_SITE, make_payload=lambda seq, s=site: payload(s, seq))
        records = [r for r in kafka.consume(kafka_topic, 3 * PER_SITE + 1)
                   if r.value() != b"warmup"]
    finally:
        code = proc.terminate()
    assert code == 0, proc.output[-3000:]
    assert len(records) == 3 * PER_SITE
    sent = {payload(site, seq) for site in SITES for seq in range(PER_SITE)}
    assert {r.value() for r in records} == sent  # byte-identical, none lost, none twice
    for rec in records:
        site = json.loads(rec.value())["site"]
        assert rec.key() == site.encode()
        assert dict(rec.headers())["mqtt.topic"] == f"{topic_prefix}/{site}/press/vib".encode()
    # Each site (key) on one partition, in publish order.
    for site in SITES:
        mine = [r for r in records if r.key() == site.encode()]
        assert len({r.partition() for r in mine}) == 1
        assert [json.loads(r.value())["seq"] for r in mine] == list(range(PER_SITE))
    assert not (tmp_path / "dead.jsonl").exists() or not (tmp_path / "dead.jsonl").read_text()


# 2026-03-01T10:59:40Z: the 500 records span two hours, 10:59 and 11:00-11:03.
T0_MS = 1772362780000
TOTAL = 500


def produce_uns_records(kafka, topic: str, **conf: Any) -> dict[int, tuple[str, int]]:
    """TOTAL records with an MQTT topic header and a timestamp each; seq -> (topic, ts ms)."""
    from confluent_kafka import Producer

    producer = Producer(kafka.client_config(**conf))
    expected: dict[int, tuple[str, int]] = {}
    for seq in range(TOTAL):
        mqtt_topic = f"acme/{SITES[seq % 3]}/press/vibration"
        ts = T0_MS + seq * 500
        producer.produce(topic, json.dumps({"seq": seq, "value": seq * 0.5}).encode(),
                         key=SITES[seq % 3].encode(), timestamp=ts,
                         headers=[("mqtt.topic", mqtt_topic.encode())])
        expected[seq] = (mqtt_topic, ts)
    assert producer.flush(30) == 0
    return expected


def expected_dir(mqtt_topic: str, ts_ms: int) -> str:
    t = time.gmtime(ts_ms / 1000)
    site = mqtt_topic.split("/")[1]
    return f"date={time.strftime('%Y-%m-%d', t)}/hour={time.strftime('%H', t)}/enterprise=acme/site={site}"


def lake_target(**where: Any) -> dict[str, Any]:
    return {"type": "s3", "format": "parquet", "key-prefix": "uns",
            "partition-by": ["date", "hour", "topic-levels"],
            "topic-levels": ["enterprise", "site"],
            # Flushed at 50 rows, as the pattern's integration cut objects; the age limit only
            # ends the test's last object sooner.
            "batching": {"max-records": 50, "max-age": 3}, **where}


def test_kafka_to_datalake_flushes_at_50_rows(kafka, kafka_topic, tmp_path):
    kafka.create_topic(kafka_topic, partitions=1)
    expected = produce_uns_records(kafka, kafka_topic)
    lake = tmp_path / "lake"
    config = {
        "targets": {"lake": lake_target(**{"local-path": str(lake)})},
        "sources": {"plant-kafka": {"type": "kafka", "bootstrap-servers": kafka.bootstrap,
                                    "group-id": kafka_topic, "topics": [kafka_topic],
                                    "topic-header": "mqtt.topic", "max-poll-records": 50,
                                    "target": "lake"}},
        "dead-letter": {"path": str(tmp_path / "dead.jsonl")},
    }
    proc = run(config, tmp_path, "lake")
    try:
        rows = wait_for_rows(lake, lambda r: len(r) >= TOTAL, timeout=90)
    finally:
        code = proc.terminate()
    assert code == 0, proc.output[-3000:]
    assert_rows_where_expected(lake, expected)
    # Committed after the writes: the group has nothing left to read.
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(kafka.client_config(**{"group.id": kafka_topic}))
    (committed,) = consumer.committed([TopicPartition(kafka_topic, 0)], timeout=10)
    consumer.close()
    assert committed.offset == TOTAL
    assert len(rows) == TOTAL


def assert_rows_where_expected(lake: Path, expected: dict[int, tuple[str, int]]) -> None:
    import pyarrow.parquet as pq

    files = sorted(lake.rglob("*.parquet"))
    where: dict[int, list[str]] = collections.defaultdict(list)
    sizes: list[int] = []
    for f in files:
        table = pq.read_table(f)
        sizes.append(table.num_rows)
        for row in table.to_pylist():
            where[row["seq"]].append(str(f.parent.relative_to(lake)))
            topic, ts = expected[row["seq"]]
            assert row["_topic"] == topic
            assert row["_received_at"].timestamp() * 1000 == ts
    assert sorted(where) == list(range(TOTAL)), "missing rows"
    assert all(len(v) == 1 for v in where.values()), "duplicate rows"
    for seq, dirs in where.items():
        assert dirs[0] == "uns/" + expected_dir(*expected[seq]), (seq, dirs)
    # Batched: a flush comes at 50 buffered rows (or after 3 s), so objects hold
    # many messages. (Rows that concurrent batches add before the flush runs join the
    # same object, so an object may hold more than 50.)
    per_dir = collections.Counter(d[0] for d in where.values())
    assert len(per_dir) <= len(files) <= TOTAL // 10, (sizes, per_dir)

def test_mqtt_to_kafka_sasl_ssl_to_parquet_on_minio(mqtt_broker, kafka, kafka_topic, minio,
                                                    s3_bucket, topic_prefix, tmp_path):
    """Edge: MQTT -> Kafka over SASL_SSL SCRAM. Core: Kafka over SASL_SSL -> Parquet on MinIO."""
    kafka.create_topic(kafka_topic, partitions=3)
    secret = {"username": kafka.username, "password": kafka.password}
    env = {"KAFKA_MIRROR": json.dumps(secret),
           "MINIO_CREDENTIAL": json.dumps({"username": minio.access_key,
                                           "password": minio.secret_key})}
    sasl = {"bootstrap-servers": kafka.sasl_bootstrap, "security-protocol": "SASL_SSL",
            "sasl-mechanism": "SCRAM-SHA-512", "ca-file": kafka.ca_file,
            "credential": {"secret-name": "kafka-mirror", "provider": "env"}}
    edge = {
        "mqtt-broker": {"host": mqtt_broker.host, "port": mqtt_broker.port},
        "targets": {"to-core": {"type": "kafka", "topic": kafka_topic, "key": "{levels[3]}",
                                **sasl}},
        "subscriptions": {f"{topic_prefix}/#": {"qos": 1, "target": "to-core"}},
        "dead-letter": {"path": str(tmp_path / "edge-dead.jsonl")},
    }
    core = {
        "targets": {"lake": {"type": "s3", "format": "parquet", "key-prefix": "uns",
                             "s3-bucket": s3_bucket, "endpoint": minio.endpoint,
                             "region": minio.region, "allow-http": True,
                             "credential": {"secret-name": "minio-credential", "provider": "env"},
                             "partition-by": ["topic-levels"], "topic-levels": ["t", "test", "run",
                                                                                "plant"],
                             "batching": {"max-records": 50, "max-age": 3}}},
        "sources": {"core-kafka": {"type": "kafka", "group-id": kafka_topic, "topics": [kafka_topic],
                                   "topic-header": "mqtt.topic", "max-poll-records": 50,
                                   "target": "lake", **sasl}},
        "dead-letter": {"path": str(tmp_path / "core-dead.jsonl")},
    }
    edge_proc = run(edge, tmp_path, "edge", env)
    core_proc = run(core, tmp_path, "core", env)
    sasl_conf = {"bootstrap.servers": kafka.sasl_bootstrap, "security.protocol": "SASL_SSL",
                 "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": kafka.username,
                 "sasl.password": kafka.password, "ssl.ca.location": kafka.ca_file}
    per_site = 300
    try:
        wait_until_bridged(kafka, kafka_topic, mqtt_broker, f"{topic_prefix}/warmup/x/y",
                           edge_proc, **sasl_conf)
        for site in SITES:
            publish_numbered(mqtt_broker.host, mqtt_broker.port, f"{topic_prefix}/{site}/press/vib",
                             per_site, make_payload=lambda seq, s=site: payload(s, seq))
        fs = minio.arrow_filesystem()
        rows = wait_for_s3_rows(fs, s3_bucket, lambda r: len(r) >= 3 * per_site + 1)
    finally:
        core_code = core_proc.terminate()
        edge_code = edge_proc.terminate()
    assert edge_code == 0, edge_proc.output[-3000:]
    assert core_code == 0, core_proc.output[-3000:]
    rows = [r for r in rows if r.get("site") in SITES]
    assert len(rows) == 3 * per_site, core_proc.output[-3000:]
    seen = collections.Counter((r["site"], r["seq"]) for r in rows)
    assert set(seen) == {(s, i) for s in SITES for i in range(per_site)}
    assert max(seen.values()) == 1
    for r in rows:  # in the partition of its own site, under its own MQTT topic
        assert r["_topic"] == f"{topic_prefix}/{r['site']}/press/vib"
        assert r["_path"].startswith(f"{s3_bucket}/uns/t=t/")
        assert f"/plant={r['site']}/" in r["_path"]
    objects = {r["_path"] for r in rows}
    assert len(objects) <= len(rows) // 10  # batched objects, not one per message


def wait_for_s3_rows(fs, bucket: str, predicate, timeout: float = 90.0) -> list[dict[str, Any]]:
    """Every row of every Parquet object in the bucket, with its object path and row count."""
    import pyarrow.fs
    import pyarrow.parquet as pq

    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = []
        infos = fs.get_file_info(pyarrow.fs.FileSelector(bucket, recursive=True))
        for info in infos:
            if info.type == pyarrow.fs.FileType.File and info.path.endswith(".parquet"):
                table = pq.read_table(info.path, filesystem=fs)
                for row in table.to_pylist():
                    rows.append({**row, "_path": info.path, "_object_rows": table.num_rows})
        if predicate(rows):
            return rows
        time.sleep(0.5)
    return rows



EXAMPLES = Path(__file__).parents[2] / "examples"


def test_examples_unchanged_bridge_then_lake(own_mqtt_broker, kafka, tmp_path):
    """examples/mqtt-to-kafka.json and examples/kafka-to-datalake.json as a user runs them.

    From a directory where .services is the test services' (the examples name the test CA
    by that relative path), with the credential in the environment. A broker of the test's
    own: the bridge subscribes to '#'. Topic "uns" and group "unsflow-datalake" are the
    examples' own, shared with earlier runs, so rows are told apart by a run id.
    """
    from confluent_kafka import KafkaException

    from tests.conftest import services_dir

    (tmp_path / ".services").symlink_to(services_dir())
    try:
        kafka.create_topic("uns")
    except KafkaException as exc:
        if "already exists" not in str(exc):
            raise
    run_id = uuid.uuid4().hex[:8]
    env = {"EDGE_BROKER_HOST": own_mqtt_broker.host, "EDGE_MQTT_PORT": str(own_mqtt_broker.port),
           "KAFKA_CREDENTIAL_USERNAME": kafka.username,
           "KAFKA_CREDENTIAL_PASSWORD": kafka.password}
    lake_proc = UnsflowProcess(["run", str(EXAMPLES / "kafka-to-datalake.json")], cwd=tmp_path,
                               env=env).start()
    bridge_proc = UnsflowProcess(["run", str(EXAMPLES / "mqtt-to-kafka.json")], cwd=tmp_path,
                                 env=env).start()
    lake = tmp_path / "datalake-from-kafka"
    per_site = 200
    try:
        bridge_proc.wait_for_log("subscribing")
        # The session is persistent (fixed client id), so once the broker has it, nothing
        # published later is missed; a first message through proves the subscription.
        warmup = f"acme/warmup/{run_id}/x"
        deadline = time.monotonic() + 60
        while not any(r.get("run") == run_id for r in wait_for_rows(lake, bool, timeout=1)):
            assert time.monotonic() < deadline, bridge_proc.output[-2000:] + lake_proc.output[-2000:]
            publish(own_mqtt_broker.host, own_mqtt_broker.port,
                    [(warmup, json.dumps({"run": run_id, "seq": -1}).encode())])
        for site in SITES:
            publish_numbered(own_mqtt_broker.host, own_mqtt_broker.port,
                             f"acme/{site}/line1/press", per_site,
                             make_payload=lambda seq: json.dumps({"run": run_id, "seq": seq}).encode())
        rows = wait_for_rows(lake, lambda rs: sum(r.get("run") == run_id and r["seq"] >= 0
                                                   for r in rs) >= 3 * per_site, timeout=90)
    finally:
        bridge_code = bridge_proc.terminate()
        lake_code = lake_proc.terminate()
    assert bridge_code == 0, bridge_proc.output[-3000:]
    assert lake_code == 0, lake_proc.output[-3000:]
    mine = [r for r in rows if r.get("run") == run_id and r["seq"] >= 0]
    got = collections.Counter((r["site"], r["seq"]) for r in mine)
    assert set(got) == {(s, i) for s in SITES for i in range(per_site)}
    assert all(r["_topic"] == f"acme/{r['site']}/line1/press" for r in mine)
