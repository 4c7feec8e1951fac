"""The MQTT source against a real Mosquitto: protocols, QoS, shared subscriptions, TLS,
deferred acks, reconnects; every test with both MQTT clients (unsflow's asyncio one, gmqtt)."""

from __future__ import annotations

import asyncio
import json

import pytest

from unsflow.components import Context
from unsflow.config.models import BrokerConfig, SecretRef
from unsflow.errors import AccessDenied
from unsflow.sources.mqtt import MqttSource, MqttSourceConfig
from unsflow.testing import publish, publish_numbered

pytestmark = pytest.mark.integration


pytestmark = pytest.mark.integration


# The MQTT client of the test running now (mqtt-broker.client), set by the `impl` fixture.
CLIENT = {"kind": "asyncio"}


@pytest.fixture(params=["asyncio", "asyncio-python", "gmqtt"], autouse=True)
def impl(request, monkeypatch) -> str:
    """asyncio (with the compiled decoder where installed), asyncio-python (the pure-Python
    decoder, as where no compiler exists), gmqtt."""
    if request.param == "asyncio-python":
        monkeypatch.setenv("UNSFLOW_SPEEDUPS", "0")
    CLIENT["kind"] = request.param.split("-")[0]
    return request.param


def source(broker, filters: dict[str, int], **kw) -> MqttSource:
    cfg = BrokerConfig.model_validate({"host": broker.host, "port": broker.port,
                                       "client": CLIENT["kind"], **kw})
    return MqttSource("uns", MqttSourceConfig(broker=cfg, subscriptions=filters), Context(env={}))


async def drain(src: MqttSource, count: int, timeout: float = 20.0, ack: bool = True) -> list:
    got: list = []

    async def loop() -> None:
        while len(got) < count:
            messages, token = await src.read()
            got.extend(messages)
            if ack:
                src.ack(token)

    await asyncio.wait_for(loop(), timeout)
    return got


async def publish_async(*args, **kw) -> int:
    return await asyncio.to_thread(publish_numbered, *args, **kw)


@pytest.mark.parametrize("version", ["5", "3.1.1"])
@pytest.mark.parametrize("qos", [0, 1, 2])
async def test_every_message_arrives_once_per_protocol_and_qos(mqtt_broker, topic_prefix,
                                                               version, qos):
    src = source(mqtt_broker, {f"{topic_prefix}/+/temp": qos}, protocol_version=version)
    await src.start()
    await src.wait_ready(10)
    try:
        await publish_async(mqtt_broker.host, mqtt_broker.port, f"{topic_prefix}/m1/temp", 3000,
                            qos=qos)
        got = await drain(src, 3000)
    finally:
        await src.stop()
    seqs = sorted(json.loads(m.payload)["seq"] for m in got)
    assert seqs == list(range(3000))
    assert {m.qos for m in got} == {qos}
    assert src.acked == (3000 if qos else 0)


async def test_wildcards_route_only_matching_topics(mqtt_broker, topic_prefix):
    src = source(mqtt_broker, {f"{topic_prefix}/a/#": 1, f"{topic_prefix}/+/x": 1})
    await src.start()
    await src.wait_ready(10)
    try:
        msgs = [(f"{topic_prefix}/a/b/c", b"1"), (f"{topic_prefix}/q/x", b"2"),
                (f"{topic_prefix}/q/y", b"3"), (f"{topic_prefix}/a", b"4")]
        await asyncio.to_thread(publish, mqtt_broker.host, mqtt_broker.port, msgs, 1)
        got = await drain(src, 3)
        await asyncio.sleep(0.3)
    finally:
        await src.stop()
    assert sorted(m.payload for m in got) == [b"1", b"2", b"4"]


async def test_unacked_messages_come_back_to_a_persistent_session(mqtt_broker, topic_prefix):
    cid = topic_prefix.replace("/", "-")
    filters = {f"{topic_prefix}/#": 1}
    first = source(mqtt_broker, filters, client_id=cid, clean_start=False)
    await first.start()
    await first.wait_ready(10)
    await publish_async(mqtt_broker.host, mqtt_broker.port, f"{topic_prefix}/t", 200, qos=1)
    got = await drain(first, 200, ack=False)      # taken, never acknowledged
    await first.stop()
    assert len(got) == 200 and first.acked == 0
    # Published while no client is connected: queued in the session.
    await publish_async(mqtt_broker.host, mqtt_broker.port, f"{topic_prefix}/t", 100, qos=1,
                        start=200)
    second = source(mqtt_broker, filters, client_id=cid, clean_start=False)
    await second.start()
    try:
        again = await drain(second, 300)
    finally:
        await second.stop()
    assert sorted(json.loads(m.payload)["seq"] for m in again) == list(range(300))
    assert sum(1 for m in again if m.properties.get("dup")) == 200
    # Acknowledged now: a third connection gets nothing.
    third = source(mqtt_broker, filters, client_id=cid, clean_start=False)
    await third.start()
    try:
        with pytest.raises(asyncio.TimeoutError):
            await drain(third, 1, timeout=1.5)
    finally:
        await third.stop()


