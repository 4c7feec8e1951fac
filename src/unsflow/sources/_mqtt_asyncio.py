"""AsyncioMqttClient: the MQTT source's client, an asyncio protocol of unsflow's own.

It implements :class:`~unsflow.sources._mqtt_client.MqttClient` for the
subscribe side only (no outbound PUBLISH): MQTT 3.1.1 and 5, QoS 0/1/2, TLS,
login, persistent sessions, receive-maximum, keep-alive, reconnects. It
exists for speed: gmqtt decodes one packet per call and builds a dict of
properties per message; here every PUBLISH of one socket read is decoded in
one pass (:func:`~unsflow.sources._mqtt_wire.scan_publishes`) and handed to
the source as one batch of columns (:meth:`MqttEvents.mqtt_batch`), and the
acknowledgements of a batch are bytes prepared while decoding, sent with
those of other batches in one write.

Contract, beyond :class:`MqttClient`'s:

- Deliveries are :class:`Inbound` batches of at most :attr:`max_batch`
  messages, in arrival order, every one of a socket read before the event
  loop runs anything else.
- An :data:`Ack` is ``(connection, ack bytes)`` for the QoS 1/2 messages of one
  batch; ``send_acks`` writes those of the open connection and counts the
  others as stale (their messages are redelivered on the new connection).
- The QoS 2 exchange is finished here: PUBCOMP answers PUBREL at once (the
  message was taken when its PUBREC went out, after durable acceptance).
- A malformed packet closes the connection (MQTT 4.13) and the client
  reconnects, as after any loss; a DISCONNECT from an MQTT 5 broker is
  logged with its reason code.
- Keep-alive: a PINGREQ when nothing was sent for half the keep-alive; no
  answer within the keep-alive (while reading is not paused) closes the
  connection as dead.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from unsflow._speedups import speedups
from unsflow.errors import AccessDenied, NotConnected, PermanentError
from unsflow.sources import _mqtt_wire as wire
from unsflow.sources._mqtt_client import ClientSettings, MqttClient, MqttEvents, refusal_error

__all__ = ["AsyncioMqttClient", "Inbound", "scanner"]

log = logging.getLogger("unsflow.sources.mqtt")

CONNECT_TIMEOUT = 15.0  # seconds for TCP (and TLS) plus the CONNACK


def scanner() -> tuple[Any, Any]:
    """The PUBLISH decoder and a factory of its topic cache: the compiled ones when
    installed (:mod:`unsflow._speedups`), else the Python reference and a dict."""
    fast = speedups()
    if fast is None:
        return wire.scan_publishes, dict
    return fast.scan_publishes, fast.TopicCache


@dataclass(slots=True)
class Inbound:
    """PUBLISH packets of one socket read, as columns (see :func:`scan_publishes`)."""

    topics: list[str]
    payloads: list[bytes]
    flags: list[int]                # DUP (8), QoS (6), RETAIN (1) bits
    properties: list[Any]           # MQTT 5 properties, or None per message
    ack: tuple[Any, bytes] | None   # the QoS 1/2 messages' acks, or None


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection to the broker: reads, decodes, dispatches."""

    def __init__(self, client: AsyncioMqttClient) -> None:
        self.client = client
        self.v5 = client.settings.protocol_version == "5"
        self.transport: asyncio.Transport | None = None
        self.connack: asyncio.Future[tuple[bool, int, dict[str, Any]]] = \
            asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.accepted = False
        self.closing = False
        self.paused = False
        self._rest: list[bytes] = []  # an incomplete packet's bytes so far
        self._have = 0
        self._need = 0
        self._topics: Any = client.topic_cache()
        self._aliases: dict[int, str] = {}
        self._scan = client.scan
        self.last_sent = time.monotonic()
        self.pings: deque[asyncio.Future[None] | None] = deque()  # PINGREQs awaiting PINGRESP
        self.ping_sent_at = 0.0  # the oldest unanswered PINGREQ (0: none)

    # -- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if not self.connack.done():
            self.connack.set_exception(ConnectionError(
                f"connection closed before CONNACK{f' ({exc})' if exc else ''}"))
        for waiter in self.pings:
            if waiter is not None and not waiter.done():
                waiter.set_exception(ConnectionError("connection closed"))
        self.pings.clear()
        if not self.closed.done():
            self.closed.set_result(None)
        self.client._lost(self, exc)

    def pause_reading(self) -> None:
        self.paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.paused = False
        self.ping_sent_at = 0.0 if not self.pings else time.monotonic()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not self.closing:
            transport.write(data)
            self.last_sent = time.monotonic()

    def abort(self, why: str) -> None:
        if not self.closing:
            log.warning("[%s] closing the connection to %s: %s", self.client.component_id,
                        self.client.settings.address, why)
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def ping(self, waiter: asyncio.Future[None] | None) -> None:
        self.pings.append(waiter)
        if len(self.pings) == 1:
            self.ping_sent_at = time.monotonic()
        self.write(wire.PINGREQ_PACKET)

    # -- reading ------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if self.pings:
            self.ping_sent_at = time.monotonic()  # the link is alive; the answer is queued
        start = 0
        try:
            if self._rest:
                had = self._have
                self._have += len(data)
                if self._need and self._have < self._need:  # the packet is still incomplete
                    self._rest.append(data)
                    return
                if self._need:
                    # Complete the cut packet with just the bytes it lacks: the rest of this
                    # read is decoded where it lies, not copied behind the old bytes.
                    start = self._need - had
                    packet = b"".join([*self._rest, data[:start]])
                else:  # even the fixed header was cut (rare): join everything
                    start = len(data)
                    packet = b"".join([*self._rest, data])
                self._rest.clear()
                self._have = self._need = 0
                self._consume(packet)
                if self.closing or start >= len(data):
                    return
            self._consume(data, start)
        except wire.MalformedPacket as exc:
            self.abort(f"malformed packet from the broker: {exc}")

    def _consume(self, data: bytes, pos: int = 0) -> None:
        n = len(data)
        client = self.client
        deliver = client.events.mqtt_batch
        scan = self._scan
        v5 = self.v5
        while pos < n:
            if self.accepted:
                pos, topics, payloads, flags, props, acks = scan(
                    data, pos, v5, client.max_batch, self._topics)
                if topics:
                    if v5 and any(props):
                        self._resolve_aliases(topics, props)
                    deliver(Inbound(topics, payloads, flags, props,
                                    (self, acks) if acks else None))
                    if self.closing:
                        return
                    continue
                if pos >= n:
                    return
            header = wire.packet_header(data, pos)
            if header is None or header[2] > n:
                rest = data[pos:]
                self._rest.append(rest)
                self._have = len(rest)
                self._need = header[2] - pos if header is not None else 0
                return
            first, start, end = header
            self._handle(first, data, start, end)
            if self.closing:
                return
            pos = end

    def _resolve_aliases(self, topics: list[str], props: list[Any]) -> None:
        for i, prop in enumerate(props):
            if prop is None or "topic_alias" not in prop:
                continue
            alias = prop["topic_alias"][0]
            if topics[i]:
                self._aliases[alias] = topics[i]
            elif alias in self._aliases:
                topics[i] = self._aliases[alias]
            else:
                raise wire.MalformedPacket(f"PUBLISH with unknown topic alias {alias}")

    def _handle(self, first: int, data: bytes, start: int, end: int) -> None:
        kind = first >> 4
        client = self.client
        if kind == wire.PUBLISH:  # before CONNACK: not allowed
            raise wire.MalformedPacket("PUBLISH before CONNACK")
        if kind == wire.CONNACK:
            if end - start < 2:
                raise wire.MalformedPacket("CONNACK too short")
            session_present, code = bool(data[start] & 1), data[start + 1]
            props: dict[str, Any] = {}
            if self.v5 and end > start + 2:
                props, _ = wire.parse_properties(data, start + 2, end)
            if self.connack.done():
                raise wire.MalformedPacket("a second CONNACK")
            self.connack.set_result((session_present, code, props))
            if code == 0:
                # Accepted here, not when connect() resumes: the session's queued messages
                # may follow in this very read.
                self.accepted = True
                client._accepted(self, session_present, props)
        elif kind == wire.PUBREL:
            if end - start < 2:
                raise wire.MalformedPacket("PUBREL too short")
            self.write(b"\x70\x02" + data[start:start + 2])  # PUBCOMP
        elif kind in (wire.SUBACK, wire.UNSUBACK):
            if end - start < 2:
                raise wire.MalformedPacket(f"{'SUB' if kind == wire.SUBACK else 'UNSUB'}ACK "
                                           "too short")
            mid = (data[start] << 8) | data[start + 1]
            pos = start + 2
            if self.v5:
                _, pos = wire.parse_properties(data, pos, end)
            codes = tuple(data[pos:end])
            client._answered(kind, mid, codes)
        elif kind == wire.PINGRESP:
            waiter = self.pings.popleft() if self.pings else None
            self.ping_sent_at = time.monotonic() if self.pings else 0.0
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        elif kind == wire.DISCONNECT:
            code = data[start] if end > start else 0
            reason = ""
            if self.v5 and end > start + 1:
                props, _ = wire.parse_properties(data, start + 1, end)
                reason = "; ".join(props.get("reason_string", []))
            log.warning("[%s] broker %s sent DISCONNECT (reason code %#x%s)",
                        client.component_id, client.settings.address, code,
                        f": {reason}" if reason else "")
            self.closing = True
            if self.transport is not None:
                self.transport.close()
        elif kind in (wire.PUBACK, wire.PUBREC, wire.PUBCOMP):
            pass  # answers to PUBLISH packets this client never sends: ignored
        else:
            raise wire.MalformedPacket(f"unexpected packet type {kind} from the broker")


