"""The MQTT client adapter: what the MQTT source needs from an MQTT client, behind one interface.

The source's guarantees rest on things MQTT client libraries do not offer in
their public API:

- **deferred acknowledgements**: the PUBACK (QoS 1) or PUBREC (QoS 2) of an
  inbound message goes out only when the engine says so, in arrival order,
  many in one socket write (:meth:`MqttClient.send_acks`);
- **pausing the socket** (:meth:`MqttClient.pause_reading`), the backpressure
  for QoS 0 and while a reload drains;
- **SUBSCRIBE and UNSUBSCRIBE answered with their reason codes**
  (:meth:`MqttClient.subscribe` returns a future of the SUBACK's codes);
- **a ping barrier** (:meth:`MqttClient.ping`): the PINGRESP to a PINGREQ
  sent after the last acks proves the broker read them, so a stop does not
  close the socket on unread acks (the broker would redeliver those messages);
- **CONNACK reason codes**: a refused login, a refused authorisation or a ban
  is :class:`~unsflow.errors.AccessDenied` and another refusal that no retry
  can fix is :class:`~unsflow.errors.PermanentError`; only what a retry may fix
  (unreachable, busy, unavailable) is :class:`~unsflow.errors.NotConnected`.

:class:`MqttClient` is that interface, with two implementations:
:class:`~unsflow.sources._mqtt_asyncio.AsyncioMqttClient`, an asyncio protocol
of unsflow's own that decodes every PUBLISH of a socket read in one pass and
hands them over as one batch (the default: ``mqtt-broker.client: asyncio``),
and :class:`GmqttClient` on gmqtt 0.8 (``client: gmqtt``), which calls back
once per message.
This module is the only place that touches gmqtt's private parts: it replaces
the package handler's two inbound QoS 1/2 PUBLISH hooks (so that gmqtt does
not acknowledge on its own) and its PINGRESP hook, and uses the live
connection's transport, protocol version and packet builder. A gmqtt release
that renames a hook would let gmqtt's own handler take over, acknowledging
every message at once: the core guarantee gone, silently. So
:func:`check_gmqtt` verifies, before the first connection, that every hook
and private part exists with the shape used here, and raises
:class:`~unsflow.errors.IncompatibleDependency` naming what is missing and the
gmqtt version.

Each implementation calls :class:`MqttEvents`' methods and keeps the
contract stated on each method of :class:`MqttClient`; the source's tests run
against both.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import ssl
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, Protocol

from unsflow.errors import AccessDenied, IncompatibleDependency, NotConnected, PermanentError

__all__ = ["Ack", "ClientSettings", "GmqttClient", "MqttClient", "MqttEvents", "check_gmqtt",
           "make_client", "refusal_error"]

log = logging.getLogger("unsflow.sources.mqtt")

# An inbound QoS 1/2 message's acknowledgement, opaque to the source: what the
# client needs to send it (gmqtt: the connection it arrived on, the packet id,
# the QoS; the asyncio client: the connection and the ack packets of a whole
# batch). An ack whose connection has closed is stale and not sent.
Ack = tuple[Any, ...]

# CONNACK reason codes (MQTT 3.1.1 return codes 1-5, MQTT 5 reason codes >= 0x80).
_ACCESS_DENIED = {4: "bad user name or password", 5: "not authorised",
                  0x86: "bad user name or password", 0x87: "not authorized",
                  0x8A: "banned", 0x8C: "bad authentication method"}
_PERMANENT = {1: "unacceptable protocol version", 2: "client identifier rejected",
              0x81: "malformed packet", 0x82: "protocol error",
              0x84: "unsupported protocol version", 0x85: "client identifier not valid",
              0x90: "topic name invalid", 0x95: "packet too large",
              0x99: "payload format invalid", 0x9A: "retain not supported",
              0x9B: "QoS not supported", 0x9C: "use another server", 0x9D: "server moved"}


def refusal_error(code: int, where: str, component_id: str) -> Exception:
    """The error for a CONNACK that refused with ``code``.

    >>> type(refusal_error(0x86, "127.0.0.1:1883", "uns")).__name__
    'AccessDenied'
    >>> type(refusal_error(0x89, "127.0.0.1:1883", "uns")).__name__
    'NotConnected'
    """
    if code in _ACCESS_DENIED:
        return AccessDenied(f"broker {where} refused the login (code {code:#x}: "
                            f"{_ACCESS_DENIED[code]}): check the credential and the "
                            "broker's ACL", component_id=component_id)
    if code in _PERMANENT:
        return PermanentError(f"broker {where} refused the connection for good (code {code:#x}: "
                              f"{_PERMANENT[code]})", component_id=component_id)
    return NotConnected(f"broker {where} refused the connection (code {code:#x}); retrying",
                        component_id=component_id)


@dataclass(frozen=True)
class ClientSettings:
    """How to connect: the broker, the session and the login."""

    host: str
    port: int
    client_id: str | None = None
    protocol_version: Literal["5", "3.1.1"] = "5"
    persistent: bool = False
    session_expiry: int = 86400
    receive_maximum: int = 65535
    keepalive: int = 60
    tls: ssl.SSLContext | None = None
    username: str | None = None
    password: str | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class MqttEvents(Protocol):
    """What a client tells its owner (the MQTT source). Called on the event loop."""

    def mqtt_connected(self, session_present: bool) -> None:
        """A connection (the first, or one after a loss) was accepted (CONNACK 0)."""

    def mqtt_disconnected(self) -> None:
        """The connection was lost or closed; the client reconnects on its own."""

    def mqtt_message(self, topic: str, payload: bytes, qos: int, properties: dict[str, Any],
                     ack: Ack | None) -> None:
        """One inbound PUBLISH. ``ack`` (QoS 1/2) is sent only when passed to
        :meth:`MqttClient.send_acks`. Called synchronously, in arrival order, for
        every message of one socket read before the event loop runs anything else."""

    def mqtt_batch(self, inbound: Any) -> None:
        """Inbound PUBLISH packets as columns (an
        :class:`~unsflow.sources._mqtt_asyncio.Inbound`, at most
        :attr:`MqttClient.max_batch` of them), in arrival order; its ``ack``
        covers its QoS 1/2 messages. Clients that decode per message call
        :meth:`mqtt_message` instead."""


class MqttClient(ABC):
    """One MQTT connection (and its reconnects) for the source. Constructed without I/O."""

    # Most messages in one MqttEvents.mqtt_batch call (clients that deliver batches).
    max_batch: int = 2000

    def __init__(self, settings: ClientSettings, events: MqttEvents, *,
                 component_id: str = "") -> None:
        self.settings = settings
        self.events = events
        self.component_id = component_id

    @abstractmethod
    async def connect(self) -> None:
        """Connect once; return after CONNACK 0. Raises :class:`NotConnected` when a retry
        may succeed, :class:`AccessDenied` for a refused login and :class:`PermanentError`
        for another refusal no retry can fix. After a later loss the client reconnects
        by itself, ``reconnect_delay`` seconds later."""

    @abstractmethod
    async def disconnect(self, timeout: float = 5.0) -> None:
        """Send DISCONNECT and close, without unsubscribing; never raises for a dead link."""

    @property
    @abstractmethod
    def connected(self) -> bool:
        """A connection is open (CONNACK received, socket not closing)."""

    @property
    @abstractmethod
    def connection_number(self) -> int:
        """How many connections were accepted so far (a reconnect adds one)."""

    @property
    @abstractmethod
    def reconnect_delay(self) -> float:
        """Seconds the client waits before its next reconnect."""

    @reconnect_delay.setter
    @abstractmethod
    def reconnect_delay(self, seconds: float) -> None: ...

    @abstractmethod
    def send_acks(self, acks: Iterable[Ack]) -> tuple[int, int]:
        """Send the acks, in the order given, in one socket write.

        Returns ``(sent, stale)``: stale acks arrived on an earlier connection
        (or none is open) and are not sent; the broker redelivers their
        messages on the new connection.
        """

    @abstractmethod
    def pause_reading(self) -> bool:
        """Stop reading the socket (the broker's window then fills); False if not connected."""

    @abstractmethod
    def resume_reading(self) -> None:
        """Read again after :meth:`pause_reading` (nothing when not paused)."""

    @property
    @abstractmethod
    def reading_paused(self) -> bool: ...

    @abstractmethod
    def subscribe(self, filters: Mapping[str, int]) -> asyncio.Future[tuple[int, ...]]:
        """Send one SUBSCRIBE for ``filters`` ({filter: qos}); the future gets the SUBACK's
        reason codes in the same order (>= 0x80: refused), or :class:`NotConnected` when
        the connection is lost first. Not connected: raises :class:`NotConnected`."""

    @abstractmethod
    def unsubscribe(self, filters: Sequence[str]) -> asyncio.Future[tuple[int, ...]]:
        """Send one UNSUBSCRIBE; the future gets the UNSUBACK's reason codes (MQTT 5; empty
        for 3.1.1). Not connected: raises :class:`NotConnected`."""

    @abstractmethod
    async def ping(self, timeout: float) -> bool:
        """PINGREQ, then wait for a PINGRESP: True when it came within ``timeout`` seconds
        (the broker has read everything sent before), False otherwise or when not connected."""


# ------------------------------------------------------------------ gmqtt


def _params(func: Any) -> list[str]:
    return [p for p in inspect.signature(func).parameters if p != "self"]


@lru_cache(maxsize=1)
def check_gmqtt() -> str:
    """Check every gmqtt internal this module relies on; return gmqtt's version.

    Raises :class:`IncompatibleDependency` naming the first missing or changed part.
    """
    try:
        import gmqtt
        from gmqtt.mqtt import connection, handler, package, protocol
        from gmqtt.mqtt.constants import MQTTCommands
    except ImportError as exc:
        raise IncompatibleDependency("gmqtt", "?", f"a module is missing ({exc})") from exc
    version = str(getattr(gmqtt, "__version__", "?"))

    def require(ok: bool, what: str) -> None:
        if not ok:
            raise IncompatibleDependency("gmqtt", version, what)

    H = handler.MqttPackageHandler
    for hook in ("_handle_qos_1_publish_packet", "_handle_qos_2_publish_packet"):
        require(callable(getattr(H, hook, None)), f"MqttPackageHandler.{hook} (the hook that "
                "acknowledges an inbound QoS 1/2 PUBLISH) does not exist")
        require(_params(getattr(H, hook)) == ["mid", "packet", "print_topic", "properties"],
                f"MqttPackageHandler.{hook} takes {_params(getattr(H, hook))}, not "
                "(mid, packet, print_topic, properties)")
        publish = getattr(H, "_handle_publish_packet", None)
        require(publish is not None and hook in publish.__code__.co_names,
                f"MqttPackageHandler._handle_publish_packet no longer calls {hook}")
    require(callable(getattr(H, "_handle_pingresp_packet", None))
            and _params(H._handle_pingresp_packet) == ["cmd", "packet"],
            "MqttPackageHandler._handle_pingresp_packet(cmd, packet) does not exist")
    dispatch = getattr(H, "__get_handler__", None)
    require(dispatch is not None and "_handle_{}_packet" in dispatch.__code__.co_consts,
            "MqttPackageHandler.__get_handler__ no longer looks handlers up by name "
            "('_handle_{}_packet'), so replaced hooks would not be called")
    require(isinstance(getattr(H, "current_connection", None), property),
            "MqttPackageHandler.current_connection does not exist")
    C = connection.MQTTConnection
    for name, params in (("send_package", ["package"]), ("_send_ping_request", []),
                         ("subscribe", ["subscription", "kwargs"]),
                         ("unsubscribe", ["topic", "kwargs"]), ("is_closing", [])):
        require(callable(getattr(C, name, None)) and _params(getattr(C, name)) == params,
                f"MQTTConnection.{name}({', '.join(params)}) does not exist")
    init = _params(C.__init__)
    require(init[:2] == ["transport", "protocol"] and {"_transport", "_protocol"}
            <= set(C.__init__.__code__.co_names),
            "MQTTConnection no longer keeps _transport and _protocol")
    require(isinstance(getattr(protocol.MQTTProtocol, "proto_ver", None), property),
            "MQTTProtocol.proto_ver does not exist")
    build = getattr(package.CommandWithMidPacket, "build_package", None)
    require(build is not None and _params(build)[:3] == ["cmd", "mid", "dup"]
            and "proto_ver" in _params(build),
            "CommandWithMidPacket.build_package(cmd, mid, dup, ..., proto_ver) does not exist")
    require(getattr(handler.MQTTConnectError(4), "_code", None) == 4,
            "MQTTConnectError no longer keeps its reason code in _code")
    require(hasattr(MQTTCommands, "PUBACK") and hasattr(MQTTCommands, "PUBREC"),
            "MQTTCommands.PUBACK / PUBREC do not exist")
    client = gmqtt.Client("unsflow-check")
    require(isinstance(getattr(client, "_package_handler", None), H),
            "Client._package_handler (the package handler) does not exist")
    require(hasattr(client, "reconnect_delay"), "Client.reconnect_delay does not exist")
    return version


class GmqttClient(MqttClient):
    """:class:`MqttClient` on gmqtt (module docstring: what it relies on, and the check)."""

    def __init__(self, settings: ClientSettings, events: MqttEvents, *,
                 component_id: str = "") -> None:
        super().__init__(settings, events, component_id=component_id)
        self._client: Any = None
        self._handler: Any = None
        self._paused: Any = None  # the transport whose reading is paused
        self._suback: dict[int, asyncio.Future[tuple[int, ...]]] = {}
        self._unsuback: dict[int, asyncio.Future[tuple[int, ...]]] = {}
        self._pong: asyncio.Future[None] | None = None
        self._connections = 0
        self._build_ack: Any = None
        self._puback = self._pubrec = 0

    def _make_client(self) -> None:
        check_gmqtt()
        import gmqtt
        from gmqtt.mqtt.constants import MQTTCommands
        from gmqtt.mqtt.package import CommandWithMidPacket

        s = self.settings
        props: dict[str, Any] = {}
        if s.protocol_version == "5":
            props["receive_maximum"] = s.receive_maximum
            if s.persistent:
                props["session_expiry_interval"] = s.session_expiry
        client = gmqtt.Client(s.client_id or None, clean_session=not s.persistent,
                              optimistic_acknowledgement=False,
                              logger=logging.getLogger("unsflow.sources.mqtt.gmqtt"), **props)
        if s.username is not None:
            client.set_auth_credentials(s.username, s.password)
        handler = client._package_handler
        events = self.events
        message = events.mqtt_message

        # The two hooks gmqtt calls for an inbound QoS 1/2 PUBLISH: ours hold the ack.
        def on_qos1(mid: int, payload: bytes, topic: str, properties: dict[str, Any]) -> None:
            message(topic, payload, 1, properties, (handler.current_connection, mid, 1))

        def on_qos2(mid: int, payload: bytes, topic: str, properties: dict[str, Any]) -> None:
            message(topic, payload, 2, properties, (handler.current_connection, mid, 2))

        def on_qos0(client: Any, topic: str, payload: bytes, qos: int,
                    properties: dict[str, Any]) -> None:
            message(topic, payload, 0, properties, None)

        handler._handle_qos_1_publish_packet = on_qos1
        handler._handle_qos_2_publish_packet = on_qos2
        handler._handle_pingresp_packet = self._on_pingresp
        client.on_message = on_qos0
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        self._client, self._handler = client, handler
        self._build_ack = CommandWithMidPacket.build_package
        self._puback, self._pubrec = MQTTCommands.PUBACK, MQTTCommands.PUBREC

    # -- connection ----------------------------------------------------------

    async def connect(self) -> None:
        if self._client is None:
            self._make_client()
        from gmqtt.mqtt.constants import MQTTv50, MQTTv311
        from gmqtt.mqtt.handler import MQTTConnectError, MQTTError

        s = self.settings
        try:
            await self._client.connect(s.host, s.port, ssl=s.tls or False, keepalive=s.keepalive,
                                       version=MQTTv50 if s.protocol_version == "5" else MQTTv311)
        except MQTTConnectError as exc:
            raise refusal_error(exc._code, s.address, self.component_id) from exc
        except (MQTTError, TimeoutError, OSError) as exc:
            raise NotConnected(f"cannot connect to broker {s.address}: {exc}",
                               component_id=self.component_id) from exc

    async def disconnect(self, timeout: float = 5.0) -> None:
        if self._client is None:
            return
        try:
            await asyncio.wait_for(self._client.disconnect(), timeout)
        except (TimeoutError, OSError):
            pass  # the link is gone either way; the session stays on the broker

    @property
    def _connection(self) -> Any:
        conn = self._handler.current_connection if self._handler is not None else None
        return None if conn is None or conn.is_closing() else conn

    @property
    def connected(self) -> bool:
        return self._connection is not None and self._client.is_connected

    @property
    def connection_number(self) -> int:
        return self._connections

    @property
    def reconnect_delay(self) -> float:
        return float(self._client.reconnect_delay) if self._client is not None else 0.0

    @reconnect_delay.setter
    def reconnect_delay(self, seconds: float) -> None:
        if self._client is not None:
            self._client.reconnect_delay = seconds

    def _on_connect(self, client: Any, session_present: Any, rc: Any, properties: Any) -> None:
        self._connections += 1
        self.events.mqtt_connected(bool(session_present))

    def _on_disconnect(self, client: Any, packet: Any, exc: Any = None) -> None:
        lost = NotConnected(f"connection to broker {self.settings.address} lost",
                            component_id=self.component_id)
        for waiters in (self._suback, self._unsuback):
            for fut in waiters.values():
                if not fut.done():
                    fut.set_exception(lost)
            waiters.clear()
        self._paused = None
        self.events.mqtt_disconnected()

    # -- acks and flow -----------------------------------------------------------

    def send_acks(self, acks: Iterable[Ack]) -> tuple[int, int]:
        current = self._connection
        build = self._build_ack
        packets: list[bytes] = []
        stale = 0
        if current is None:
            return 0, sum(1 for _ in acks)
        proto = current._protocol.proto_ver
        puback, pubrec = self._puback, self._pubrec
        for conn, mid, qos in acks:
            if conn is current:
                packets.append(build(puback if qos == 1 else pubrec, mid, False, proto_ver=proto))
            else:
                stale += 1
        if packets:
            current.send_package(b"".join(packets))
        return len(packets), stale

    def pause_reading(self) -> bool:
        conn = self._connection
        if self._paused is not None:
            return True
        transport = getattr(conn, "_transport", None)
        if transport is None:
            return False
        transport.pause_reading()
        self._paused = transport
        return True

    def resume_reading(self) -> None:
        transport, self._paused = self._paused, None
        if transport is not None and not transport.is_closing():
            transport.resume_reading()

    @property
    def reading_paused(self) -> bool:
        return self._paused is not None

    # -- subscriptions -------------------------------------------------------------

    def _live(self, what: str) -> Any:
        conn = self._connection
        if conn is None:
            raise NotConnected(f"cannot {what}: not connected to broker {self.settings.address}",
                               component_id=self.component_id)
        return conn

    def subscribe(self, filters: Mapping[str, int]) -> asyncio.Future[tuple[int, ...]]:
        from gmqtt import Subscription

        conn = self._live("subscribe")
        mid = conn.subscribe([Subscription(f, qos=q) for f, q in filters.items()])
        return self._waiter(self._suback, mid)

    def unsubscribe(self, filters: Sequence[str]) -> asyncio.Future[tuple[int, ...]]:
        conn = self._live("unsubscribe")
        mid = conn.unsubscribe(list(filters))
        return self._waiter(self._unsuback, mid)

    @staticmethod
    def _waiter(table: dict[int, asyncio.Future[tuple[int, ...]]],
                mid: int) -> asyncio.Future[tuple[int, ...]]:
        fut: asyncio.Future[tuple[int, ...]] = asyncio.get_running_loop().create_future()
        # A caller that does not wait for the answer must not get "exception never retrieved".
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        table[mid] = fut
        return fut

    def _on_subscribe(self, client: Any, mid: int, codes: Any, properties: Any) -> None:
        fut = self._suback.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(tuple(int(c) for c in codes))

    def _on_unsubscribe(self, client: Any, mid: int, codes: Any) -> None:
        fut = self._unsuback.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(tuple(int(c) for c in codes))

    # -- ping barrier --------------------------------------------------------------

    async def ping(self, timeout: float) -> bool:
        conn = self._connection
        if conn is None:
            return False
        self._pong = asyncio.get_running_loop().create_future()
        conn._send_ping_request()
        try:
            await asyncio.wait_for(self._pong, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self._pong = None

    def _on_pingresp(self, cmd: int, packet: bytes) -> None:
        if self._pong is not None and not self._pong.done():
            self._pong.set_result(None)


def make_client(kind: str, settings: ClientSettings, events: MqttEvents, *,
                component_id: str = "") -> MqttClient:
    """The client implementation named ``kind`` (``asyncio`` or ``gmqtt``)."""
    if kind == "gmqtt":
        return GmqttClient(settings, events, component_id=component_id)
    if kind == "asyncio":
        from unsflow.sources._mqtt_asyncio import AsyncioMqttClient

        return AsyncioMqttClient(settings, events, component_id=component_id)
    raise ValueError(f"unknown MQTT client {kind!r}; expected asyncio or gmqtt")
