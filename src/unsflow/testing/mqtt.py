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

Errors (:mod:`unsflow.errors`): a broker that cannot be reached raises
:class:`~unsflow.errors.NotConnected`; one that refuses the login raises
:class:`~unsflow.errors.AccessDenied` naming the MQTT reason (Mosquitto:
"Not authorized"); a deadline that passes raises :class:`TimeoutError` saying
how many messages were missing; a broker that refuses messages or a
subscription with an MQTT 5 reason code raises
:class:`~unsflow.errors.PermanentError` naming it.

:func:`publish` is the project's one paho publisher (:mod:`unsflow._paho`),
which the simulator and the dead-letter replay use too.

Numbered payloads are plain JSON:

>>> numbered_payload(7, ts_ms=1700000000000)
b'{"seq":7,"value":23.221,"ts":1700000000000}'
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

from unsflow._paho import PahoConnection, publish
from unsflow.errors import AccessDenied, PermanentError

__all__ = [
    "Collector",
    "end_session",
    "numbered_payload",
    "publish",
    "publish_numbered",
    "subscribe_collect",
]


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
        self._conn: PahoConnection | None = None
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
        conn = PahoConnection(self.host, self.port, role="testing-sub", **self._options)
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
                error = AccessDenied if failed[0].value == 0x87 else PermanentError
                raise error(
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
