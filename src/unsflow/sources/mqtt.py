"""MQTT source: subscribes to the UNS broker and delivers batches.

Guarantees:

- QoS 1 and 2 messages are acknowledged (PUBACK / PUBREC) only when the
  engine calls :meth:`MqttSource.ack` for their batch, i.e. after every target
  durably accepted them; acknowledgements go out in the order the messages
  arrived (MQTT 4.6). An ack whose connection has since dropped is not sent:
  the broker redelivers that message on the new connection (at least once).
- In flight is bounded by the broker's window: MQTT 5 ``receive-maximum``
  (or Mosquitto's ``max_inflight_messages`` for 3.1.1). For QoS 0, reading
  from the socket pauses when ``max_pending`` batches wait (backpressure).
- A persistent session (fixed client id, clean start off, session expiry)
  keeps subscriptions and queued messages while the process is down. Stop
  disconnects without unsubscribing.
- Reconnects use capped, jittered backoff and re-subscribe every filter.
- :meth:`MqttSource.update_subscriptions` changes the filters on the live
  connection (a config reload): added filters and changed QoS are
  subscribed, removed filters unsubscribed; the session stays.

Batches are cut per network read: every message parsed from one socket read
joins one batch (up to ``batch_size``), so there is no per-message task or
timer. gmqtt is used for the protocol (measured fastest of the Python
clients); its two inbound QoS 1/2 hooks are replaced so that acks wait for us.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from typing import Any

from unsflow.components import Context
from unsflow.config.models import BrokerConfig, SecretRef
from unsflow.engine.acks import InOrderAcks
from unsflow.engine.backoff import Backoff
from unsflow.errors import NotConnected, SecretError
from unsflow.message import Message
from unsflow.sources.base import Source

__all__ = ["MqttSource", "ssl_context"]

log = logging.getLogger("unsflow.sources.mqtt")


def ssl_context(tls: Any) -> ssl.SSLContext:
    """An SSL context from a :class:`TlsConfig`."""
    ctx = ssl.create_default_context(cafile=tls.ca_file)
    if tls.cert_file:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class MqttSource(Source):
    """Subscribes to ``subscriptions`` ({filter: qos}) on the broker of ``broker``."""

    def __init__(self, component_id: str, broker: BrokerConfig, credential: SecretRef | None,
                 subscriptions: dict[str, int], context: Context, *, batch_size: int = 2000,
                 max_pending: int = 64) -> None:
        super().__init__(component_id, context)
        self.broker = broker
        self.credential = credential
        self.subscriptions = dict(subscriptions)
        self.batch_size = batch_size
        self.max_pending = max_pending
        self._client: Any = None
        self._handler: Any = None
        self._pending: list[Message] = []
        self._pending_acks: list[tuple[Any, int, int]] = []
        self._batches: deque[tuple[list[Message], int]] = deque()
        self._batch_ready = asyncio.Event()
        self._flush_scheduled = False
        self._acks: InOrderAcks[list[tuple[Any, int, int]]] = InOrderAcks()
        self._paused_transport: Any = None
        self._backoff = Backoff(broker.reconnect_min, broker.reconnect_max)
        self._connected = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._stopping = False
        self._pong: asyncio.Future[None] | None = None
        # SUBSCRIBE packet id -> future of the SUBACK's reason codes (update_subscriptions).
        self._suback_waiters: dict[int, asyncio.Future[tuple[int, ...]]] = {}
        # Filters removed while disconnected: unsubscribed on the next connect.
        self._unsubscribe_pending: set[str] = set()
        self._hold_open = False  # waiting for a SUBACK: do not pause reading
        self.received = 0
        self.acked = 0
        self.stale_acks = 0

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        import gmqtt
        from gmqtt.mqtt.constants import MQTTv50, MQTTv311

        b = self.broker
        v5 = b.protocol_version == "5"
        props: dict[str, Any] = {}
        if v5:
            props["receive_maximum"] = b.receive_maximum
            if b.persistent:
                props["session_expiry_interval"] = b.session_expiry
        client = gmqtt.Client(b.client_id or None, clean_session=not b.persistent,
                              optimistic_acknowledgement=False,
                              logger=logging.getLogger("unsflow.sources.mqtt.gmqtt"), **props)
        if self.credential is not None:
            cred = await self.context.resolve_secret(self.credential)
            if cred.username is None:
                raise SecretError(f"secret {self.credential.secret_name!r}: no username")
            client.set_auth_credentials(cred.username, cred.password)
        handler = client._package_handler
        # The two hooks gmqtt calls for inbound QoS 1/2 PUBLISH; ours hold the ack.
        handler._handle_qos_1_publish_packet = self._on_qos1
        handler._handle_qos_2_publish_packet = self._on_qos2
        handler._handle_pingresp_packet = self._on_pingresp
        client.on_message = self._on_qos0
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        self._client, self._handler = client, handler
        ssl_arg: Any = ssl_context(b.tls) if b.tls else False
        version = MQTTv50 if v5 else MQTTv311
        while True:
            try:
                await client.connect(b.host, b.port, ssl=ssl_arg, keepalive=b.keepalive,
                                     version=version)
                break
            except (OSError, asyncio.TimeoutError, gmqtt.mqtt.handler.MQTTConnectError) as exc:
                if isinstance(exc, gmqtt.mqtt.handler.MQTTConnectError) and exc._code in (4, 5, 134, 135):
                    raise NotConnected(f"broker {b.host}:{b.port} refused the login: {exc}",
                                       component_id=self.id) from exc
                delay = self._backoff.next()
                log.warning("[%s] cannot connect to %s:%s (%s); retrying in %.1fs",
                            self.id, b.host, b.port, exc, delay)
                await asyncio.sleep(delay)

    async def stop(self) -> None:
        """Disconnect without unsubscribing: the persistent session keeps collecting."""
        self._stopping = True
        await self._ack_barrier()
        if self._client is not None:
            try:
                await asyncio.wait_for(self._client.disconnect(), 5)
            except (OSError, asyncio.TimeoutError):
                pass

    async def _ack_barrier(self, timeout: float = 2.0) -> None:
        """Wait until the broker has processed every PUBACK sent so far.

        MQTT does not acknowledge a PUBACK, but a broker handles a connection's
        packets in order: when the PINGRESP to a PINGREQ sent after the acks
        arrives, the acks were processed. Without this, a stop right after the
        last acks can close the socket while they still sit unread in the
        broker's buffer (a close with unread data resets the connection), and
        the broker redelivers those messages: duplicates after every restart.
        """
        conn = self._handler.current_connection if self._handler else None
        if conn is None or conn.is_closing() or not self.acked:
            return
        self._pong = asyncio.get_running_loop().create_future()
        conn._send_ping_request()
        try:
            await asyncio.wait_for(self._pong, timeout)
        except asyncio.TimeoutError:
            log.warning("[%s] broker did not answer PINGREQ before stop", self.id)
        finally:
            self._pong = None

    def _on_pingresp(self, cmd: int, packet: bytes) -> None:
        if self._pong is not None and not self._pong.done():
            self._pong.set_result(None)

    def describe_endpoint(self) -> str:
        return f"{self.broker.host}:{self.broker.port}"

    @property
    def ready(self) -> bool:
        return self._connected.is_set() and self._subscribed.is_set()

    async def wait_ready(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._subscribed.wait(), timeout)

    async def update_subscriptions(self, subscriptions: dict[str, int],
                                   timeout: float = 10.0) -> None:
        """Make ``subscriptions`` ({filter: qos}) the filters of the live session.

        Added filters and filters whose QoS changed are subscribed (a SUBSCRIBE
        to an existing filter replaces its QoS), removed ones unsubscribed;
        the connection and session stay. Returns once the broker confirmed
        the new filters (SUBACK); raises :class:`NotConnected` when it refused
        one or did not answer within ``timeout`` seconds. While disconnected,
        the change is recorded and applied on the next connect.
        """
        from gmqtt import Subscription

        old = self.subscriptions
        changed = {f: q for f, q in subscriptions.items() if old.get(f) != q}
        removed = [f for f in old if f not in subscriptions]
        self.subscriptions = dict(subscriptions)
        client = self._client
        if client is None or (not changed and not removed):
            return
        # gmqtt re-subscribes its list on reconnect: keep it equal to ours.
        client._remove_subscriptions(removed + list(changed))
        subs = [Subscription(f, qos=q) for f, q in changed.items()]
        client.subscriptions.extend(subs)
        conn = self._handler.current_connection if self._handler else None
        if not self._connected.is_set() or conn is None or conn.is_closing():
            self._unsubscribe_pending.update(removed)
            return
        if removed:
            client._connection.unsubscribe(removed)
        if not subs:
            return
        mid = client._connection.subscribe(subs)
        waiter = asyncio.get_running_loop().create_future()
        self._suback_waiters[mid] = waiter
        # While the pipeline does not read (a reload), batches pile up and the socket is
        # paused: the SUBACK would wait behind them forever. Read on until it arrives
        # (memory stays bounded by receive-maximum for QoS 1/2).
        self._hold_open = True
        self._resume_reading()
        try:
            codes = await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            raise NotConnected(f"no SUBACK within {timeout:g}s for "
                               f"{', '.join(changed)}", component_id=self.id) from None
        finally:
            self._suback_waiters.pop(mid, None)
            self._hold_open = False
            self._pause_if_full()
        refused = [f for f, code in zip(changed, codes, strict=False) if code >= 128]
        if refused:
            raise NotConnected(f"broker refused subscription(s) {', '.join(refused)} "
                               f"(codes {[c for c in codes if c >= 128]}): check ACLs and filters",
                               component_id=self.id)

    def unsubscribe_on_connect(self, filters: set[str]) -> None:
        """Unsubscribe ``filters`` when connected: a persistent session may still hold
        filters an earlier source of this client id had (a reload replacing the source)."""
        self._unsubscribe_pending.update(filters)

    # -- gmqtt callbacks -------------------------------------------------------

    def _on_connect(self, client: Any, flags: Any, rc: Any, properties: Any) -> None:
        self._backoff.reset()
        self._connected.set()
        if self._unsubscribe_pending:
            # The persistent session still holds filters removed by a reload meanwhile.
            client._connection.unsubscribe(sorted(self._unsubscribe_pending))
            self._unsubscribe_pending.clear()
        if client.subscriptions:
            for sub in client.subscriptions:
                client.resubscribe(sub)
        else:
            from gmqtt import Subscription

            client.subscribe([Subscription(f, qos=q) for f, q in self.subscriptions.items()])
        log.info("[%s] connected to %s:%s, subscribing %d filter(s)", self.id,
                 self.broker.host, self.broker.port, len(self.subscriptions))

    def _on_subscribe(self, client: Any, mid: int, qos: Any, properties: Any) -> None:
        waiter = self._suback_waiters.pop(mid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(tuple(qos))
        refused = [q for q in qos if q >= 128]
        if refused:
            log.error("[%s] broker refused %d subscription(s) (codes %s): check ACLs and filters",
                      self.id, len(refused), refused)
        else:
            if not self._subscribed.is_set():
                log.info("[%s] subscribed: %s", self.id,
                         ", ".join(f"{f} (qos {q})" for f, q in self.subscriptions.items()))
            self._subscribed.set()

    def _on_disconnect(self, client: Any, packet: Any, exc: Any = None) -> None:
        self._connected.clear()
        self._subscribed.clear()
        if not self._stopping:
            delay = self._backoff.next()
            client.reconnect_delay = delay
            log.warning("[%s] disconnected from broker; reconnecting in %.1fs", self.id, delay)

    def _on_qos0(self, client: Any, topic: str, payload: bytes, qos: int, properties: dict) -> None:
        self._add(topic, payload, 0, properties, None)

    def _on_qos1(self, mid: int, payload: bytes, topic: str, properties: dict) -> None:
        self._add(topic, payload, 1, properties, (self._handler.current_connection, mid, 1))

    def _on_qos2(self, mid: int, payload: bytes, topic: str, properties: dict) -> None:
        self._add(topic, payload, 2, properties, (self._handler.current_connection, mid, 2))

    # -- batching ----------------------------------------------------------------

    def _add(self, topic: str, payload: bytes, qos: int, properties: dict,
             ack: tuple[Any, int, int] | None) -> None:
        self._pending.append(Message(topic, payload, qos, bool(properties.get("retain")),
                                     time.time(), properties, source_id=self.id))
        if ack is not None:
            self._pending_acks.append(ack)
        if len(self._pending) >= self.batch_size:
            self._flush()
        elif not self._flush_scheduled:
            # Everything parsed from this socket read arrives before call_soon runs.
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._pending:
            return
        seq = self._acks.add(self._pending_acks)
        self._batches.append((self._pending, seq))
        self.received += len(self._pending)
        self._pending, self._pending_acks = [], []
        self._batch_ready.set()
        self._pause_if_full()

    def _pause_if_full(self) -> None:
        if (len(self._batches) >= self.max_pending and self._paused_transport is None
                and not self._hold_open and self._handler is not None):
            transport = getattr(self._handler.current_connection, "_transport", None)
            if transport is not None:
                transport.pause_reading()
                self._paused_transport = transport

    def _resume_reading(self) -> None:
        if self._paused_transport is not None:
            transport, self._paused_transport = self._paused_transport, None
            if not transport.is_closing():
                transport.resume_reading()

    async def read(self) -> tuple[list[Message], int]:
        while not self._batches:
            self._batch_ready.clear()
            await self._batch_ready.wait()
        batch = self._batches.popleft()
        if self._paused_transport is not None and len(self._batches) < self.max_pending // 2:
            self._resume_reading()
        return batch

    def ack(self, token: int) -> None:
        """Mark batch ``token`` done; send acks for every done batch in arrival order."""
        from gmqtt.mqtt.constants import MQTTCommands
        from gmqtt.mqtt.package import CommandWithMidPacket

        released = self._acks.done(token)
        if not released:
            return
        current = self._handler.current_connection if self._handler else None
        if current is None or current.is_closing():
            self.stale_acks += sum(len(entries) for entries in released)
            return
        build = CommandWithMidPacket.build_package
        proto = current._protocol.proto_ver
        packets: list[bytes] = []
        for entries in released:
            for conn, mid, qos in entries:
                if conn is current:
                    cmd = MQTTCommands.PUBACK if qos == 1 else MQTTCommands.PUBREC
                    packets.append(build(cmd, mid, False, proto_ver=proto))
                else:
                    self.stale_acks += 1
        if packets:
            # One socket write for the whole release, not one per message.
            current.send_package(b"".join(packets))
            self.acked += len(packets)

    @property
    def in_flight(self) -> int:
        return sum(len(v) for v in self._acks.items())
