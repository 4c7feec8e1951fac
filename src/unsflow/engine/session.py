"""Ending a persistent MQTT session: ``unsflow session end CONFIG``.

A config with a fixed ``client-id`` and ``clean-start: false`` keeps a
persistent session on the broker: while unsflow is down, the broker queues
every message matching its subscriptions (that is what makes a restart
lossless). A pipeline that is stopped for good (a trial run, a config that is
retired, a scaled-down replica) leaves that session behind, and the broker
queues for nobody until the session expires (7 days by default), up to its
``max_queued_messages``; the quick start's `#` subscription once filled a
broker's database to 1.6 GB that way.

:func:`end_session` connects with the config's client id, broker, login and
TLS, resuming the session (so the broker says whether there was one) with a
session expiry of 0, then disconnects: the broker deletes the session and
everything queued for it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from unsflow.components import Context
from unsflow.config.models import PipelineConfig
from unsflow.errors import ConfigError, ConfigIssue, NotConnected, PermanentError

__all__ = ["SessionEnd", "end_session", "end_mqtt_session"]

_KEEPALIVE = 30


@dataclass(frozen=True)
class SessionEnd:
    """What :func:`end_session` did: the broker, the client id, whether a session was there."""

    broker: str
    client_id: str
    present: bool


def end_session(config: PipelineConfig, context: Context | None = None, *,
                timeout: float = 10.0) -> SessionEnd:
    """End the persistent session of ``config``'s UNS broker connection.

    Raises :class:`~unsflow.errors.ConfigError` when the config has no fixed
    ``client-id`` (its sessions are clean and end by themselves),
    :class:`~unsflow.errors.NotConnected` when the broker cannot be reached,
    and :class:`~unsflow.errors.PermanentError` when it refuses the login.
    """
    broker = config.mqtt_broker
    if not broker.client_id:
        raise ConfigError([ConfigIssue(
            "mqtt-broker.client-id", "a fixed client id (without one, every session is clean "
            "and ends when unsflow disconnects: there is nothing to end)", "none")])
    username = password = None
    if config.mqtt_broker_credential is not None:
        cred = asyncio.run((context or Context()).resolve_secret(config.mqtt_broker_credential))
        username, password = cred.username, cred.password
    host, port = broker.host or "localhost", broker.port or 1883
    tls = None
    if broker.tls is not None:
        from unsflow.sources.mqtt import ssl_context

        tls = ssl_context(broker.tls)
    present = end_mqtt_session(host, port, broker.client_id, username=username,
                               password=password, tls=tls, timeout=timeout)
    return SessionEnd(f"{host}:{port}", broker.client_id, present)


def end_mqtt_session(host: str, port: int, client_id: str, *, username: str | None = None,
                     password: str | None = None, tls: Any = None,
                     timeout: float = 10.0) -> bool:
    """Delete the broker's session of ``client_id`` (and every message queued for it).

    Connects as ``client_id`` resuming its session (clean start 0, so the
    CONNACK says whether there was one) with a session expiry of 0 (MQTT 5),
    so the broker deletes it at the disconnect that follows. Returns whether a
    session was there. ``tls`` is an :class:`ssl.SSLContext` or None.
    """
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5)
    if username is not None:
        client.username_pw_set(username, password)
    if tls is not None:
        client.tls_set_context(tls)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0
    result: dict[str, Any] = {}

    def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        result["present"] = bool(flags.session_present)
        result["reason"] = reason

    client.on_connect = on_connect
    try:
        client.connect(host, port, keepalive=_KEEPALIVE, clean_start=False, properties=props)
    except (OSError, ValueError) as exc:
        raise NotConnected(f"cannot connect to MQTT broker {host}:{port}: {exc}") from exc
    deadline = time.monotonic() + timeout
    while "reason" not in result and time.monotonic() < deadline:
        client.loop(0.1)
    client.disconnect()
    if "reason" not in result:
        raise NotConnected(f"no CONNACK from MQTT broker {host}:{port} within {timeout:g} s")
    if result["reason"].is_failure:
        raise PermanentError(f"MQTT broker {host}:{port} refused client id {client_id!r}: "
                             f"{result['reason']}")
    return bool(result["present"])
