"""The MQTT client adapter without a broker: its start-up check of gmqtt's private hooks, and
the wire behaviour of both clients (gmqtt's and unsflow's own asyncio one) against a scripted
byte stream (a TCP peer that speaks just enough MQTT 5): deferred acks in order, SUBACK codes,
the ping barrier, CONNACK refusals.

The same clients run against the real Mosquitto in tests/integration/test_mqtt_source.py.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any, Self

import pytest

from unsflow.components import Context
from unsflow.config.models import BrokerConfig
from unsflow.errors import AccessDenied, IncompatibleDependency, NotConnected, PermanentError
from unsflow.sources._mqtt_client import (
    Ack,
    ClientSettings,
    MqttClient,
    check_gmqtt,
    make_client,
)
from unsflow.sources.mqtt import MqttSource, MqttSourceConfig

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC = 0x10, 0x20, 0x30, 0x40, 0x50
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP = 0x80, 0x90, 0xA0, 0xB0, 0xC0, 0xD0


@pytest.fixture(autouse=True)
def _fresh_check():
    check_gmqtt.cache_clear()
    yield
    check_gmqtt.cache_clear()


# -------------------------------------------------------------- the start-up check


def test_the_pinned_gmqtt_passes_the_check() -> None:
    import gmqtt

    assert check_gmqtt() == gmqtt.__version__


@pytest.mark.parametrize("hook", ["_handle_qos_1_publish_packet", "_handle_qos_2_publish_packet",
                                  "_handle_pingresp_packet"])
async def test_a_missing_hook_stops_the_source_before_it_connects(monkeypatch, hook) -> None:
    from gmqtt.mqtt.handler import MqttPackageHandler

    monkeypatch.delattr(MqttPackageHandler, hook)
    # Nothing listens on port 9: were the check skipped, start() would retry for ever.
    cfg = BrokerConfig.model_validate({"host": "127.0.0.1", "port": 9, "client": "gmqtt"})
    src = MqttSource("uns", MqttSourceConfig(broker=cfg, subscriptions={"a/#": 1}),
                     Context(env={}))
    with pytest.raises(IncompatibleDependency) as info:
        await asyncio.wait_for(src.start(), 5)
    assert f"MqttPackageHandler.{hook}" in str(info.value)
    assert "gmqtt 0.8.0 is not compatible" in str(info.value)


def test_a_hook_with_another_shape_fails_the_check(monkeypatch) -> None:
    from gmqtt.mqtt.handler import MqttPackageHandler

    def renamed_arguments(self, mid, payload, topic, props):
        pass

    monkeypatch.setattr(MqttPackageHandler, "_handle_qos_1_publish_packet", renamed_arguments)
    with pytest.raises(IncompatibleDependency, match=r"takes \['mid', 'payload', 'topic', "
                                                     r"'props'\], not \(mid, packet"):
        check_gmqtt()


def test_a_dispatch_that_no_longer_calls_the_hook_fails_the_check(monkeypatch) -> None:
    from gmqtt.mqtt.handler import MqttPackageHandler

    def publish(self, cmd, raw_packet):
        self.on_message(raw_packet)

    monkeypatch.setattr(MqttPackageHandler, "_handle_publish_packet", publish)
    with pytest.raises(IncompatibleDependency,
                       match="_handle_publish_packet no longer calls _handle_qos_1_publish"):
        check_gmqtt()


def test_a_missing_connection_part_fails_the_check(monkeypatch) -> None:
    from gmqtt.mqtt.connection import MQTTConnection

    monkeypatch.delattr(MQTTConnection, "_send_ping_request")
    with pytest.raises(IncompatibleDependency, match=r"MQTTConnection._send_ping_request\(\)"):
        check_gmqtt()


# -------------------------------------------------------------- a scripted peer


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


def publish_packet(topic: str, payload: bytes, qos: int, mid: int) -> bytes:
    name = topic.encode()
    body = struct.pack("!H", len(name)) + name + (struct.pack("!H", mid) if qos else b"")
    return _packet(PUBLISH | (qos << 1), body + b"\x00" + payload)  # no properties


class Peer:
    """Plays the broker on a local port: CONNACK with ``connack``, SUBACK with ``suback``,
    PINGRESP, UNSUBACK; records every packet the client sends as (type, body)."""

    def __init__(self, connack: int = 0, suback: Callable[[int], list[int]] | None = None) -> None:
        self.connack = connack
        self.suback = suback or (lambda n: [1] * n)
        self.received: list[tuple[int, bytes]] = []
        self.writer: asyncio.StreamWriter | None = None
        self.arrived = asyncio.Condition()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Self:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        if self.writer is not None:
            self.writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        try:
            while True:
                first = (await reader.readexactly(1))[0]
                length, shift = 0, 0
                while True:
                    byte = (await reader.readexactly(1))[0]
                    length += (byte & 0x7F) << shift
                    shift += 7
                    if not byte & 0x80:
                        break
                body = await reader.readexactly(length)
                kind = first & 0xF0
                async with self.arrived:
                    self.received.append((kind, body))
                    self.arrived.notify_all()
                if kind == CONNECT:
                    writer.write(_packet(CONNACK, bytes([0, self.connack, 0])))
                    if self.connack:
                        await writer.drain()
                        writer.close()
                        return
                elif kind == SUBSCRIBE:
                    (props,) = struct.unpack("!B", body[2:3])
                    count = 0
                    rest = body[3 + props:]
                    while rest:
                        (n,) = struct.unpack("!H", rest[:2])
                        rest = rest[2 + n + 1:]
                        count += 1
                    writer.write(_packet(SUBACK, body[:2] + b"\x00" + bytes(self.suback(count))))
                elif kind == UNSUBSCRIBE:
                    writer.write(_packet(UNSUBACK, body[:2] + b"\x00\x00"))
                elif kind == PINGREQ:
                    writer.write(_packet(PINGRESP, b""))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return

    async def wait_for(self, kind: int, count: int = 1, timeout: float = 5.0) -> list[bytes]:
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(
                lambda: sum(k == kind for k, _ in self.received) >= count), timeout)
        return [b for k, b in self.received if k == kind]

    def kinds(self) -> list[int]:
        return [k for k, _ in self.received]


CLIENTS = ["asyncio", "asyncio-python", "gmqtt"]


@pytest.fixture(params=CLIENTS)
def impl(request, monkeypatch) -> str:
    """Which client implementation a test runs against (asyncio-python: the asyncio client
    with the pure-Python decoder, as where the compiled one is not installed)."""
    if request.param == "asyncio-python":
        monkeypatch.setenv("UNSFLOW_SPEEDUPS", "0")
    return request.param.split("-")[0]


class Events:
    """Collects what a client reports; a batch's ack covers its QoS 1/2 messages, so each
    message gets its batch's ack (sent once per distinct ack)."""

    def __init__(self) -> None:
        self.connected = asyncio.Event()
        self.messages: list[tuple[str, bytes, int, Ack | None]] = []
        self.arrived = asyncio.Event()

    def mqtt_connected(self, session_present: bool) -> None:
        self.connected.set()

    def mqtt_disconnected(self) -> None:
        self.connected.clear()

    def mqtt_message(self, topic: str, payload: bytes, qos: int, properties: dict[str, Any],
                     ack: Ack | None) -> None:
        self.messages.append((topic, payload, qos, ack))
        self.arrived.set()

    def mqtt_batch(self, inbound: Any) -> None:
        for topic, payload, flags in zip(inbound.topics, inbound.payloads, inbound.flags):
            qos = flags >> 1 & 3
            self.messages.append((topic, payload, qos, inbound.ack if qos else None))
        self.arrived.set()

    def acks(self) -> list[Ack]:
        """Each distinct ack once, in order."""
        out: list[Ack] = []
        for *_, ack in self.messages:
            if ack is not None and not any(a is ack for a in out):
                out.append(ack)
        return out


