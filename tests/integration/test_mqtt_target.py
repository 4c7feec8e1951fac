"""The MQTT target against a real Mosquitto: accepted means acknowledged by the broker."""

from __future__ import annotations

import json
import time

import pytest

from unsflow.components import Context
from unsflow.message import Message
from unsflow.targets.mqtt import MqttTarget
from unsflow.testing import Collector

pytestmark = pytest.mark.integration


def target(broker, **cfg) -> MqttTarget:
    config = MqttTarget.config_class.model_validate(
        {"type": "mqtt", "mqtt-broker-host": broker.host, "mqtt-broker-port": broker.port, **cfg})
    return MqttTarget("out", config, Context(env={}))


async def test_thousands_of_records_published_and_acknowledged(mqtt_broker, topic_prefix):
    t = target(mqtt_broker, topic=f"{topic_prefix}/alerts/{{record[machine]}}")
    await t.start()
    batch = [Message(f"plant/l1/m{i % 4}/vib", b"", record={"seq": i, "machine": f"m{i % 4}"},
                     received_at=time.time()) for i in range(5000)]
    with Collector(mqtt_broker.host, mqtt_broker.port, f"{topic_prefix}/alerts/#") as out:
        try:
            failures = await t.write(batch[:2500])
            failures += await t.write(batch[2500:])
        finally:
            await t.stop()
        received = out.wait(5000, timeout=30)
    assert failures == []
    assert sorted(json.loads(p)["seq"] for _, p in received) == list(range(5000))
    assert {tp for tp, _ in received} == {f"{topic_prefix}/alerts/m{i}" for i in range(4)}


async def test_undecoded_payload_is_forwarded_unchanged(mqtt_broker, topic_prefix):
    t = target(mqtt_broker, topic=f"{topic_prefix}/copy/{{topic}}", qos=2)
    await t.start()
    with Collector(mqtt_broker.host, mqtt_broker.port, f"{topic_prefix}/copy/#") as out:
        try:
            assert await t.write([Message("a/b", b"\x00raw\xff")]) == []
        finally:
            await t.stop()
        assert out.wait(1, timeout=10) == [(f"{topic_prefix}/copy/a/b", b"\x00raw\xff")]


async def test_unfillable_or_invalid_topics_are_failures(mqtt_broker, topic_prefix):
    t = target(mqtt_broker, topic=f"{topic_prefix}/{{record[line]}}")
    await t.start()
    try:
        good = Message("x", b"", record={"line": "l1"})
        missing = Message("x", b"", record={"other": 1})
        wildcard = Message("x", b"", record={"line": "l1/#"})
        failures = await t.write([good, missing, wildcard])
    finally:
        await t.stop()
    assert [f.message for f in failures] == [missing, wildcard]
    assert "needs 'line'" in failures[0].error
    assert "wildcards" in failures[1].error


async def test_headers_and_undecoded_records_fill_the_topic_as_for_kafka(mqtt_broker, topic_prefix):
    t = target(mqtt_broker,
               topic=f"{topic_prefix}/{{headers[kafka.key]}}/{{record[machineId]}}/{{levels[1]}}")
    await t.start()
    msg = Message("plant/line1/press", b'{"machineId": "m7"}', headers={"kafka.key": "k1"})
    with Collector(mqtt_broker.host, mqtt_broker.port, f"{topic_prefix}/#") as out:
        try:
            assert await t.write([msg]) == []
        finally:
            await t.stop()
        assert out.wait(1, timeout=10) == [(f"{topic_prefix}/k1/m7/line1", b'{"machineId": "m7"}')]