async def test_acks_leave_in_arrival_order(mqtt_broker, topic_prefix):
    src = source(mqtt_broker, {f"{topic_prefix}/#": 1}, client_id=topic_prefix.replace("/", "_"),
                 clean_start=False)
    await src.start()
    await src.wait_ready(10)
    try:
        await publish_async(mqtt_broker.host, mqtt_broker.port, f"{topic_prefix}/t", 1, qos=1)
        m1, t1 = await src.read()
        await publish_async(mqtt_broker.host, mqtt_broker.port, f"{topic_prefix}/t", 1, qos=1,
                            start=1)
        m2, t2 = await src.read()
        src.ack(t2)                # the later batch is done first: nothing may be acked yet
        assert src.acked == 0
        src.ack(t1)
        assert src.acked == 2
    finally:
        await src.stop()


async def test_shared_subscription_splits_the_load(mqtt_broker, topic_prefix):
    group = topic_prefix.replace("/", "_")
    filters = {f"$share/{group}/{topic_prefix}/#": 1}
    a, b = source(mqtt_broker, filters), source(mqtt_broker, filters)
    for s in (a, b):
        await s.start()
        await s.wait_ready(10)
    got_a: list = []
    got_b: list = []

    async def pump(src, into):
        while True:
            messages, token = await src.read()
            into.extend(messages)
            src.ack(token)

    tasks = [asyncio.create_task(pump(a, got_a)), asyncio.create_task(pump(b, got_b))]
    try:
        await publish_async(mqtt_broker.host, mqtt_broker.port, f"{topic_prefix}/t", 1000, qos=1)
        for _ in range(100):
            if len(got_a) + len(got_b) >= 1000:
                break
            await asyncio.sleep(0.1)
    finally:
        for t in tasks:
            t.cancel()
        await a.stop()
        await b.stop()
    seqs = sorted(json.loads(m.payload)["seq"] for m in got_a + got_b)
    assert seqs == list(range(1000))
    assert got_a and got_b, "one member got everything: not shared"


async def test_tls_with_password_from_a_secret(mqtt_broker, topic_prefix, tmp_path):
    (tmp_path / "cred").write_text(json.dumps({"username": mqtt_broker.username,
                                               "password": mqtt_broker.password}))
    cfg = BrokerConfig.model_validate({"host": mqtt_broker.host, "port": mqtt_broker.tls_port,
                                       "tls": {"ca-file": mqtt_broker.ca_file},
                                       "client": CLIENT["kind"]})
    ref = SecretRef.model_validate({"secret-name": "cred", "provider": "file",
                                    "path": str(tmp_path / "cred")})
    src = MqttSource("uns", MqttSourceConfig(broker=cfg, credential=ref,
                                             subscriptions={f"{topic_prefix}/#": 1}),
                     Context(env={}))
    await src.start()
    await src.wait_ready(10)
    try:
        await asyncio.to_thread(publish, mqtt_broker.host, mqtt_broker.tls_port,
                                [(f"{topic_prefix}/t", b"secure")], 1, **mqtt_broker.tls_options())
        got = await drain(src, 1)
    finally:
        await src.stop()
    assert got[0].payload == b"secure"


async def test_wrong_password_is_a_clear_error(mqtt_broker, topic_prefix):
    cfg = BrokerConfig.model_validate({"host": mqtt_broker.host, "port": mqtt_broker.tls_port,
                                       "tls": {"ca-file": mqtt_broker.ca_file},
                                       "client": CLIENT["kind"]})
    ref = SecretRef.model_validate({"secret-name": "bad", "provider": "env"})
    src = MqttSource("uns", MqttSourceConfig(broker=cfg, credential=ref,
                                             subscriptions={f"{topic_prefix}/#": 1}),
                     Context(env={"BAD_USERNAME": "unsflow", "BAD_PASSWORD": "wrong"}))
    with pytest.raises(AccessDenied, match="refused the login"):
        await asyncio.wait_for(src.start(), 20)


async def test_reconnects_and_resubscribes_after_broker_restart(own_mqtt_broker, topic_prefix):
    # A clean session: the subscription itself is lost with the restart unless re-sent.
    src = source(own_mqtt_broker, {f"{topic_prefix}/#": 1}, reconnect_min=0.2, reconnect_max=1.0)
    await src.start()
    await src.wait_ready(10)
    try:
        await asyncio.to_thread(own_mqtt_broker.stop)
        await asyncio.to_thread(own_mqtt_broker.start)
        await src.wait_ready(20)
        await publish_async(own_mqtt_broker.host, own_mqtt_broker.port, f"{topic_prefix}/t", 50)
        got = await drain(src, 50)
    finally:
        await src.stop()
    assert sorted(json.loads(m.payload)["seq"] for m in got) == list(range(50))