def client_for(peer: Peer, events: Events, version: str = "5",
               impl: str = "gmqtt") -> MqttClient:
    return make_client(impl, ClientSettings("127.0.0.1", peer.port, client_id="t",
                                            protocol_version=version),  # type: ignore[arg-type]
                       events, component_id="uns")


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


async def test_acks_wait_for_send_acks_and_leave_in_the_order_given(impl) -> None:
    events = Events()
    async with Peer() as peer:
        client = client_for(peer, events, impl=impl)
        await client.connect()
        try:
            codes = await asyncio.wait_for(client.subscribe({"a/#": 1, "b/#": 2}), 5)
            assert codes == (1, 1)
            assert peer.writer is not None
            # One socket write of 100 messages: QoS 1 with ids 1..50, QoS 2 with ids 51..100.
            peer.writer.write(b"".join(publish_packet(f"a/{i}", b"%d" % i, 1 if i <= 50 else 2, i)
                                       for i in range(1, 101)))
            await until(lambda: len(events.messages) == 100)
            # Nothing acknowledged on its own: the ping barrier's PINGREQ is the next packet.
            assert await client.ping(5)
            assert peer.kinds() == [CONNECT, SUBSCRIBE, PINGREQ]
            assert all(ack is not None for *_, ack in events.messages)
            sent, stale = client.send_acks(events.acks())
            assert (sent, stale) == (100, 0)
            await peer.wait_for(PUBREC, 50)
        finally:
            await client.disconnect()
    pubacks = [struct.unpack("!H", b[:2])[0] for k, b in peer.received if k == PUBACK]
    pubrecs = [struct.unpack("!H", b[:2])[0] for k, b in peer.received if k == PUBREC]
    assert pubacks == list(range(1, 51))
    assert pubrecs == list(range(51, 101))
    assert [t for t, *_ in events.messages] == [f"a/{i}" for i in range(1, 101)]


