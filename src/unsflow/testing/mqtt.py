"""What you need to test your own unsflow pipelines.

MQTT helpers
------------
Publish to and collect from a real broker, losing nothing on the way. They use
paho-mqtt (``pip install 'unsflow[dev]'``), imported only when called.

- :func:`publish` sends ``(topic, payload)`` pairs and returns only when the
  broker has acknowledged every one (PUBACK for QoS 1, PUBCOMP for QoS 2).
  ``mosquitto_pub -l`` at QoS 1 may exit before its last acknowledgements, so
  a test that publishes with it measures the publisher, not the pipeline.
- :func:`publish_numbered` publishes ``count`` JSON messages numbered by
  ``seq``, so that a test can check that exactly ``0..count-1`` arrived.
- :class:`Collector` subscribes, returns from ``start()`` (or ``with``) only
  after the broker confirmed the subscription (SUBACK), and collects what
  arrives until ``wait()`` has seen enough; ``persistent=True`` keeps its
  session (and what is queued for it) across a broker restart.
- :func:`subscribe_collect` is the one-call form of :class:`Collector`.

Example, against a broker on localhost (``scripts/services.sh up mosquitto``
starts one)::

    from unsflow.testing import Collector, publish_numbered

    with Collector("127.0.0.1", 1883, "plant1/line1/#") as out:
        publish_numbered("127.0.0.1", 1883, "plant1/line1/press", 500)
        messages = out.wait(500, timeout=10)
    assert {json.loads(p)["seq"] for _, p in messages} == set(range(500))

Over TLS with a user name and password::

    publish("127.0.0.1", 8883, [("a/b", b"1")], username="unsflow",
            password="...", tls_ca=".services/ca/ca.crt")

Errors: a broker that cannot be reached raises :class:`ConnectionError`; one
that refuses the login raises :class:`ConnectionRefusedError` naming the MQTT
reason (Mosquitto: "Not authorized"); a deadline that passes raises
:class:`TimeoutError` saying how many messages were missing; a broker that
refuses messages or a subscription with an MQTT 5 reason code raises
:class:`RuntimeError` naming it.

Numbered payloads are plain JSON:

>>> numbered_payload(7, ts_ms=1700000000000)
b'{"seq":7,"value":23.221,"ts":1700000000000}'
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from types import ModuleType, TracebackType
from typing import Any, Self

from unsflow.errors import MissingDependency

__all__ = [
    "Collector",
    "end_session",
    "numbered_payload",
    "publish",
    "publish_numbered",
    "subscribe_collect",
]

# ---------------------------------------------------------------- MQTT helpers

_KEEPALIVE = 60
_PERSISTENT_SESSION_EXPIRY = 3600  # seconds an MQTT 5 broker keeps a persistent session


def _paho() -> ModuleType:
    try:
        import paho.mqtt.client as mqtt
    except ImportError as exc:
        raise MissingDependency("paho.mqtt", "dev") from exc
    return mqtt


def _protocol(mqtt: ModuleType, protocol: int) -> int:
    versions = {5: mqtt.MQTTv5, 4: mqtt.MQTTv311, 311: mqtt.MQTTv311, 3: mqtt.MQTTv31}
    if protocol not in versions:
        raise ValueError(f"protocol: expected 5, 4 (3.1.1) or 3 (3.1), found {protocol!r}")
    return int(versions[protocol])


class _Connection:
    """One paho client and its connection.

    ``open()`` returns after CONNACK and raises when the broker is unreachable
    or refuses the login. Threaded (``open(threaded=True)``), paho's network
    loop runs in its own thread and reconnects by itself; otherwise the caller
    drives it with ``pump()``: for a publisher about twice as fast here,
    because no thread hand-off happens per message.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        role: str,
        username: str | None,
        password: str | None,
        tls_ca: str | None,
        tls_cert: str | None,
        tls_key: str | None,
        client_id: str | None,
        protocol: int,
        persistent: bool = False,
    ) -> None:
        self.mqtt = _paho()
        self.host = host
        self.port = port
        self.address = f"{host}:{port}"
        version = _protocol(self.mqtt, protocol)
        self._connect_properties: Any = None
        # paho's default: clean start on the first connect only.
        self._clean_start: Any = self.mqtt.MQTT_CLEAN_START_FIRST_ONLY
        if version == self.mqtt.MQTTv5:
            clean_session = None  # MQTT 5 has clean start and session expiry instead
            if persistent:
                from paho.mqtt.packettypes import PacketTypes
                from paho.mqtt.properties import Properties

                self._connect_properties = Properties(PacketTypes.CONNECT)
                self._connect_properties.SessionExpiryInterval = _PERSISTENT_SESSION_EXPIRY
                # Mosquitto 2.0.11 does not restore a session begun with clean
                # start 1 from its persistence file after a restart (measured;
                # clean start 0 is restored), so never ask for clean start here.
                self._clean_start = False
        else:
            clean_session = not persistent
        self.client = self.mqtt.Client(
            self.mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"unsflow-testing-{role}-{uuid.uuid4().hex[:8]}",
            protocol=version,
            clean_session=clean_session,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        if tls_ca or tls_cert:
            self.client.tls_set(ca_certs=tls_ca, certfile=tls_cert, keyfile=tls_key)
        self.server_receive_maximum = 65535  # MQTT 5 default when CONNACK names none
        self.last_disconnect = ""
        # Called on the loop thread after each later CONNACK with session_present.
        self.on_reconnect: Callable[[bool], None] | None = None
        self._threaded = False
        self._connack = threading.Event()
        self._refused = ""
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self._refused = f"{reason} (reason code {reason.value})"
        elif props is not None and hasattr(props, "ReceiveMaximum"):
            self.server_receive_maximum = int(props.ReceiveMaximum)
        if self._connack.is_set() and not reason.is_failure and self.on_reconnect is not None:
            self.on_reconnect(bool(flags.session_present))
        self._connack.set()

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self.last_disconnect = str(reason)
        self._connack.set()  # a broker that hangs up before CONNACK

    def open(self, timeout: float, *, threaded: bool) -> None:
        deadline = time.monotonic() + timeout
        try:
            self.client.connect(
                self.host,
                self.port,
                keepalive=_KEEPALIVE,
                clean_start=self._clean_start,
                properties=self._connect_properties,
            )
        except (OSError, ValueError) as exc:
            raise ConnectionError(f"cannot connect to MQTT broker {self.address}: {exc}") from exc
        self._threaded = threaded
        if threaded:
            # Back after a broker restart within seconds (paho's default waits up to 2 min).
            self.client.reconnect_delay_set(min_delay=1, max_delay=2)
            self.client.loop_start()
            self._connack.wait(timeout)
        else:
            while not self._connack.is_set() and time.monotonic() < deadline:
                if self.client.loop(min(0.1, max(deadline - time.monotonic(), 0.0))):
                    break
        if self._refused or not self.client.is_connected():
            self.close()
            if self._refused:
                raise ConnectionRefusedError(
                    f"MQTT broker {self.address} refused the connection: {self._refused}"
                )
            if not self._connack.is_set():
                raise TimeoutError(f"no CONNACK from MQTT broker {self.address} within {timeout} s")
            raise ConnectionError(
                f"MQTT broker {self.address} closed the connection: {self.last_disconnect}"
            )

    def pump(self, timeout: float) -> None:
        """Unthreaded: send and receive for up to ``timeout`` s; reconnect if the link broke.

        paho resends unacknowledged QoS 1/2 messages after a reconnect, so a
        publisher stays at-least-once across a broker restart.
        """
        if self.client.loop(timeout) == self.mqtt.MQTT_ERR_SUCCESS:
            return
        time.sleep(min(timeout, 0.2))
        try:
            self.client.reconnect()
        except OSError as exc:
            self.last_disconnect = f"{self.last_disconnect or 'connection lost'}; reconnect: {exc}"

    def close(self) -> None:
        self.client.disconnect()
        if self._threaded:
            self.client.loop_stop()


def publish(
    host: str,
    port: int,
    messages: Iterable[tuple[str, bytes]],
    qos: int = 1,
    *,
    username: str | None = None,
    password: str | None = None,
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    client_id: str | None = None,
    protocol: int = 5,
    timeout: float = 60.0,
    window: int = 1000,
) -> int:
    """Publish every ``(topic, payload)`` and wait until the broker acknowledged all.

    At most ``window`` messages are unacknowledged at a time (fewer if an MQTT 5
    broker announces a smaller receive-maximum), so ``messages`` may be a long
    generator. Returns the number acknowledged, which is the number given; at
    QoS 0 there is no acknowledgement and it counts messages written to the
    socket. ``timeout`` covers the whole call, connecting included. A broken
    connection is re-established and the unacknowledged messages sent again
    (at-least-once) until ``timeout``.

    Raises :class:`TimeoutError` naming how many were not acknowledged in time,
    :class:`RuntimeError` when an MQTT 5 broker refused some (a PUBACK reason
    code of 0x80 or more), and :class:`ConnectionError` /
    :class:`ConnectionRefusedError` when it cannot connect.
    """
    if qos not in (0, 1, 2):
        raise ValueError(f"qos: expected 0, 1 or 2, found {qos!r}")
    deadline = time.monotonic() + timeout
    conn = _Connection(
        host, port, role="pub", username=username, password=password, tls_ca=tls_ca,
        tls_cert=tls_cert, tls_key=tls_key, client_id=client_id, protocol=protocol,
    )  # fmt: skip
    acked = 0
    refused: list[str] = []

    def on_publish(client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        nonlocal acked
        if reason is not None and reason.is_failure:
            refused.append(f"{reason} (reason code {reason.value})")
        else:
            acked += 1

    conn.client.on_publish = on_publish
    window = max(1, window)
    conn.client.max_inflight_messages_set(window)  # paho allows this only before connecting
    conn.open(max(deadline - time.monotonic(), 0.0), threaded=False)
    # paho would queue without bound; at most `window` messages are between
    # publish() and their acknowledgement, and no more than an MQTT 5 broker's
    # receive-maximum (it disconnects a client that sends more).
    window = min(window, conn.server_receive_maximum)
    pending = iter(messages)
    exhausted = False
    sent = 0
    try:
        while True:
            while not exhausted and sent - acked - len(refused) < window:
                item = next(pending, None)
                if item is None:
                    exhausted = True
                    break
                conn.client.publish(item[0], item[1], qos=qos)
                sent += 1
            if exhausted and acked + len(refused) >= sent:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                lost = sent - acked - len(refused)
                stage = "were" if exhausted else "published so far were"
                why = f"; last disconnect: {conn.last_disconnect}" if conn.last_disconnect else ""
                raise TimeoutError(
                    f"{lost} of {sent} messages {stage} not acknowledged by MQTT broker "
                    f"{conn.address} within {timeout} s ({acked} acknowledged){why}"
                )
            conn.pump(min(left, 0.1))
    finally:
        conn.close()
    if refused:
        raise RuntimeError(
            f"MQTT broker {conn.address} refused {len(refused)} of {sent} messages "
            f"(first: {refused[0]}); {acked} acknowledged"
        )
    return acked


def end_session(host: str, port: int, client_id: str, *, timeout: float = 10.0,
                username: str | None = None, password: str | None = None) -> bool:
    """Delete the broker's session of ``client_id`` (and every message queued for it);
    returns whether there was one. A persistent session subscribed to ``#`` that nobody
    resumes makes the broker queue every message published: end it when done.
    (:func:`unsflow.engine.session.end_mqtt_session`, which ``unsflow session end`` uses.)
    """
    from unsflow.engine.session import end_mqtt_session

    return end_mqtt_session(host, port, client_id, username=username, password=password,
                            timeout=timeout)


def numbered_payload(seq: int, ts_ms: int | None = None) -> bytes:
    """The default payload of :func:`publish_numbered`: ``{"seq", "value", "ts"}`` as JSON.

    ``value`` is a float that depends only on ``seq``; ``ts`` is epoch
    milliseconds (now, unless given).
    """
    value = round(20.0 + 5.0 * math.sin(seq / 10.0), 3)
    ts = int(time.time() * 1000) if ts_ms is None else ts_ms
    return json.dumps({"seq": seq, "value": value, "ts": ts}, separators=(",", ":")).encode()


def publish_numbered(
    host: str,
    port: int,
    topic: str,
    count: int,
    qos: int = 1,
    *,
    start: int = 0,
    make_payload: Callable[[int], bytes] | None = None,
    **kw: Any,
) -> int:
    """Publish ``count`` messages to ``topic`` with ``seq`` from ``start`` to ``start+count-1``.

    Payloads are :func:`numbered_payload` unless ``make_payload(seq)`` is
    given. Keyword arguments go to :func:`publish`; so do its guarantees:
    returns once every message is acknowledged.
    """
    make = make_payload or numbered_payload
    messages = ((topic, make(seq)) for seq in range(start, start + count))
    return publish(host, port, messages, qos, **kw)


class Collector:
    """Subscribes to ``topic_filter`` and keeps every ``(topic, payload)`` that arrives.

    ``start()`` (or entering ``with``) returns only once the broker has
    confirmed the subscription, so what is published after it is collected.
    ``wait(count)`` blocks until at least ``count`` messages arrived and
    returns all of them so far, in arrival order; duplicates (QoS 1 is
    at-least-once) are kept so a test can see them.

    A lost connection is re-established in the background. With
    ``persistent=True`` the session outlives it (MQTT 5 session expiry of an
    hour, or clean session off in 3.1.1), so the broker keeps the subscription
    and queues what arrives meanwhile: that is how a collector survives a
    broker restart. Otherwise messages published while it is disconnected are
    not collected.

    Raises like :func:`publish` when it cannot connect, and
    :class:`RuntimeError` when the broker refuses the subscription.
    """

    def __init__(
        self,
        host: str,
        port: int,
        topic_filter: str,
        qos: int = 1,
        *,
        username: str | None = None,
        password: str | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        client_id: str | None = None,
        protocol: int = 5,
        persistent: bool = False,
        connect_timeout: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self.topic_filter = topic_filter
        self.qos = qos
        self._options: dict[str, Any] = {
            "username": username, "password": password, "tls_ca": tls_ca,
            "tls_cert": tls_cert, "tls_key": tls_key, "client_id": client_id,
            "protocol": protocol, "persistent": persistent,
        }  # fmt: skip
        self.connect_timeout = connect_timeout
        self._conn: _Connection | None = None
        self._messages: list[tuple[str, bytes]] = []
        self._distinct: set[tuple[str, bytes]] = set()
        self._arrived = threading.Condition()

    @property
    def messages(self) -> list[tuple[str, bytes]]:
        """A copy of what has arrived so far."""
        with self._arrived:
            return list(self._messages)

    def start(self) -> Self:
        """Connect and subscribe; return after SUBACK."""
        if self._conn is not None:
            raise RuntimeError("Collector already started")
        conn = _Connection(self.host, self.port, role="sub", **self._options)
        subacked = threading.Event()
        granted: list[Any] = []

        def on_subscribe(client: Any, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
            granted.extend(reasons)
            subacked.set()

        def on_reconnect(session_present: bool) -> None:
            if not session_present:  # a new session has no subscription
                conn.client.subscribe(self.topic_filter, qos=self.qos)

        conn.client.on_subscribe = on_subscribe
        conn.client.on_message = self._on_message
        conn.on_reconnect = on_reconnect
        conn.open(self.connect_timeout, threaded=True)
        self._conn = conn
        try:
            conn.client.subscribe(self.topic_filter, qos=self.qos)
            if not subacked.wait(self.connect_timeout):
                raise TimeoutError(
                    f"no SUBACK for {self.topic_filter!r} from MQTT broker {conn.address} "
                    f"within {self.connect_timeout} s"
                )
            failed = [r for r in granted if r.is_failure]
            if failed:
                raise RuntimeError(
                    f"MQTT broker {conn.address} refused the subscription to "
                    f"{self.topic_filter!r}: {failed[0]} (reason code {failed[0].value})"
                )
        except BaseException:
            self.stop()
            raise
        return self

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self._arrived:
            item = (message.topic, bytes(message.payload))
            self._messages.append(item)
            self._distinct.add(item)
            self._arrived.notify_all()

    def wait(
        self, count: int, timeout: float = 30.0, *, distinct: bool = False
    ) -> list[tuple[str, bytes]]:
        """Block until ``count`` messages arrived; return all received so far.

        With ``distinct=True``, count different ``(topic, payload)`` pairs, so
        that redeliveries (QoS 1 after a reconnect) do not count twice. Raises
        :class:`TimeoutError` saying how many arrived when ``timeout`` seconds
        pass first.
        """
        seen = self._distinct if distinct else self._messages
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(seen) >= count, timeout):
                what = "distinct messages" if distinct else "messages"
                raise TimeoutError(
                    f"{len(seen)} of {count} {what} arrived on "
                    f"{self.topic_filter!r} at {self.host}:{self.port} within {timeout} s"
                )
            return list(self._messages)

    def stop(self) -> None:
        """Disconnect. The messages collected stay readable."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def subscribe_collect(
    host: str,
    port: int,
    topic_filter: str,
    count: int,
    timeout: float = 30.0,
    qos: int = 1,
    *,
    after_subscribe: Callable[[], object] | None = None,
    **kw: Any,
) -> list[tuple[str, bytes]]:
    """Subscribe, call ``after_subscribe()`` once subscribed, and return ``count`` messages.

    ``after_subscribe`` is where the messages get published (it runs after
    SUBACK, so none is missed); without it, this collects retained messages or
    what others publish. Keyword arguments go to :class:`Collector`. Returns
    every message received by the time ``count`` arrived; raises
    :class:`TimeoutError` when fewer arrive within ``timeout`` seconds.
    """
    with Collector(host, port, topic_filter, qos, **kw) as collector:
        if after_subscribe is not None:
            after_subscribe()
        return collector.wait(count, timeout)
