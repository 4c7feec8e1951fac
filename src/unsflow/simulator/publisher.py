"""Publishing the simulator's readings with paho-mqtt 2.x, waiting for every acknowledgement.

The caller drives the network loop (no thread): ``publish`` hands a message to
paho and, while ``window`` messages are unacknowledged, pumps the socket until
one is; ``flush`` returns once the broker acknowledged everything (PUBACK for
QoS 1, PUBCOMP for QoS 2). Driving paho from one thread is about twice as fast
as its background thread, because no hand-off happens per message. A broken
connection is re-established and paho sends the unacknowledged messages again
(at least once).

paho errors do not escape: a broker that cannot be reached raises
:class:`~unsflow.errors.NotConnected`, one that refuses the connection or a
message raises :class:`~unsflow.errors.PermanentError`.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from unsflow.errors import MissingDependency, NotConnected, PermanentError

__all__ = ["MqttPublisher"]

_ID = "simulator"


class MqttPublisher:
    """One MQTT 5 connection that publishes and counts acknowledgements."""

    def __init__(self, host: str, port: int, *, qos: int = 1, window: int = 1000,
                 client_id: str | None = None) -> None:
        try:
            import paho.mqtt.client as mqtt
        except ImportError as exc:  # pragma: no cover - paho is a core dependency
            raise MissingDependency("paho.mqtt", "dev") from exc
        self._mqtt = mqtt
        self.host = host
        self.port = port
        self.qos = qos
        self.window = max(1, window)
        self.sent = 0
        self.acked = 0
        self.refused: list[str] = []
        self._connected = False
        self._refused_connect = ""
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"unsflow-simulate-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(self.window)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pending(self) -> int:
        return self.sent - self.acked - len(self.refused)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self._refused_connect = f"{reason} (reason code {reason.value})"
            return
        self._connected = True
        if props is not None and hasattr(props, "ReceiveMaximum"):
            # The broker disconnects a client that has more than this in flight.
            self.window = min(self.window, int(props.ReceiveMaximum))

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                       props: Any) -> None:
        self._connected = False

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        if reason is not None and reason.is_failure:
            self.refused.append(f"{reason} (reason code {reason.value})")
        else:
            self.acked += 1

    def open(self, timeout: float = 10.0) -> None:
        """Connect; return after CONNACK."""
        try:
            self.client.connect(self.host, self.port, keepalive=60)
        except (OSError, ValueError) as exc:
            raise NotConnected(f"cannot connect to MQTT broker {self.address}: {exc}",
                               component_id=_ID) from exc
        deadline = time.monotonic() + timeout
        while not self._connected and not self._refused_connect:
            if time.monotonic() >= deadline:
                raise NotConnected(f"no CONNACK from MQTT broker {self.address} within "
                                   f"{timeout} s", component_id=_ID)
            self.client.loop(0.1)
        if self._refused_connect:
            raise PermanentError(f"MQTT broker {self.address} refused the connection: "
                                 f"{self._refused_connect}", component_id=_ID)

    def publish(self, topic: str, payload: bytes) -> None:
        """Hand one message to paho; pump first while the in-flight window is full."""
        while self.pending >= self.window:
            self.pump(0.05)
        info = self.client.publish(topic, payload, qos=self.qos)
        if info.rc not in (self._mqtt.MQTT_ERR_SUCCESS, self._mqtt.MQTT_ERR_NO_CONN):
            # NO_CONN: paho keeps the message and sends it after the reconnect.
            raise PermanentError(f"cannot publish to {topic!r}: "
                                 f"{self._mqtt.error_string(info.rc)}", component_id=_ID)
        self.sent += 1
        self._check_refused()

    def pump(self, timeout: float) -> None:
        """Send and receive for up to ``timeout`` s; reconnect if the connection broke."""
        if self.client.loop(timeout) == self._mqtt.MQTT_ERR_SUCCESS:
            self._check_refused()
            return
        time.sleep(min(timeout, 0.2))
        try:
            self.client.reconnect()
        except OSError:
            pass  # tried again on the next pump; flush() has the deadline

    def flush(self, timeout: float = 30.0) -> None:
        """Return once every message sent so far is acknowledged; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while self.pending > 0:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.pending} of {self.sent} messages not acknowledged by "
                                   f"MQTT broker {self.address} within {timeout} s")
            self.pump(min(left, 0.1))
        self._check_refused()

    def _check_refused(self) -> None:
        if self.refused:
            raise PermanentError(f"MQTT broker {self.address} refused {len(self.refused)} "
                                 f"message(s) (first: {self.refused[0]})", component_id=_ID)

    def close(self) -> None:
        self.client.disconnect()
