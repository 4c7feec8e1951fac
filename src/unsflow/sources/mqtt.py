"""MQTT source: subscribes to the UNS broker and delivers batches.

Guarantees:

- QoS 1 and 2 messages are acknowledged (PUBACK / PUBREC) only when the
  engine calls :meth:`MqttSource.ack` for their batch, i.e. after every target
  durably accepted them; acknowledgements go out in the order the messages
  arrived (MQTT 4.6). An ack whose connection has since dropped is not sent:
  the broker redelivers that message on the new connection (at least once).
- Memory is bounded by config, not by the broker's backlog: reading from the
  socket pauses while the messages read and not yet acknowledged (waiting for
  the engine, or in its hands) reach ``max-in-flight`` messages or
  ``max-in-flight-bytes`` payload bytes, and resumes below half of both. The
  broker's window (MQTT 5 ``receive-maximum``, Mosquitto's
  ``max_inflight_messages`` for 3.1.1) is not enough: Mosquitto 2.0.11 sends a
  persistent session's whole backlog once a burst of PUBACKs arrives, and QoS
  0 has no window at all.
- A persistent session (fixed client id, clean start off, session expiry)
  keeps subscriptions and queued messages while the process is down. Stop
  disconnects without unsubscribing, except for shared subscriptions
  (``$share/GROUP/FILTER``): :meth:`MqttSource.leave` first gives this
  member's share back (see there), unless ``leave-shared-on-stop`` is off.
- Reconnects use capped, jittered backoff and re-subscribe every filter.
- :meth:`MqttSource.update_subscriptions` changes the filters on the live
  connection (a config reload): added filters and changed QoS are
  subscribed, removed filters unsubscribed; the session stays.

- A refused login or ACL (CONNACK "bad user name or password", "not
  authorized", "banned") raises :class:`~unsflow.errors.AccessDenied` from
  :meth:`MqttSource.start`: no retry can fix it. A broker that cannot be
  reached is retried with backoff.

Batches are cut per network read: every message parsed from one socket read
joins one batch (up to ``batch_size``), so there is no per-message task or
timer; while the engine has not taken the last batch yet, later reads join
it (up to ``batch_size``), so batches grow when the engine is busy and stay
small (low latency) when it is not. The MQTT protocol is behind one adapter
(:mod:`unsflow.sources._mqtt_client`): deferred acks, pausing the socket,
SUBACK reason codes and the ping barrier come from there. Its default client
(``mqtt-broker.client: asyncio``) decodes a socket read in one pass and hands
it over as columns; the ``gmqtt`` client calls back per message and has its
private hooks checked at start-up.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from collections.abc import Mapping
from itertools import chain, repeat
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Literal, Self

from pydantic import Field

from unsflow.components import Context
from unsflow.config.models import BrokerConfig, ComponentConfig, SecretRef
from unsflow.engine.acks import InOrderAcks
from unsflow.engine.backoff import Backoff
from unsflow.errors import AccessDenied, NotConnected, PermanentError, SecretError
from unsflow.message import NOT_DECODED, Message
from unsflow.sources._mqtt_client import Ack, ClientSettings, MqttClient, make_client
from unsflow.sources.base import Source

if TYPE_CHECKING:
    from unsflow.config.models import PipelineConfig

__all__ = ["MqttSource", "MqttSourceConfig", "ssl_context"]

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


class MqttSourceConfig(ComponentConfig):
    """The UNS broker source. Its keys are the top-level ones of the pipeline config
    (``mqtt-broker``, ``mqtt-broker-credential``, ``subscriptions``, ``batch-size``),
    gathered by :meth:`from_pipeline`; it is not an entry of ``sources``."""

    type: Literal["mqtt"] = Field("mqtt", description="Source type: the UNS MQTT broker.")
    broker: BrokerConfig = Field(default_factory=BrokerConfig,
                                 description="Connection to the broker.")
    credential: SecretRef | None = Field(None, description="Username and password.")
    subscriptions: dict[str, int] = Field(default_factory=dict,
                                          description="Topic filter to subscription QoS.")
    batch_size: int = Field(2000, ge=1, le=100000,
                            description="Most messages in one batch.")
    max_in_flight: int = Field(50000, ge=1, description="Messages read and not yet "
                               "acknowledged before reading from the socket pauses.")
    max_in_flight_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Payload bytes "
                                     "read and not yet acknowledged before reading pauses.")

    @classmethod
    def from_pipeline(cls, config: PipelineConfig) -> Self:
        """The UNS source's config in pipeline config ``config``."""
        return cls(type="mqtt", broker=config.mqtt_broker,
                   credential=config.mqtt_broker_credential,
                   subscriptions={flt: sub.qos for flt, sub in config.subscriptions.items()},
                   batch_size=config.batch_size, max_in_flight=config.max_in_flight,
                   max_in_flight_bytes=config.max_in_flight_bytes)


