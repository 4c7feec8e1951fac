"""kafka source against the real test Kafka: offsets are committed only after acks."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from unsflow.components import Context
from unsflow.message import Message
from unsflow.sources.kafka import KafkaSource, KafkaSourceConfig

pytestmark = pytest.mark.integration


def make_source(cfg: dict[str, Any], env: dict[str, str] | None = None,
                name: str = "kafka-in") -> KafkaSource:
    config = KafkaSourceConfig.model_validate({"type": "kafka", "target": "t", **cfg})
    return KafkaSource(name, config, Context(env=env or {}))


def produce(kafka, topic: str, values: list[bytes], **kw: Any) -> None:
    from confluent_kafka import Producer

    producer = Producer(kafka.client_config())
    for i, value in enumerate(values):
        producer.produce(topic, value, key=kw.get("key", b"k%d" % (i % 4)),
                         headers=kw.get("headers"), partition=kw.get("partition", -1))
    assert producer.flush(30) == 0


async def read_until(source: KafkaSource, count: int, timeout: float = 30.0,
                     ack: bool = True) -> list[Message]:
    """Batches until ``count`` messages arrived; acked unless told otherwise."""
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(got)} of {count} messages within {timeout}s"
        messages, token = await asyncio.wait_for(source.read(), left)
        got += messages
        if ack:
            source.ack(token)
    return got


async def until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout}s"
        await asyncio.sleep(0.02)


async def nothing_within(source: KafkaSource, seconds: float) -> bool:
    try:
        await asyncio.wait_for(source.read(), seconds)
    except TimeoutError:
        return True
    return False


async def test_commit_only_after_ack(kafka, kafka_topic):
    kafka.create_topic(kafka_topic, partitions=2)
    produce(kafka, kafka_topic, [b"%d" % i for i in range(200)])
    cfg = {"bootstrap-servers": kafka.bootstrap, "group-id": kafka_topic, "topics": [kafka_topic],
           "max-poll-records": 30}

    # Read everything, acknowledge nothing: nothing is committed.
    source = make_source(cfg)
    await source.start()
    first = await read_until(source, 200, ack=False)
    await source.stop()
    assert sorted(int(m.payload) for m in first) == list(range(200))

    # Same group again: all of it comes back. Now acknowledge it.
    source = make_source(cfg)
    await source.start()
    second = await read_until(source, 200, ack=True)
    await source.stop()
    assert sorted(int(m.payload) for m in second) == list(range(200))

    # Same group a third time: nothing old comes back, only what is new.
    produce(kafka, kafka_topic, [b"new"])
    source = make_source(cfg)
    await source.start()
    try:
        (latest,) = await read_until(source, 1)
        assert latest.payload == b"new"
        assert await nothing_within(source, 2)
    finally:
        await source.stop()


async def test_acks_out_of_order_commit_only_the_acked_prefix(kafka, kafka_topic):
    kafka.create_topic(kafka_topic, partitions=1)
    produce(kafka, kafka_topic, [b"%d" % i for i in range(90)], partition=0)
    cfg = {"bootstrap-servers": kafka.bootstrap, "group-id": kafka_topic, "topics": [kafka_topic],
           "max-poll-records": 30}
    source = make_source(cfg)
    await source.start()
    batches = []
    count = 0
    while count < 90:
        messages, token = await asyncio.wait_for(source.read(), 30)
        batches.append((messages, token))
        count += len(messages)
    assert len(batches) >= 2
    # Acknowledge every batch but the first: no offset may be committed past it.
    for _, token in batches[1:]:
        source.ack(token)
    await source.stop()
    first_offsets = [m.headers["kafka.offset"] for m in batches[0][0]]

    source = make_source(cfg)
    await source.start()
    try:
        again = await read_until(source, 90)
    finally:
        await source.stop()
    assert [int(m.payload) for m in again] == list(range(90))
    assert again[0].headers["kafka.offset"] == first_offsets[0] == 0


async def test_message_fields_and_headers(kafka, kafka_topic):
    kafka.create_topic(kafka_topic)
    produce(kafka, kafka_topic, [b'{"v": 1}'], key=b"press-7",
            headers=[("mqtt.topic", b"acme/site1/press"), ("unit", b"mm/s")])
    source = make_source({"bootstrap-servers": kafka.bootstrap, "group-id": kafka_topic,
                          "topics": [kafka_topic]})
    await source.start()
    try:
        (msg,) = await read_until(source, 1)
    finally:
        await source.stop()
    assert msg.topic == kafka_topic and msg.payload == b'{"v": 1}'
    assert msg.headers == {"kafka.topic": kafka_topic, "kafka.partition": 0, "kafka.offset": 0,
                           "kafka.key": b"press-7", "mqtt.topic": b"acme/site1/press",
                           "unit": b"mm/s"}
    assert abs(msg.received_at - time.time()) < 60
    assert msg.source_id == "kafka-in"


async def test_topic_pattern_and_topic_header(kafka, kafka_topic):
    for suffix in ("a", "b"):
        kafka.create_topic(f"{kafka_topic}.{suffix}")
        produce(kafka, f"{kafka_topic}.{suffix}", [suffix.encode()],
                headers=[("mqtt.topic", f"acme/{suffix}/m1".encode())])
    source = make_source({"bootstrap-servers": kafka.bootstrap, "group-id": kafka_topic,
                          "topic-pattern": kafka_topic.replace(".", r"\.") + r"\.[ab]$",
                          "topic-header": "mqtt.topic"})
    await source.start()
    try:
        got = await read_until(source, 2)
    finally:
        await source.stop()
    assert sorted((m.topic, m.payload) for m in got) == [("acme/a/m1", b"a"), ("acme/b/m1", b"b")]


async def test_sasl_ssl_scram(kafka, kafka_topic):
    kafka.create_topic(kafka_topic)
    produce(kafka, kafka_topic, [b"%d" % i for i in range(20)])
    env = {"KAFKA_LAKE_USERNAME": kafka.username, "KAFKA_LAKE_PASSWORD": kafka.password}
    source = make_source({"bootstrap-servers": kafka.sasl_bootstrap, "group-id": kafka_topic,
                          "topics": [kafka_topic], "security-protocol": "SASL_SSL",
                          "credential": {"secret-name": "kafka-lake", "provider": "env"},
                          "ca-file": kafka.ca_file}, env)
    await source.start()
    try:
        got = await read_until(source, 20)
    finally:
        await source.stop()
    assert sorted(int(m.payload) for m in got) == list(range(20))


async def test_group_members_share_partitions(kafka, kafka_topic):
    kafka.create_topic(kafka_topic, partitions=4)
    cfg = {"bootstrap-servers": kafka.bootstrap, "group-id": kafka_topic, "topics": [kafka_topic]}
    one, two = make_source(cfg, name="one"), make_source(cfg, name="two")
    await one.start()
    await two.start()
    try:
        await one.wait_assigned(30)
        await two.wait_assigned(30)
        produce(kafka, kafka_topic, [b"%d" % i for i in range(400)], key=None)
        got: dict[str, list[Message]] = {"one": [], "two": []}

        async def drain(source: KafkaSource) -> None:
            while sum(len(v) for v in got.values()) < 400:
                try:
                    messages, token = await asyncio.wait_for(source.read(), 0.5)
                except TimeoutError:
                    continue
                got[source.id] += messages
                source.ack(token)

        await asyncio.wait_for(asyncio.gather(drain(one), drain(two)), 60)
    finally:
        await one.stop()
        await two.stop()
    assert got["one"] and got["two"], "both members must have partitions"
    partitions = {s: {m.headers["kafka.partition"] for m in ms} for s, ms in got.items()}
    assert not partitions["one"] & partitions["two"]
    assert sorted(int(m.payload) for ms in got.values() for m in ms) == list(range(400))


async def test_pauses_when_too_many_batches_wait_for_acks(kafka, kafka_topic):
    kafka.create_topic(kafka_topic)
    produce(kafka, kafka_topic, [b"%d" % i for i in range(200)], partition=0)
    source = make_source({"bootstrap-servers": kafka.bootstrap, "group-id": kafka_topic,
                          "topics": [kafka_topic], "max-poll-records": 10, "max-pending": 3})
    await source.start()
    try:
        await until(lambda: source.pauses >= 1, 30, "the member to pause")
        # max-pending batches of 10, plus at most one batch fetched at the pause
        assert source.in_flight <= 40
        assert source.received <= 40
        got = await read_until(source, 200)  # acking lets it go on
    finally:
        await source.stop()
    assert [int(m.payload) for m in got] == list(range(200))
