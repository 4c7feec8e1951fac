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
import ssl
from dataclasses import dataclass

from unsflow.components import Context
from unsflow.config.models import PipelineConfig
from unsflow.errors import ConfigError, ConfigIssue, NotConnected

__all__ = ["SessionEnd", "end_session", "end_mqtt_session"]


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
    and :class:`~unsflow.errors.AccessDenied` (a :class:`~unsflow.errors.PermanentError`)
    when it refuses the login.
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
    tls = broker.tls
    # Without a CA file of its own, TLS verifies against the system's CAs.
    system_ca = ssl.get_default_verify_paths().openssl_cafile
    present = end_mqtt_session(host, port, broker.client_id, username=username,
                               password=password, timeout=timeout,
                               tls_ca=(tls.ca_file or system_ca) if tls else None,
                               tls_cert=tls.cert_file if tls else None,
                               tls_key=tls.key_file if tls else None)
    return SessionEnd(f"{host}:{port}", broker.client_id, present)


def end_mqtt_session(host: str, port: int, client_id: str, *, username: str | None = None,
                     password: str | None = None, tls_ca: str | None = None,
                     tls_cert: str | None = None, tls_key: str | None = None,
                     timeout: float = 10.0) -> bool:
    """Delete the broker's session of ``client_id`` (and every message queued for it).

    Connects as ``client_id`` resuming its session (clean start 0, so the
    CONNACK says whether there was one) with a session expiry of 0 (MQTT 5),
    so the broker deletes it at the disconnect that follows. Returns whether a
    session was there. Raises like :meth:`unsflow._paho.PahoConnection.open`.
    """
    from unsflow._paho import PahoConnection

    conn = PahoConnection(host, port, username=username, password=password, tls_ca=tls_ca,
                          tls_cert=tls_cert, tls_key=tls_key, client_id=client_id,
                          end_session=True, component_id="session")
    try:
        conn.open(timeout, threaded=False)
    except TimeoutError as exc:
        raise NotConnected(str(exc), component_id="session") from exc
    present = conn.session_present
    conn.close()
    return present
