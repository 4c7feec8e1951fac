"""The one paho-mqtt publisher: publishing that loses nothing, for the simulator, the
dead-letter replay and the :mod:`unsflow.testing` helpers.

- :class:`PahoConnection`: one paho client and its connection. ``open()``
  returns after CONNACK. Threaded, paho's network loop runs in its own thread
  and reconnects by itself; otherwise the caller drives it with ``pump()``,
  about twice as fast here because no thread hand-off happens per message.
- :class:`Publisher`: one unthreaded connection that publishes and counts
  acknowledgements. ``publish`` hands a message to paho and, while
  ``window`` messages are unacknowledged (never more than an MQTT 5 broker's
  receive-maximum: it disconnects a client that sends more), pumps the socket
  until one is; ``flush`` returns once the broker acknowledged everything
  (PUBACK for QoS 1, PUBCOMP for QoS 2). A broken connection is re-established
  and paho sends the unacknowledged messages again (at least once).
- :func:`publish`: every ``(topic, payload)`` of an iterable, acknowledged,
  within one deadline.

paho's errors do not escape: a broker that cannot be reached raises
:class:`~unsflow.errors.NotConnected`; one that refuses the login,
:class:`~unsflow.errors.AccessDenied`; one that refuses the connection for
another reason or refuses messages (an MQTT 5 reason code of 0x80 or more),
:class:`~unsflow.errors.PermanentError`; a deadline that passes,
:class:`TimeoutError` saying how many messages were not acknowledged.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

from unsflow._deps import require
from unsflow.errors import AccessDenied, NotConnected, PermanentError

__all__ = ["PahoConnection", "Publisher", "paho", "publish"]

KEEPALIVE = 60
PERSISTENT_SESSION_EXPIRY = 3600  # seconds an MQTT 5 broker keeps a persistent session
# MQTT 5 CONNACK reasons that say "not you" (3.1.1 codes 4 and 5 arrive as these).
_LOGIN_REFUSED = {0x86, 0x87, 0x8A, 0x8C}


def paho() -> ModuleType:
    """``paho.mqtt.client``; :class:`MissingDependency` when it is not installed."""
    return require("paho.mqtt.client", "dev", "paho.mqtt")


def _protocol(mqtt: ModuleType, protocol: int) -> int:
    versions = {5: mqtt.MQTTv5, 4: mqtt.MQTTv311, 311: mqtt.MQTTv311, 3: mqtt.MQTTv31}
    if protocol not in versions:
        raise ValueError(f"protocol: expected 5, 4 (3.1.1) or 3 (3.1), found {protocol!r}")
    return int(versions[protocol])


class PahoConnection:
    """One paho client and its connection (module docstring)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        role: str = "pub",
        username: str | None = None,
        password: str | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        client_id: str | None = None,
        protocol: int = 5,
        persistent: bool = False,
        end_session: bool = False,
        component_id: str = "",
    ) -> None:
        self.mqtt = paho()
        self.component_id = component_id  # names the user in errors: "[simulator] ..."
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
                self._connect_properties.SessionExpiryInterval = PERSISTENT_SESSION_EXPIRY
                # Mosquitto 2.0.11 does not restore a session begun with clean
                # start 1 from its persistence file after a restart (measured;
                # clean start 0 is restored), so never ask for clean start here.
                self._clean_start = False
            if end_session:
                # Resume the session (the CONNACK says whether there was one), expiring
                # it at the disconnect: the broker deletes it and what it queued.
                from paho.mqtt.packettypes import PacketTypes
                from paho.mqtt.properties import Properties

                self._connect_properties = Properties(PacketTypes.CONNECT)
                self._connect_properties.SessionExpiryInterval = 0
                self._clean_start = False
        else:
            clean_session = not persistent
        self.client = self.mqtt.Client(
            self.mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"unsflow-{role}-{uuid.uuid4().hex[:8]}",
            protocol=version,
            clean_session=clean_session,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        if tls_ca or tls_cert:
            self.client.tls_set(ca_certs=tls_ca, certfile=tls_cert, keyfile=tls_key)
        self.server_receive_maximum = 65535  # MQTT 5 default when CONNACK names none
        self.session_present = False  # of the first CONNACK
        self.last_disconnect = ""
        # Called on the loop thread after each later CONNACK with session_present.
        self.on_reconnect: Callable[[bool], None] | None = None
        self._threaded = False
        self._connack = threading.Event()
        self._refused: tuple[str, int] | None = None
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self._refused = (f"{reason} (reason code {reason.value})", int(reason.value))
        elif props is not None and hasattr(props, "ReceiveMaximum"):
            self.server_receive_maximum = int(props.ReceiveMaximum)
        if self._connack.is_set() and not reason.is_failure and self.on_reconnect is not None:
            self.on_reconnect(bool(flags.session_present))
        if not self._connack.is_set():
            self.session_present = bool(flags.session_present)
        self._connack.set()

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self.last_disconnect = str(reason)
        self._connack.set()  # a broker that hangs up before CONNACK

    def open(self, timeout: float, *, threaded: bool) -> None:
        """Connect; return after CONNACK. Raises as the module docstring says."""
        from paho.mqtt.exception import MQTTException

        deadline = time.monotonic() + timeout
        try:
            self.client.connect(self.host, self.port, keepalive=KEEPALIVE,
                                clean_start=self._clean_start,
                                properties=self._connect_properties)
        except (OSError, ValueError, MQTTException) as exc:
            raise NotConnected(f"cannot connect to MQTT broker {self.address}: {exc}",
                               component_id=self.component_id) from exc
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
        if self._refused is not None or not self.client.is_connected():
            self.close()
            if self._refused is not None:
                text, code = self._refused
                error = AccessDenied if code in _LOGIN_REFUSED else PermanentError
                raise error(f"MQTT broker {self.address} refused the connection: {text}",
                            component_id=self.component_id)
            if not self._connack.is_set():
                raise TimeoutError(f"no CONNACK from MQTT broker {self.address} within {timeout} s")
            raise NotConnected(f"MQTT broker {self.address} closed the connection: "
                               f"{self.last_disconnect}", component_id=self.component_id)

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


class Publisher:
    """One unthreaded MQTT connection that publishes and counts acknowledgements.

    Keyword arguments other than ``qos`` and ``window`` go to
    :class:`PahoConnection` (login, TLS, client id, protocol).
    """

    def __init__(self, host: str, port: int, *, qos: int = 1, window: int = 1000,
                 **connection: Any) -> None:
        if qos not in (0, 1, 2):
            raise ValueError(f"qos: expected 0, 1 or 2, found {qos!r}")
        self.conn = PahoConnection(host, port, **connection)
        self.qos = qos
        self.window = max(1, window)
        self.sent = 0
        self.acked = 0
        self.refused: list[str] = []
        self.conn.client.on_publish = self._on_publish
        # paho allows this only before connecting.
        self.conn.client.max_inflight_messages_set(self.window)

    @property
    def address(self) -> str:
        return self.conn.address

    @property
    def pending(self) -> int:
        """Messages handed to paho and not yet acknowledged (nor refused)."""
        return self.sent - self.acked - len(self.refused)

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        if reason is not None and reason.is_failure:
            self.refused.append(f"{reason} (reason code {reason.value})")
        else:
            self.acked += 1

    def open(self, timeout: float = 10.0) -> None:
        """Connect; return after CONNACK."""
        self.conn.open(timeout, threaded=False)
        # Never more in flight than the broker's receive-maximum.
        self.window = min(self.window, self.conn.server_receive_maximum)

    def publish(self, topic: str, payload: bytes) -> None:
        """Hand one message to paho; pump first while the in-flight window is full."""
        while self.pending >= self.window:
            self.pump(0.05)
        mqtt = self.conn.mqtt
        info = self.conn.client.publish(topic, payload, qos=self.qos)
        if info.rc in (mqtt.MQTT_ERR_NO_CONN, mqtt.MQTT_ERR_CONN_LOST):
            if self.qos == 0:
                return  # QoS 0 is at most once: not written, not counted
            # paho keeps a QoS 1/2 message and sends it again after the reconnect.
        elif info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise PermanentError(f"cannot publish to {topic!r}: {mqtt.error_string(info.rc)}",
                                 component_id=self.conn.component_id)
        self.sent += 1
        self.check_refused()

    def pump(self, timeout: float) -> None:
        """Send and receive for up to ``timeout`` s; reconnect if the connection broke."""
        self.conn.pump(timeout)
        self.check_refused()

    def flush(self, timeout: float = 30.0) -> None:
        """Return once every message sent so far is acknowledged; TimeoutError otherwise."""
        self.wait_acked(time.monotonic() + timeout, timeout, 0)

    def wait_acked(self, deadline: float, timeout: float, below: int) -> None:
        """Pump until fewer than ``below`` + 1 messages are unacknowledged (0: all acked);
        past ``deadline`` (monotonic), TimeoutError naming ``timeout`` seconds."""
        while self.pending > below:
            left = deadline - time.monotonic()
            if left <= 0:
                why = f"; last disconnect: {self.conn.last_disconnect}" \
                    if self.conn.last_disconnect else ""
                what = "were" if below == 0 else "published so far were"
                raise TimeoutError(f"{self.pending} of {self.sent} messages {what} not "
                                   f"acknowledged by MQTT broker {self.address} within "
                                   f"{timeout:g} s ({self.acked} acknowledged){why}")
            self.pump(min(left, 0.1))

    def check_refused(self) -> None:
        """:class:`PermanentError` when the broker refused a message (MQTT 5 reason code)."""
        if self.refused:
            raise PermanentError(f"MQTT broker {self.address} refused {len(self.refused)} of "
                                 f"{self.sent} messages (first: {self.refused[0]}); "
                                 f"{self.acked} acknowledged", component_id=self.conn.component_id)

    def close(self) -> None:
        self.conn.close()


def publish(host: str, port: int, messages: Iterable[tuple[str, bytes]], qos: int = 1, *,
            timeout: float = 60.0, window: int = 1000, **connection: Any) -> int:
    """Publish every ``(topic, payload)`` and wait until the broker acknowledged all.

    At most ``window`` messages are unacknowledged at a time, so ``messages``
    may be a long generator. Returns the number acknowledged, which is the
    number given; at QoS 0 there is no acknowledgement and it counts messages
    written to the socket. ``timeout`` covers the whole call, connecting
    included. Keyword arguments go to :class:`PahoConnection`.
    """
    deadline = time.monotonic() + timeout
    publisher = Publisher(host, port, qos=qos, window=window, **connection)
    publisher.open(max(deadline - time.monotonic(), 0.0))
    try:
        for topic, payload in messages:
            publisher.wait_acked(deadline, timeout, publisher.window - 1)
            publisher.publish(topic, payload)
        publisher.wait_acked(deadline, timeout, 0)
    finally:
        publisher.close()
    return publisher.acked
