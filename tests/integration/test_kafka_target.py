"""kafka target against the real test Kafka: what lands on the topic, read back by a real consumer."""

from __future__ import annotations

import time
from typing import Any

import pytest

from unsflow.components import Context
from unsflow.errors import AccessDenied
from unsflow.message import Message
from unsflow.targets.kafka import KafkaTarget, KafkaTargetConfig

pytestmark = pytest.mark.integration


def make_target(cfg: dict[str, Any], env: dict[str, str] | None = None,
                name: str = "kafka-out") -> KafkaTarget:
    config = KafkaTargetConfig.model_validate({"type": "kafka", **cfg})
    return KafkaTarget(name, config, Context(env=env or {}))


def mqtt_message(topic: str, payload: bytes, **kw: Any) -> Message:
    return Message(topic, payload, kw.pop("qos", 1), kw.pop("retain", False), time.time(), **kw)


async def test_payload_key_headers_and_partitioning(kafka, kafka_topic):
    kafka.create_topic(kafka_topic, partitions=3)
    target = make_target({"bootstrap-servers": kafka.bootstrap, "topic": kafka_topic,
                          "key": "{levels[1]}"})
    await target.start()
    sites = [f"site{i}" for i in range(6)]
    batches = [[mqtt_message(f"acme/{sites[(b * 100 + i) % 6]}/press/vibration",
                             b'{"seq": %d, "v": 1.5}' % (b * 100 + i),
                             properties={"user_property": [("unit", "mm/s"), ("line", "L1")],
                                         "content_type": ["application/json"]})
                for i in range(100)] for b in range(5)]
    batches[0][0].retain = True
    try:
        for batch in batches:
            assert await target.write(batch) == []
    finally:
        await target.stop()
    records = kafka.consume(kafka_topic, 500)
    assert len(records) == 500
    by_seq = {int(r.value().split(b",")[0].split(b":")[1]): r for r in records}
    assert sorted(by_seq) == list(range(500))
    for seq, rec in by_seq.items():
        sent = batches[seq // 100][seq % 100]
        assert rec.value() == sent.payload  # byte-identical
        assert rec.key() == sent.topic.split("/")[1].encode()
        headers = rec.headers()
        assert headers[:3] == [("mqtt.topic", sent.topic.encode()), ("mqtt.qos", b"1"),
                               ("mqtt.retain", b"true" if seq == 0 else b"false")]
        assert headers[3:] == [("mqtt.content_type", b"application/json"), ("unit", b"mm/s"),
                               ("line", b"L1")]
        assert abs(rec.timestamp()[1] - sent.received_at * 1000) < 1
    # One key, one partition, in the order produced.
    partitions: dict[bytes, set[int]] = {}
    for rec in records:
        partitions.setdefault(rec.key(), set()).add(rec.partition())
    assert all(len(p) == 1 for p in partitions.values())
    assert len({p for ps in partitions.values() for p in ps}) > 1
    for key in partitions:
        seqs = [int(r.value().split(b",")[0].split(b":")[1]) for r in records if r.key() == key]
        assert seqs == sorted(seqs)


async def test_sasl_ssl_scram_with_credential_from_secret_provider(kafka, kafka_topic):
    env = {"KAFKA_BRIDGE": f'{{"username": "{kafka.username}", "password": "{kafka.password}"}}'}
    target = make_target({"bootstrap-servers": kafka.sasl_bootstrap, "topic": kafka_topic,
                          "security-protocol": "SASL_SSL", "sasl-mechanism": "SCRAM-SHA-512",
                          "credential": {"secret-name": "kafka-bridge", "provider": "env"},
                          "ca-file": kafka.ca_file, "compression": "zstd"}, env)
    await target.start()
    try:
        msgs = [mqtt_message("acme/site1/line1/temp", b"%d" % i) for i in range(50)]
        assert await target.write(msgs) == []
    finally:
        await target.stop()
    records = kafka.consume(kafka_topic, 50)
    assert [r.value() for r in records] == [b"%d" % i for i in range(50)]
    assert {r.key() for r in records} == {b"acme/site1/line1/temp"}  # default key: the MQTT topic


async def test_wrong_password_is_a_clear_error(kafka, kafka_topic):
    env = {"KAFKA_BRIDGE_USERNAME": kafka.username, "KAFKA_BRIDGE_PASSWORD": "wrong"}
    target = make_target({"bootstrap-servers": kafka.sasl_bootstrap, "topic": kafka_topic,
                          "security-protocol": "SASL_SSL",
                          "credential": {"secret-name": "kafka-bridge", "provider": "env"},
                          "ca-file": kafka.ca_file}, env)
    with pytest.raises(AccessDenied) as info:
        await target.start()
    await target.stop()
    text = str(info.value)
    assert "refused the login" in text and "'kafka-bridge'" in text
    assert "SCRAM-SHA-512" in text and "invalid credentials" in text
    assert "wrong" not in text.replace("wrong-", "")  # never the password


async def test_bad_messages_fail_alone(kafka, kafka_topic):
    target = make_target({"bootstrap-servers": kafka.bootstrap,
                          "topic": kafka_topic + ".{record[line]}", "key": "{record[machineId]}"})
    await target.start()
    good = mqtt_message("a/b", b'{"line": "L1", "machineId": "m1"}')
    no_key = mqtt_message("a/b", b'{"line": "L1"}')
    bad_topic = mqtt_message("a/b", b'{"line": "L/1", "machineId": "m1"}')
    too_large = mqtt_message("a/b", b'{"line": "L1", "machineId": "m1", "x": "%s"}'
                             % (b"y" * 2_000_000))
    try:
        failures = await target.write([good, no_key, bad_topic, too_large])
    finally:
        await target.stop()
    reasons = {id(f.message): f.error for f in failures}
    assert set(reasons) == {id(no_key), id(bad_topic), id(too_large)}
    assert "'machineId'" in reasons[id(no_key)]
    assert f"'{kafka_topic}.L/1'" in reasons[id(bad_topic)]
    assert "too large" in reasons[id(too_large)].lower()
    assert all(f.stage == "target:kafka-out" for f in failures)
    records = kafka.consume(kafka_topic + ".L1", 1)
    assert [(r.key(), r.value()) for r in records] == [(b"m1", good.payload)]


async def test_full_local_queue_is_backpressure_not_loss(kafka, kafka_topic):
    # A local queue of 20 messages: producing 3000 must wait for room, never drop.
    target = make_target({"bootstrap-servers": kafka.bootstrap, "topic": kafka_topic,
                          "key": None, "linger-ms": 1,
                          "producer-config": {"queue.buffering.max.messages": 20}})
    await target.start()
    try:
        msgs = [mqtt_message("a/b", b"%d" % i) for i in range(3000)]
        assert await target.write(msgs) == []
    finally:
        await target.stop()
    assert target.delivered == 3000
    records = kafka.consume(kafka_topic, 3000)
    assert sorted(int(r.value()) for r in records) == list(range(3000))
    assert all(r.key() is None for r in records)


async def test_decoded_records_are_sent_as_json(kafka, kafka_topic):
    target = make_target({"bootstrap-servers": kafka.bootstrap, "topic": kafka_topic})
    await target.start()
    try:
        msg = mqtt_message("a/b", b"raw").derive(record={"value": 7, "anomaly": True})
        assert await target.write([msg]) == []
    finally:
        await target.stop()
    (record,) = kafka.consume(kafka_topic, 1)
    assert record.value() == b'{"value":7,"anomaly":true}'