class AsyncioMqttClient(MqttClient):
    """:class:`MqttClient` on an asyncio protocol of unsflow's own (module docstring)."""

    def __init__(self, settings: ClientSettings, events: MqttEvents, *,
                 component_id: str = "") -> None:
        super().__init__(settings, events, component_id=component_id)
        self.max_batch = 2000
        self.scan, self.topic_cache = scanner()
        self._conn: _Connection | None = None
        self._connections = 0
        self._delay = 0.5
        self._wanted = False  # connect() succeeded once and disconnect() was not called
        self._reconnector: asyncio.Task[None] | None = None
        self._keepalive: asyncio.TimerHandle | None = None
        self._next_mid = 0
        self._waiters: dict[int, tuple[int, asyncio.Future[tuple[int, ...]]]] = {}
        self._client_id = settings.client_id or f"unsflow-{uuid.uuid4().hex[:16]}"

    # -- connecting ------------------------------------------------------------

    async def connect(self) -> None:
        await self._connect_once()
        self._wanted = True

    async def _connect_once(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        conn: _Connection | None = None
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self), s.host, s.port, ssl=s.tls,
                    server_hostname=s.host if s.tls is not None else None)
                v5 = s.protocol_version == "5"
                conn.write(wire.encode_connect(
                    self._client_id, v5=v5, clean_start=not s.persistent,
                    keepalive=s.keepalive,
                    session_expiry=s.session_expiry if v5 and s.persistent else None,
                    receive_maximum=s.receive_maximum if v5 else None,
                    username=s.username, password=s.password))
                _, code, _ = await conn.connack
        except (TimeoutError, OSError, ConnectionError) as exc:
            if conn is not None and conn.transport is not None:
                conn.transport.abort()
            what = f"no answer within {CONNECT_TIMEOUT:g}s" if isinstance(exc, TimeoutError) \
                else str(exc)
            raise NotConnected(f"cannot connect to broker {s.address}: {what}",
                               component_id=self.component_id) from exc
        except BaseException:
            if conn is not None and conn.transport is not None:
                conn.transport.abort()
            raise
        if code != 0:
            conn.closing = True
            if conn.transport is not None:
                conn.transport.close()
            raise refusal_error(code, s.address, self.component_id)
        if conn.closing:  # accepted, then lost at once
            raise NotConnected(f"connection to broker {s.address} lost right after CONNACK",
                               component_id=self.component_id)

    def _accepted(self, conn: _Connection, session_present: bool,
                  props: dict[str, Any]) -> None:
        """CONNACK 0 on ``conn`` (called while reading it)."""
        self._conn = conn
        self._connections += 1
        self._schedule_keepalive(conn, props.get("server_keep_alive", [self.settings.keepalive])[0])
        self.events.mqtt_connected(session_present)

    async def disconnect(self, timeout: float = 5.0) -> None:
        self._wanted = False
        task, self._reconnector = self._reconnector, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        conn = self._conn
        if conn is None or conn.closing:
            return
        conn.write(wire.encode_disconnect())
        conn.closing = True
        if conn.transport is not None:
            conn.transport.close()
        try:
            await asyncio.wait_for(asyncio.shield(conn.closed), timeout)
        except TimeoutError:
            if conn.transport is not None:
                conn.transport.abort()

    def _lost(self, conn: _Connection, exc: Exception | None) -> None:
        if conn is not self._conn:
            return  # a connection that never got its CONNACK
        self._conn = None
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        lost = NotConnected(f"connection to broker {self.settings.address} lost",
                            component_id=self.component_id)
        for _, fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(lost)
        self._waiters.clear()
        self.events.mqtt_disconnected()
        if self._wanted and self._reconnector is None:
            self._reconnector = asyncio.get_running_loop().create_task(
                self._reconnect(), name=f"{self.component_id}:mqtt-reconnect")

    async def _reconnect(self) -> None:
        try:
            while self._wanted:
                await asyncio.sleep(self._delay)
                if not self._wanted:
                    return
                try:
                    await self._connect_once()
                    return
                except NotConnected as exc:
                    log.warning("[%s] %s", self.component_id, exc)
                except (AccessDenied, PermanentError) as exc:
                    # Fix the credential or ACL and it works again: keep trying, loudly.
                    log.error("[%s] %s", self.component_id, exc)
                self.events.mqtt_disconnected()  # the owner sets the next (longer) delay
        finally:
            if self._reconnector is asyncio.current_task():
                self._reconnector = None

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closing

    @property
    def connection_number(self) -> int:
        return self._connections

    @property
    def reconnect_delay(self) -> float:
        return self._delay

    @reconnect_delay.setter
    def reconnect_delay(self, seconds: float) -> None:
        self._delay = seconds

    # -- keep-alive --------------------------------------------------------------

    def _schedule_keepalive(self, conn: _Connection, keepalive: int) -> None:
        if keepalive <= 0:
            return
        interval = keepalive / 2
        loop = asyncio.get_running_loop()

        def tick() -> None:
            if conn.closing or conn is not self._conn:
                return
            now = time.monotonic()
            if conn.ping_sent_at and not conn.paused and now - conn.ping_sent_at > keepalive:
                conn.abort(f"no PINGRESP within the keep-alive ({keepalive}s)")
                return
            if now - conn.last_sent >= interval and not conn.pings:
                conn.ping(None)
            self._keepalive = loop.call_later(interval / 2, tick)

        self._keepalive = loop.call_later(interval / 2, tick)

    # -- acks and flow -------------------------------------------------------------

    def send_acks(self, acks: Iterable[Any]) -> tuple[int, int]:
        conn = self._conn
        parts: list[bytes] = []
        sent = stale = 0
        live = conn is not None and not conn.closing
        for owner, data in acks:
            if live and owner is conn:
                parts.append(data)
                sent += len(data) >> 2
            else:
                stale += len(data) >> 2
        if parts:
            assert conn is not None
            conn.write(b"".join(parts) if len(parts) > 1 else parts[0])
        return sent, stale

    def pause_reading(self) -> bool:
        conn = self._conn
        if conn is None or conn.closing:
            return False
        if not conn.paused:
            conn.pause_reading()
        return True

    def resume_reading(self) -> None:
        conn = self._conn
        if conn is not None and conn.paused:
            conn.resume_reading()

    @property
    def reading_paused(self) -> bool:
        return self._conn is not None and self._conn.paused

    # -- subscriptions -------------------------------------------------------------

    def _live(self, what: str) -> _Connection:
        conn = self._conn
        if conn is None or conn.closing:
            raise NotConnected(f"cannot {what}: not connected to broker {self.settings.address}",
                               component_id=self.component_id)
        return conn

    def _mid(self) -> int:
        for _ in range(65535):
            self._next_mid = self._next_mid % 65535 + 1
            if self._next_mid not in self._waiters:
                return self._next_mid
        raise NotConnected("no free packet identifier", component_id=self.component_id)

    def _waiter(self, kind: int, mid: int) -> asyncio.Future[tuple[int, ...]]:
        fut: asyncio.Future[tuple[int, ...]] = asyncio.get_running_loop().create_future()
        # A caller that does not wait for the answer must not get "exception never retrieved".
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._waiters[mid] = (kind, fut)
        return fut

    def subscribe(self, filters: Mapping[str, int]) -> asyncio.Future[tuple[int, ...]]:
        conn = self._live("subscribe")
        mid = self._mid()
        fut = self._waiter(wire.SUBACK, mid)
        conn.write(wire.encode_subscribe(mid, dict(filters), v5=conn.v5))
        return fut

    def unsubscribe(self, filters: Sequence[str]) -> asyncio.Future[tuple[int, ...]]:
        conn = self._live("unsubscribe")
        mid = self._mid()
        fut = self._waiter(wire.UNSUBACK, mid)
        conn.write(wire.encode_unsubscribe(mid, list(filters), v5=conn.v5))
        return fut

    def _answered(self, kind: int, mid: int, codes: tuple[int, ...]) -> None:
        entry = self._waiters.get(mid)
        if entry is None or entry[0] != kind:
            return
        del self._waiters[mid]
        if not entry[1].done():
            entry[1].set_result(codes)

    # -- ping barrier --------------------------------------------------------------

    async def ping(self, timeout: float) -> bool:
        conn = self._conn
        if conn is None or conn.closing:
            return False
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        conn.ping(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
            return True
        except (TimeoutError, ConnectionError):
            return False
