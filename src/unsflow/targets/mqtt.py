"""MQTT target: publishes processed records to a broker.

A message counts as accepted when the broker acknowledged its PUBLISH (PUBACK
for QoS 1, PUBCOMP for QoS 2; for QoS 0, when it was written to the socket).
Unacknowledged publishes are resent by the client after a reconnect; a batch
not acknowledged within ``publish-timeout`` raises TransientError and the
engine publishes it again (at least once). A topic the template cannot fill,
or that is not a valid topic name, and a PUBACK with an MQTT 5 error reason
code (not authorised, topic invalid) are failures for the dead letter.

paho-mqtt is used here (gmqtt serves the source) because its publish API
reports each acknowledgement through a public callback.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Literal

import orjson
from pydantic import Field, field_validator

from unsflow.config.models import SecretRef, TargetConfig, TlsConfig
from unsflow.engine.topics import TEMPLATE_FIELDS, compile_template, topic_problem
from unsflow.errors import MissingDependency, TransientError
from unsflow.message import NOT_DECODED, Failure, Message
from unsflow.targets.base import Target

__all__ = ["MqttTarget", "MqttTargetConfig"]

log = logging.getLogger("unsflow.targets.mqtt")


class MqttTargetConfig(TargetConfig):
    type: Literal["mqtt"]
    mqtt_broker_host: str | None = Field(
        None, description="Broker to publish to; default EDGE_BROKER_HOST or localhost.")
    mqtt_broker_port: int = Field(1883, ge=1, le=65535, description="Broker port.")
    mqtt_credential: SecretRef | None = Field(None, description="Username/password reference.")
    topic: str = Field(
        "{topic}/{target}",
        description="Output topic template. Fields: " + TEMPLATE_FIELDS + ". Beware of "
        "loops: do not publish to the UNS broker under a topic your subscriptions match.")
    qos: int = Field(1, ge=0, le=2, description="Publish QoS.")
    retain: bool = Field(False, description="Publish with the retain flag.")
    client_id: str | None = Field(None, description="Client id (default: random).")
    protocol_version: Literal["5", "3.1.1"] = Field("5", description="MQTT protocol version.")
    tls: TlsConfig | None = Field(None, description="Use TLS with these settings.")
    max_in_flight: int = Field(1000, ge=1, le=65535, description="Unacknowledged publishes.")
    publish_timeout: float = Field(30.0, gt=0, description="Seconds to wait for a batch's acks.")

    @field_validator("topic")
    @classmethod
    def _check_template(cls, value: str) -> str:
        compile_template(value, "t")  # raises ValueError for a broken template
        return value


class MqttTarget(Target[MqttTargetConfig]):
    config_class = MqttTargetConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._waiting: dict[int, asyncio.Future[int]] = {}
        self._early: dict[int, int] = {}
        self._topic = compile_template(self.config.topic, self.id)
        self.published = 0

    async def start(self) -> None:
        try:
            import paho.mqtt.client as mqtt
            from paho.mqtt.enums import CallbackAPIVersion
        except ImportError as exc:  # pragma: no cover - paho is a core dependency
            raise MissingDependency("paho.mqtt", "all") from exc
        c = self.config
        self._loop = asyncio.get_running_loop()
        protocol = mqtt.MQTTv5 if c.protocol_version == "5" else mqtt.MQTTv311
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=c.client_id or "",
                             protocol=protocol)
        client.max_inflight_messages_set(c.max_in_flight)
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(1, 30)
        if c.mqtt_credential is not None:
            cred = await self.context.resolve_secret(c.mqtt_credential)
            client.username_pw_set(cred.username, cred.password)
        if c.tls is not None:
            from unsflow.sources.mqtt import ssl_context

            client.tls_set_context(ssl_context(c.tls))
        client.on_publish = self._on_publish
        client.on_connect = lambda *a: log.info("[%s] connected", self.id)
        client.on_disconnect = lambda *a: log.warning("[%s] disconnected; reconnecting", self.id)
        host = c.mqtt_broker_host or self.context.env.get("EDGE_BROKER_HOST") or "localhost"
        client.connect_async(host, c.mqtt_broker_port, keepalive=60)
        client.loop_start()
        self._client = client

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any,
                    properties: Any) -> None:
        # paho's network thread.
        rc = int(getattr(reason_code, "value", reason_code) or 0)
        with self._lock:
            fut = self._waiting.pop(mid, None)
            if fut is None:
                self._early[mid] = rc
                return
        assert self._loop is not None
        self._loop.call_soon_threadsafe(_resolve, fut, rc)

    async def write(self, batch: list[Message]) -> list[Failure]:
        c = self.config
        failures: list[Failure] = []
        items: list[tuple[Message, str, bytes]] = []
        for msg in batch:
            try:
                topic = self._topic(msg)
            except (KeyError, IndexError, AttributeError) as exc:
                failures.append(Failure(msg, f"topic template {c.topic!r} needs {exc}", self.stage))
                continue
            problem = topic_problem(topic)
            if problem:
                failures.append(Failure(msg, f"output topic {topic!r}: expected {problem}",
                                        self.stage))
                continue
            payload = msg.payload if msg.record is NOT_DECODED else orjson.dumps(msg.record)
            items.append((msg, topic, payload))
        assert self._loop is not None
        futures: list[asyncio.Future[int]] = []
        for _, topic, payload in items:
            # Never call paho while holding our lock: paho calls on_publish with its own
            # out-message mutex held, and publish() takes that mutex (lock-order deadlock).
            info = self._client.publish(topic, payload, qos=c.qos, retain=c.retain)
            fut = self._loop.create_future()
            with self._lock:
                if info.mid in self._early:
                    fut.set_result(self._early.pop(info.mid))
                else:
                    self._waiting[info.mid] = fut
            futures.append(fut)
        try:
            codes = await asyncio.wait_for(asyncio.gather(*futures), c.publish_timeout)
        except asyncio.TimeoutError:
            raise TransientError(
                f"broker did not acknowledge {sum(not f.done() for f in futures)} of "
                f"{len(futures)} publishes within {c.publish_timeout}s", component_id=self.id
            ) from None
        for (msg, topic, _), code in zip(items, codes):
            if code >= 0x80:
                failures.append(Failure(msg, f"broker refused publish to {topic!r} "
                                             f"(reason code {code:#x})", self.stage))
        self.published += len(items)
        return failures

    async def stop(self) -> None:
        if self._client is not None:
            await asyncio.to_thread(self._client.disconnect)
            await asyncio.to_thread(self._client.loop_stop)
            self._client = None


def _resolve(fut: asyncio.Future[int], rc: int) -> None:
    if not fut.done():
        fut.set_result(rc)