async def test_acks_of_a_closed_connection_are_stale_not_sent(impl) -> None:
    events = Events()
    async with Peer() as peer:
        client = client_for(peer, events, impl=impl)
        await client.connect()
        assert peer.writer is not None
        peer.writer.write(publish_packet("a/1", b"1", 1, 7))
        await until(lambda: len(events.messages) == 1)
        await client.disconnect()
        ack = events.messages[0][3]
        assert ack is not None
        assert client.send_acks([ack]) == (0, 1)
    assert PUBACK not in peer.kinds()


async def test_suback_reason_codes_reach_the_caller_and_a_refusal_is_permanent(impl) -> None:
    async with Peer(suback=lambda n: [0x87] * n) as peer:
        cfg = BrokerConfig.model_validate({"host": "127.0.0.1", "port": peer.port, "client": impl})
        src = MqttSource("uns", MqttSourceConfig(broker=cfg), Context(env={}))
        await src.start()
        try:
            await until(lambda: src.connection_number == 1)
            with pytest.raises(AccessDenied, match=r"refused subscription\(s\) a/# .*0x87"):
                await src.update_subscriptions({"a/#": 1}, timeout=5)
        finally:
            await src.stop()


async def test_pause_reading_holds_what_the_peer_sends_until_resumed(impl) -> None:
    events = Events()
    async with Peer() as peer:
        client = client_for(peer, events, impl=impl)
        await client.connect()
        try:
            assert client.pause_reading() and client.reading_paused
            assert peer.writer is not None
            peer.writer.write(publish_packet("a/1", b"1", 0, 0))
            await peer.writer.drain()
            await asyncio.sleep(0.2)  # a reading client would have it by now
            assert events.messages == []
            client.resume_reading()
            await until(lambda: len(events.messages) == 1)
        finally:
            await client.disconnect()


@pytest.mark.parametrize("version, code, error, text", [
    ("5", 0x86, AccessDenied, "refused the login (code 0x86: bad user name or password)"),
    ("5", 0x87, AccessDenied, "refused the login (code 0x87: not authorized)"),
    ("5", 0x8A, AccessDenied, "banned"),
    ("3.1.1", 5, AccessDenied, "refused the login (code 0x5: not authorised)"),
    ("5", 0x85, PermanentError, "client identifier not valid"),
    ("5", 0x89, NotConnected, "refused the connection (code 0x89); retrying"),
])
async def test_connack_refusals_map_to_errors_by_whether_a_retry_can_help(version, code, error,
                                                                          text, impl) -> None:
    async with Peer(connack=code) as peer:
        client = client_for(peer, Events(), version, impl)
        try:
            with pytest.raises(error) as info:
                await asyncio.wait_for(client.connect(), 5)
        finally:
            await client.disconnect()
    assert text in str(info.value)
    assert f"127.0.0.1:{peer.port}" in str(info.value)
    if error is not NotConnected:
        assert not isinstance(info.value, NotConnected)


async def test_an_unreachable_broker_is_not_connected(impl) -> None:
    client = make_client(impl, ClientSettings("127.0.0.1", 9), Events(), component_id="uns")
    with pytest.raises(NotConnected, match="cannot connect to broker 127.0.0.1:9"):
        await client.connect()


async def test_packets_cut_anywhere_across_reads_arrive_whole_and_in_order(impl) -> None:
    """A stream of QoS 1 PUBLISH packets (small and 20 KB ones) written in pieces cut at
    every kind of place: inside the fixed header, the topic, the payload."""
    events = Events()
    packets = [publish_packet(f"a/{i}", (b"%d:" % i) * (1 if i % 3 else 4000), 1, i + 1)
               for i in range(60)]
    stream = b"".join(packets)
    async with Peer() as peer:
        client = client_for(peer, events, impl=impl)
        await client.connect()
        try:
            assert peer.writer is not None
            cuts = [0, 1, 2, 3, 7, 30, 5000, 5001, 20000, 20003, 41000, len(stream)]
            for a, b in zip(cuts, cuts[1:]):
                peer.writer.write(stream[a:b])
                await peer.writer.drain()
                await asyncio.sleep(0.01)  # one read each
            await until(lambda: len(events.messages) == 60)
        finally:
            await client.disconnect()
    assert [t for t, *_ in events.messages] == [f"a/{i}" for i in range(60)]
    assert [p for _, p, *_ in events.messages] == \
        [(b"%d:" % i) * (1 if i % 3 else 4000) for i in range(60)]