class MqttSource(Source[MqttSourceConfig]):
    """Subscribes to the config's ``subscriptions`` ({filter: qos}) on its broker."""

    config_class = MqttSourceConfig
    live_subscriptions = True

    def __init__(self, component_id: str, config: MqttSourceConfig, context: Context) -> None:
        super().__init__(component_id, config, context)
        self.subscriptions = dict(config.subscriptions)  # those of the live session
        self.batch_size = config.batch_size
        self.max_in_flight = config.max_in_flight
        self.max_in_flight_bytes = config.max_in_flight_bytes
        self._client: MqttClient | None = None
        self._pending: list[Message] = []
        self._pending_acks: list[Ack] = []
        # Batches not yet taken by the engine: [messages, their acks, payload bytes].
        self._batches: deque[list[Any]] = deque()
        self._batch_ready = asyncio.Event()
        self._flush_scheduled = False
        # Taken and not yet acknowledged: per token, the acks, the messages and their bytes.
        self._acks: InOrderAcks[tuple[list[Ack], int, int]] = InOrderAcks()
        self._unacked = 0
        # Read from the socket and not yet acknowledged (pending or taken): the bound.
        self._held = self._held_bytes = 0
        self._backoff = Backoff(config.broker.reconnect_min, config.broker.reconnect_max)
        self._connected = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._stopping = False
        # Filters removed while disconnected: unsubscribed on the next connect.
        self._unsubscribe_pending: set[str] = set()
        self._hold_open = False  # waiting for a SUBACK: do not pause reading
        self.received = 0
        self.acked = 0
        self.stale_acks = 0

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        b = self.config.broker
        ref = self.config.credential
        username = password = None
        if ref is not None:
            cred = await self.context.resolve_secret(ref)
            if cred.username is None:
                raise SecretError(f"secret {ref.secret_name!r}: no username")
            username, password = cred.username, cred.password
        settings = ClientSettings(
            host=b.host or "localhost", port=b.port or (8883 if b.tls else 1883),
            client_id=b.client_id,
            protocol_version=b.protocol_version, persistent=b.persistent,
            session_expiry=b.session_expiry, receive_maximum=b.receive_maximum,
            keepalive=b.keepalive, tls=ssl_context(b.tls) if b.tls else None,
            username=username, password=password)
        client = make_client(b.client, settings, self, component_id=self.id)
        client.max_batch = self.batch_size
        self._client = client
        while True:
            try:
                await client.connect()
                return
            except NotConnected as exc:  # AccessDenied and other refusals for good propagate
                delay = self._backoff.next()
                log.warning("%s; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)

    async def stop(self) -> None:
        """Disconnect without unsubscribing: the persistent session keeps collecting."""
        self._stopping = True
        await self._ack_barrier()
        if self._client is not None:
            await self._client.disconnect(5)

    async def _ack_barrier(self, timeout: float = 2.0) -> None:
        """Wait until the broker has processed every PUBACK sent so far.

        MQTT does not acknowledge a PUBACK, but a broker handles a connection's
        packets in order: when the PINGRESP to a PINGREQ sent after the acks
        arrives, the acks were processed. Without this, a stop right after the
        last acks can close the socket while they still sit unread in the
        broker's buffer (a close with unread data resets the connection), and
        the broker redelivers those messages: duplicates after every restart.
        """
        client = self._client
        if client is None or not client.connected or not self.acked:
            return
        if not await client.ping(timeout):
            log.warning("[%s] broker did not answer PINGREQ before stop", self.id)

    async def leave(self, timeout: float) -> None:
        """Give this member's share of its ``$share`` groups back before a stop.

        Mosquitto deals a shared subscription's messages to every member whose
        session holds it, connected or not: a member that disconnects keeping
        its ``$share`` filters is dealt its share until its session expires,
        and those messages never reach the other members (measured:
        docs/deploy.md). So a stopping member unsubscribes its shared filters
        (UNSUBACK awaited), then goes on reading: what the broker had already
        sent or queued for this session still arrives and is delivered and
        acknowledged as usual. It is done when nothing is in flight and a
        PINGREQ round trip brought nothing new (a broker answers a
        connection's packets in order, so messages it released after our
        last acks arrive before the PINGRESP). A restart subscribes again.

        Reading must go on while this runs (the pipeline calls it before it
        stops its readers). Returns after ``timeout`` seconds at most; nothing
        happens without shared filters or with ``leave-shared-on-stop`` off.
        """
        shared = [f for f in self.subscriptions if f.startswith("$share/")]
        client = self._client
        if not shared or client is None or not self.config.broker.leave_shared_on_stop:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # A reconnect meanwhile must not subscribe them again.
        for flt in shared:
            del self.subscriptions[flt]
        if not self._connected.is_set() or not client.connected:
            log.warning("[%s] stopping while disconnected: shared filter(s) %s stay in the "
                        "session", self.id, ", ".join(shared))
            return
        try:
            await asyncio.wait_for(client.unsubscribe(shared), max(0.0, deadline - loop.time()))
        except (TimeoutError, NotConnected):
            log.warning("[%s] no UNSUBACK for %s before the stop deadline", self.id,
                        ", ".join(shared))
            return
        log.info("[%s] left shared subscription(s) %s; taking what is still in flight",
                 self.id, ", ".join(shared))
        taken = self.received
        while loop.time() < deadline:
            if self.in_flight or self._pending or self._batches:
                await asyncio.sleep(0.02)
                continue
            before = self.received
            if not await client.ping(max(0.0, deadline - loop.time())):
                break
            if self.received == before and not self._pending and not self.in_flight:
                log.info("[%s] shared share handed back: %d message(s) taken after "
                         "unsubscribing", self.id, self.received - taken)
                return
        log.warning("[%s] stop deadline reached with %d message(s) in flight: they stay in "
                    "this client id's session", self.id, self.in_flight)

    def describe_endpoint(self) -> str:
        return f"{self.config.broker.host}:{self.config.broker.port}"

    @property
    def ready(self) -> bool:
        return self._connected.is_set() and self._subscribed.is_set()

    @property
    def connection_number(self) -> int:
        """How many connections were accepted so far (a reload that keeps the connection
        keeps this number)."""
        return self._client.connection_number if self._client is not None else 0

    async def wait_ready(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._subscribed.wait(), timeout)

    def keeps(self, config: MqttSourceConfig) -> bool:
        """The same broker and login: the connection and session stay; subscriptions and
        batch size change live (:meth:`reconfigure`)."""
        live = {"subscriptions": self.config.subscriptions, "batch_size": self.config.batch_size,
                "max_in_flight": self.config.max_in_flight,
                "max_in_flight_bytes": self.config.max_in_flight_bytes}
        return config.model_copy(update=live) == self.config

    async def reconfigure(self, config: MqttSourceConfig, timeout: float) -> None:
        await self.update_subscriptions(config.subscriptions, timeout)
        self.batch_size = config.batch_size
        self.max_in_flight = config.max_in_flight
        self.max_in_flight_bytes = config.max_in_flight_bytes
        if self._client is not None:
            self._client.max_batch = config.batch_size
        self.config = config
        self._pause_if_full()
        self._resume_if_room()

    async def update_subscriptions(self, subscriptions: Mapping[str, int],
                                   timeout: float = 10.0) -> None:
        """Make ``subscriptions`` ({filter: qos}) the filters of the live session.

        Added filters and filters whose QoS changed are subscribed (a SUBSCRIBE
        to an existing filter replaces its QoS), removed ones unsubscribed;
        the connection and session stay. Returns once the broker confirmed
        the new filters (SUBACK) and the removal (UNSUBACK): nothing published
        to a removed filter after that arrives. Raises :class:`NotConnected`
        when it did not answer within ``timeout`` seconds and
        :class:`~unsflow.errors.PermanentError` (``AccessDenied`` for "not
        authorized") when it refused one. While disconnected, the change is
        recorded and applied on the next connect.
        """
        old = self.subscriptions
        changed = {f: q for f, q in subscriptions.items() if old.get(f) != q}
        removed = [f for f in old if f not in subscriptions]
        self.subscriptions = dict(subscriptions)
        client = self._client
        if client is None or (not changed and not removed):
            return
        if not self._connected.is_set() or not client.connected:
            self._unsubscribe_pending.update(removed)
            return
        unsubscribed = client.unsubscribe(removed) if removed else None
        subscribed = client.subscribe(changed) if changed else None
        # While the pipeline does not read (a reload), batches pile up and the socket is
        # paused: the answers would wait behind them forever. Read on until they arrive
        # (memory stays bounded by receive-maximum for QoS 1/2).
        self._hold_open = True
        client.resume_reading()
        try:
            if unsubscribed is not None:
                await asyncio.wait_for(unsubscribed, timeout)
            codes = await asyncio.wait_for(subscribed, timeout) if subscribed else ()
        except TimeoutError:
            what = ", ".join([*changed, *(f"-{f}" for f in removed)])
            raise NotConnected(f"no SUBACK/UNSUBACK within {timeout:g}s for {what}",
                               component_id=self.id) from None
        finally:
            self._hold_open = False
            self._pause_if_full()
        self._check_granted(changed, codes)

    def _check_granted(self, filters: dict[str, int], codes: tuple[int, ...]) -> None:
        refused = {f: code for f, code in zip(filters, codes, strict=False) if code >= 0x80}
        if refused:
            raise suback_error(refused, self.id)

    def forget_on_connect(self, filters: set[str]) -> None:
        """Unsubscribe ``filters`` when connected: a persistent session may still hold
        filters an earlier source of this client id had (a reload replacing the source)."""
        self._unsubscribe_pending.update(filters)

    # -- client events (MqttEvents) ---------------------------------------------

    def mqtt_connected(self, session_present: bool) -> None:
        client = self._client
        assert client is not None
        self._backoff.reset()
        self._connected.set()
        if self._unsubscribe_pending:
            # The persistent session still holds filters removed by a reload meanwhile.
            client.unsubscribe(sorted(self._unsubscribe_pending))
            self._unsubscribe_pending.clear()
        filters = dict(self.subscriptions)
        if filters:
            client.subscribe(filters).add_done_callback(
                lambda fut: self._subscribed_on_connect(filters, fut))
        log.info("[%s] connected to %s, subscribing %d filter(s)", self.id,
                 client.settings.address, len(filters))

    def _subscribed_on_connect(self, filters: dict[str, int],
                               fut: asyncio.Future[tuple[int, ...]]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return  # the connection dropped first: the next connect subscribes again
        try:
            self._check_granted(filters, fut.result())
        except PermanentError as exc:  # refused: not ready (/readyz says so), and said loudly
            log.error("[%s] %s", self.id, exc)
            return
        if not self._subscribed.is_set():
            log.info("[%s] subscribed: %s", self.id,
                     ", ".join(f"{f} (qos {q})" for f, q in filters.items()))
        self._subscribed.set()

    def mqtt_disconnected(self) -> None:
        self._connected.clear()
        self._subscribed.clear()
        if not self._stopping and self._client is not None:
            delay = self._backoff.next()
            self._client.reconnect_delay = delay
            log.warning("[%s] disconnected from broker; reconnecting in %.1fs", self.id, delay)

    def mqtt_message(self, topic: str, payload: bytes, qos: int, properties: dict[str, Any],
                     ack: Ack | None) -> None:
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

    def mqtt_batch(self, inbound: Any) -> None:
        """Messages of one socket read as columns (the asyncio client)."""
        topics, flags, props = inbound.topics, inbound.flags, inbound.properties
        n = len(topics)
        first = flags[0]
        if flags.count(first) == n:  # the usual case: one QoS, no retained messages
            qos: Any = repeat(first >> 1 & 3)
            retain: Any = repeat(bool(first & 1))
        else:
            qos = [f >> 1 & 3 for f in flags]
            retain = [bool(f & 1) for f in flags]
        if props.count(None) == n:
            properties: Any = (repeat(_FLAG_PROPERTIES[first & 9]) if flags.count(first) == n
                               else [_FLAG_PROPERTIES[f & 9] for f in flags])
        else:
            properties = [_FLAG_PROPERTIES[f & 9] if p is None
                          else {**p, "dup": f >> 3, "retain": f & 1}
                          for f, p in zip(flags, props)]
        payloads = inbound.payloads
        messages = list(map(Message, topics, payloads, qos, retain, repeat(time.time()),
                            properties, repeat(NOT_DECODED), repeat(self.id)))
        self._take(messages, [] if inbound.ack is None else [inbound.ack],
                   sum(map(len, payloads)))

    # -- batching ----------------------------------------------------------------

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._pending:
            return
        messages, acks = self._pending, self._pending_acks
        self._pending, self._pending_acks = [], []
        self._take(messages, acks, sum(map(len, map(_payload, messages))))

    def _take(self, messages: list[Message], acks: list[Ack], size: int) -> None:
        """Queue a read's messages (``size`` payload bytes) for the engine: with the batch it
        has not taken yet when they fit, else as a new batch."""
        self.received += len(messages)
        self._held += len(messages)
        self._held_bytes += size
        batches = self._batches
        if batches:
            tail = batches[-1]
            if len(tail[0]) + len(messages) <= self.batch_size:
                tail[0].extend(messages)
                tail[1].extend(acks)
                tail[2] += size
                self._pause_if_full()
                return
        batches.append([messages, acks, size])
        self._batch_ready.set()
        self._pause_if_full()

    def _pause_if_full(self) -> None:
        client = self._client
        if ((self._held >= self.max_in_flight or self._held_bytes >= self.max_in_flight_bytes)
                and client is not None and not client.reading_paused and not self._hold_open):
            client.pause_reading()

    def _resume_if_room(self) -> None:
        client = self._client
        if (client is not None and client.reading_paused
                and self._held < self.max_in_flight // 2
                and self._held_bytes < self.max_in_flight_bytes // 2):
            client.resume_reading()

    async def read(self) -> tuple[list[Message], int]:
        while not self._batches:
            self._batch_ready.clear()
            await self._batch_ready.wait()
        messages, acks, size = self._batches.popleft()
        token = self._acks.add((acks, len(messages), size))
        self._unacked += len(messages)
        return messages, token

    def ack(self, token: int) -> None:
        """Mark batch ``token`` done; send acks for every done batch in arrival order."""
        released = self._acks.done(token)
        if not released:
            return
        count = sum(n for _, n, _ in released)
        self._unacked -= count
        self._held -= count
        self._held_bytes -= sum(size for _, _, size in released)
        if self._client is None:
            return
        sent, stale = self._client.send_acks(chain.from_iterable(acks for acks, _, _ in released))
        self.acked += sent
        self.stale_acks += stale
        self._resume_if_room()

    @property
    def in_flight(self) -> int:
        """Messages handed to the engine and not yet acknowledged."""
        return self._unacked


_payload = attrgetter("payload")

# The properties of a message without MQTT 5 properties, by its DUP and RETAIN bits: shared
# dicts (read only), not one per message.
_FLAG_PROPERTIES = {bits: {"dup": bits >> 3, "retain": bits & 1} for bits in (0, 1, 8, 9)}


def suback_error(refused: dict[str, int], component_id: str) -> Exception:
    """The error for filters a SUBACK refused ({filter: reason code})."""
    codes = sorted(set(refused.values()))
    text = (f"broker refused subscription(s) {', '.join(refused)} "
            f"(codes {[hex(c) for c in codes]}): check ACLs and filters")
    if 0x87 in codes:  # not authorized
        return AccessDenied(text, component_id=component_id)
    return PermanentError(text, component_id=component_id)
