"""Reloading a pipeline that reads a real Mosquitto or Kafka.

MQTT: the connection and session stay and subscriptions follow the config; changed broker
settings move to a new connection on the same session without losing what was published
meanwhile; a stuck batch is delivered again after the reload. Kafka: an unchanged source
is kept, a changed one goes on from the committed offsets."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import pytest

from unsflow.components import Context
from unsflow.config.loading import parse_config
from unsflow.engine.pipeline import Pipeline
from unsflow.testing import end_session, numbered_payload, publish, publish_numbered

pytestmark = pytest.mark.integration


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def config(broker, tmp_path: Path, subs: dict[str, tuple[int, str]], **broker_extra):
    targets = sorted({t for _, t in subs.values()})
    return parse_config({
        "mqtt-broker": {"host": broker.host, "port": broker.port, **broker_extra},
        "targets": {t: {"type": "file", "path": str(tmp_path / f"{t}.jsonl")} for t in targets},
        "subscriptions": {f: {"qos": q, "target": t} for f, (q, t) in subs.items()},
        "dead-letter": {"path": str(tmp_path / "dead.jsonl")},
        "spool": {"path": str(tmp_path / "spool")},
        "http": {"port": 0},
    }, env={})


@pytest.fixture
def session_id(mqtt_broker, topic_prefix):
    """A fixed client id for a persistent session on the shared broker, ended afterwards
    (a session nobody resumes would stay on the broker for a day)."""
    cid = topic_prefix.replace("/", "-")
    yield cid
    end_session(mqtt_broker.host, mqtt_broker.port, cid)


async def until(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


async def publish_seq(broker, topic: str, count: int, start: int = 0) -> int:
    return await asyncio.to_thread(publish_numbered, broker.host, broker.port, topic, count,
                                   qos=1, start=start)


async def test_subscriptions_change_on_the_same_connection(mqtt_broker, topic_prefix, tmp_path):
    a, b = f"{topic_prefix}/a", f"{topic_prefix}/b"
    pipeline = Pipeline(config(mqtt_broker, tmp_path, {f"{a}/#": (1, "ta")}), Context(env={}))
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    try:
        await until(lambda: pipeline.running and pipeline.source.ready)
        src = pipeline.source
        connection = src.connection_number
        await publish_seq(mqtt_broker, f"{a}/x", 100)
        await until(lambda: len(lines(tmp_path / "ta.jsonl")) >= 100)

        new = config(mqtt_broker, tmp_path, {f"{b}/#": (2, "tb")})
        plan = await pipeline.reload(new)
        assert plan.uns == "kept" and plan.subscriptions_added == [f"{b}/#"]
        assert pipeline.source is src and src.connection_number == connection
        assert src.subscriptions == {f"{b}/#": 2}
        await publish_seq(mqtt_broker, f"{a}/x", 100, start=100)  # unsubscribed: not delivered
        await publish_seq(mqtt_broker, f"{b}/x", 100)
        # The 100 on a/x were published (and acknowledged by the broker) before those on
        # b/x, and a broker delivers to a session in order: had any a/x been routed to us,
        # it would have arrived before the last b/x.
        await until(lambda: len(lines(tmp_path / "tb.jsonl")) >= 100)
        received = src.received
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert sorted(r["seq"] for r in lines(tmp_path / "ta.jsonl")) == list(range(100))
    assert sorted(r["seq"] for r in lines(tmp_path / "tb.jsonl")) == list(range(100))
    assert received == 200 and pipeline.unrouted == 0
    assert pipeline.generation == 2


async def test_changed_broker_settings_move_to_a_new_connection_losing_nothing(
        mqtt_broker, topic_prefix, tmp_path, session_id):
    topic = f"{topic_prefix}/line/press"
    cid = session_id
    subs = {f"{topic_prefix}/#": (1, "lake")}
    pipeline = Pipeline(config(mqtt_broker, tmp_path, subs, **{"client-id": cid}),
                        Context(env={}))
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    total = 6000
    position = {"n": 0}
    acked: list[int] = []

    def paced():
        for seq in range(total):
            if seq and seq % 300 == 0:
                time.sleep(0.05)
            position["n"] = seq
            yield topic, numbered_payload(seq)

    # One publisher connection (a loaded shared broker can take seconds per CONNACK).
    publisher = threading.Thread(target=lambda: acked.append(
        publish(mqtt_broker.host, mqtt_broker.port, paced(), qos=1, timeout=300)))
    try:
        await until(lambda: pipeline.running and pipeline.source.ready)
        old_source = pipeline.source
        publisher.start()
        await until(lambda: len(lines(tmp_path / "lake.jsonl")) >= 1000, 60)
        new = config(mqtt_broker, tmp_path, subs, **{"client-id": cid, "keepalive": 30})
        plan = await pipeline.reload(new)
        reloaded_at = position["n"]
        assert plan.uns == "replaced" and pipeline.source is not old_source
        await asyncio.to_thread(publisher.join, 300)
        assert acked == [total]
        await until(lambda: len({r["seq"] for r in lines(tmp_path / "lake.jsonl")}) >= total, 120)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        publisher.join(5)
    seqs = [r["seq"] for r in lines(tmp_path / "lake.jsonl")]
    assert set(seqs) == set(range(total))
    assert 0 < reloaded_at < total - 1, "publishing did not span the reload"


async def test_a_reload_that_fixes_a_stuck_target_gets_the_stuck_messages_again(
        mqtt_broker, topic_prefix, tmp_path, monkeypatch, session_id):
    """The old path never succeeds (its processor keeps failing), so the drain times out:
    the stuck batches are cancelled unacknowledged, the source restarts on its persistent
    session, and the broker delivers them again, now to the fixed path."""
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1]))
    from plugins import engine_faults

    engine_faults.state.update(calls=0, fail_first=10**9)
    cid = session_id
    subs = {f"{topic_prefix}/#": (1, "lake")}
    base = config(mqtt_broker, tmp_path, subs, **{"client-id": cid})
    broken = base.model_copy(update={
        "processors": parse_config({
            "targets": {"x": {"type": "file", "path": "x"}},
            "processors": {"check": {"type": "python",
                                     "function": "plugins.engine_faults:flaky"}},
            "subscriptions": {"a": {"target": "x"}}}, env={}).processors,
        "targets": {"lake": base.targets["lake"].model_copy(update={"processors": ["check"]})},
        "shutdown_timeout": 1.0,
    })
    pipeline = Pipeline(broken, Context(env={}))
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    try:
        await until(lambda: pipeline.running and pipeline.source.ready)
        await publish_seq(mqtt_broker, f"{topic_prefix}/x", 50)
        await until(lambda: engine_faults.state["calls"] >= 2)
        assert lines(tmp_path / "lake.jsonl") == []
        plan = await pipeline.reload(base)
        assert plan.sources_restarted and plan.processors["removed"] == ["check"]
        await until(lambda: len(lines(tmp_path / "lake.jsonl")) >= 50)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert sorted(r["seq"] for r in lines(tmp_path / "lake.jsonl")) == list(range(50))
    assert "checked" not in lines(tmp_path / "lake.jsonl")[0]


async def test_stop_during_a_reload_that_waits_for_a_stuck_batch(mqtt_broker, topic_prefix,
                                                                tmp_path, monkeypatch):
    """SIGTERM wins over a reload still draining: the pipeline stops within its deadline."""
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1]))
    from plugins import engine_faults

    engine_faults.state.update(calls=0, fail_first=10**9)
    subs = {f"{topic_prefix}/#": (1, "lake")}
    base = config(mqtt_broker, tmp_path, subs)
    broken = base.model_copy(update={
        "processors": parse_config({
            "targets": {"x": {"type": "file", "path": "x"}},
            "processors": {"check": {"type": "python",
                                     "function": "plugins.engine_faults:flaky"}},
            "subscriptions": {"a": {"target": "x"}}}, env={}).processors,
        "targets": {"lake": base.targets["lake"].model_copy(update={"processors": ["check"]})},
        "shutdown_timeout": 3.0,
    })
    pipeline = Pipeline(broken, Context(env={}))
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    await until(lambda: pipeline.running and pipeline.source.ready)
    await publish_seq(mqtt_broker, f"{topic_prefix}/x", 5)
    await until(lambda: engine_faults.state["calls"] >= 1)
    reload = asyncio.create_task(pipeline.reload(base))
    await until(lambda: pipeline.reloading)  # reading stopped; the drain waits on "check"
    stop.set()
    await asyncio.wait_for(task, 15)
    assert reload.done() and reload.cancelled()
    assert not pipeline.running and pipeline.generation == 1
    assert not pipeline.source.ready  # disconnected


async def test_kafka_source_kept_when_unchanged_replaced_when_changed(kafka, kafka_topic,
                                                                      tmp_path):
    """A Kafka source (``sources``) is kept across a reload that does not touch it; a
    changed one commits what was acknowledged, and the new one goes on from there."""
    from confluent_kafka import Producer

    kafka.create_topic(kafka_topic)

    def produce(start: int, count: int) -> None:
        producer = Producer(kafka.client_config())
        for seq in range(start, start + count):
            producer.produce(kafka_topic, json.dumps({"seq": seq}).encode())
        assert producer.flush(30) == 0

    def cfg(max_poll: int, targets: tuple[str, ...] = ("lake",)):
        return parse_config({
            "targets": {t: {"type": "file", "path": str(tmp_path / f"{t}.jsonl")}
                        for t in targets},
            "sources": {"plant-kafka": {"type": "kafka", "bootstrap-servers": kafka.bootstrap,
                                        "group-id": kafka_topic, "topics": [kafka_topic],
                                        "auto-offset-reset": "earliest",
                                        "max-poll-records": max_poll, "target": "lake"}},
            "dead-letter": {"path": str(tmp_path / "dead.jsonl")},
            "http": {"port": 0},
        }, env={})

    pipeline = Pipeline(cfg(500), Context(env={}))
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    try:
        await until(lambda: pipeline.running and pipeline.source.ready, 60)
        first = pipeline.source
        produce(0, 300)
        await until(lambda: len(lines(tmp_path / "lake.jsonl")) >= 300, 60)
        plan = await pipeline.reload(cfg(500, ("lake", "spare")))
        assert plan.sources == {"added": [], "removed": [], "replaced": []}
        assert pipeline.source is first
        plan = await pipeline.reload(cfg(100, ("lake", "spare")))
        assert plan.sources["replaced"] == ["plant-kafka"] and pipeline.source is not first
        await until(lambda: pipeline.source.ready, 60)
        produce(300, 300)
        await until(lambda: len(lines(tmp_path / "lake.jsonl")) >= 600, 60)
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    seqs = [r["seq"] for r in lines(tmp_path / "lake.jsonl")]
    assert sorted(set(seqs)) == list(range(600)) and len(seqs) == 600


async def test_reload_while_the_broker_is_down_applies_on_reconnect(own_mqtt_broker, tmp_path):
    """With the broker away the new filters are recorded; on reconnect the removed one is
    unsubscribed from the persistent session and the new one subscribed."""
    broker = own_mqtt_broker
    old = config(broker, tmp_path, {"plant/a/#": (1, "ta")},
                 **{"client-id": "reload-offline", "reconnect-max": 1.0})
    pipeline = Pipeline(old, Context(env={}))
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    try:
        await until(lambda: pipeline.running and pipeline.source.ready)
        src = pipeline.source
        await asyncio.to_thread(broker.stop)
        await until(lambda: not src.ready)
        new = config(broker, tmp_path, {"plant/b/#": (1, "tb")},
                     **{"client-id": "reload-offline", "reconnect-max": 1.0})
        plan = await pipeline.reload(new)
        assert plan.uns == "kept" and pipeline.source is src
        await asyncio.to_thread(broker.start)
        await until(lambda: src.ready, 60)
        await publish_seq(broker, "plant/a/x", 20)
        await publish_seq(broker, "plant/b/x", 20)
        await until(lambda: len(lines(tmp_path / "tb.jsonl")) >= 20)  # plant/a first: see above
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert sorted(r["seq"] for r in lines(tmp_path / "tb.jsonl")) == list(range(20))
    assert lines(tmp_path / "ta.jsonl") == [] and src.received == 20


async def test_a_new_broker_that_cannot_be_reached_rolls_back_to_the_old_one(
        mqtt_broker, topic_prefix, tmp_path, session_id):
    """A changed broker address that does not answer: the new source is given up after
    shutdown-timeout, the old connection comes back on its session, data flows on."""
    from tests.conftest import _free_ports

    subs = {f"{topic_prefix}/#": (1, "lake")}
    cid = session_id
    old = config(mqtt_broker, tmp_path, subs, **{"client-id": cid}).model_copy(
        update={"shutdown_timeout": 2.0})
    pipeline = Pipeline(old, Context(env={}))
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    try:
        await until(lambda: pipeline.running and pipeline.source.ready)
        (nobody,) = _free_ports(1)
        moved = old.model_copy(update={"mqtt_broker": old.mqtt_broker.model_copy(
            update={"port": nobody})})
        from unsflow.errors import ReloadFailed

        with pytest.raises(ReloadFailed, match="did not start within 2s"):
            await pipeline.reload(moved)
        assert pipeline.config is old and pipeline.reloads["failed"] == 1
        await until(lambda: pipeline.source.ready)
        await publish_seq(mqtt_broker, f"{topic_prefix}/x", 50)
        await until(lambda: len(lines(tmp_path / "lake.jsonl")) >= 50)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert pipeline.source.config.broker.port == mqtt_broker.port
