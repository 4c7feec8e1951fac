"""What the Kafka source and target share: connection keys, librdkafka settings, errors.

The client library is confluent-kafka (librdkafka), imported only when a
Kafka component starts; without it, :func:`import_confluent` raises
:class:`~unsflow.errors.MissingDependency` naming the ``kafka`` extra.

Security: ``security-protocol`` PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.
SASL logs in with ``credential`` (a secret reference: username and password,
resolved through the secret providers) and ``sasl-mechanism`` (SCRAM-SHA-512
by default, as the Red Hat edge pattern's mirror cluster uses). TLS verifies
the broker against ``ca-file`` (PEM), or the system's CA store without one,
and checks the host name.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, Self

from pydantic import Field, model_validator

from unsflow._deps import require
from unsflow.config.models import Model, SecretRef
from unsflow.errors import AccessDenied, PermanentError

if TYPE_CHECKING:
    from unsflow.components import Context

__all__ = [
    "TOPIC_NAME",
    "ClientSettings",
    "ErrorWatch",
    "KafkaConnectionConfig",
    "check_client_config",
    "check_connection",
    "client_settings",
    "import_confluent",
]

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]
ClientValue = str | int | float | bool
ClientSettings = dict[str, Any]

# Kafka's rule for topic names (kafka.common.internals.Topic): 1-249 of these.
TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")

# librdkafka settings that the component sets itself: a user override would
# break a guarantee (acks, idempotence, commits) or bypass the secret store.
RESERVED = frozenset({
    "bootstrap.servers", "metadata.broker.list", "security.protocol", "sasl.mechanism",
    "sasl.mechanisms", "sasl.username", "sasl.password", "ssl.ca.location",
    "enable.idempotence", "acks", "request.required.acks", "enable.auto.commit",
    "enable.auto.offset.store", "group.id", "logger", "error_cb", "on_delivery", "dr_cb",
    "dr_msg_cb", "on_commit", "offset_commit_cb",
})


class KafkaConnectionConfig(Model):
    """Keys shared by the Kafka source and target: where the cluster is and how to log in."""

    bootstrap_servers: str = Field(
        min_length=1, description="Comma-separated host:port list of brokers to bootstrap from.")
    security_protocol: SecurityProtocol = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.")
    sasl_mechanism: SaslMechanism = Field(
        "SCRAM-SHA-512", description="SASL mechanism when security-protocol is SASL_*.")
    credential: SecretRef | None = Field(
        None, description="SASL user name and password (a secret reference); required with "
        "SASL_SSL and SASL_PLAINTEXT.")
    ca_file: str | None = Field(
        None, description="CA bundle (PEM) that signed the brokers' certificates; default: the "
        "system CA store.")

    @model_validator(mode="after")
    def _check_security(self) -> Self:
        sasl = self.security_protocol.startswith("SASL_")
        if sasl and self.credential is None:
            raise ValueError(f"security-protocol {self.security_protocol} needs a credential "
                             "(a secret reference with the SASL user name and password)")
        if not sasl and self.credential is not None:
            raise ValueError(f"credential is only used with SASL_SSL or SASL_PLAINTEXT, and "
                             f"security-protocol is {self.security_protocol}")
        if self.ca_file and "SSL" not in self.security_protocol:
            raise ValueError(f"ca-file is only used with SSL or SASL_SSL, and security-protocol "
                             f"is {self.security_protocol}")
        return self


def check_client_config(value: dict[str, ClientValue]) -> dict[str, ClientValue]:
    """Extra librdkafka settings: a reserved one is an error naming what sets it."""
    reserved = sorted(k for k in value if k in RESERVED)
    if reserved:
        raise ValueError(f"{', '.join(reserved)}: set by unsflow from the component's own "
                         "keys (or fixed for its delivery guarantee); not allowed here")
    return value


def import_confluent() -> ModuleType:
    return require("confluent_kafka", "kafka")


async def client_settings(config: KafkaConnectionConfig, context: Context,
                          component_id: str) -> ClientSettings:
    """librdkafka settings for the connection keys, the credential resolved."""
    settings: ClientSettings = {
        "bootstrap.servers": config.bootstrap_servers,
        "security.protocol": config.security_protocol,
        "client.id": f"unsflow-{component_id}",
        "logger": logging.getLogger(f"unsflow.kafka.{component_id}"),
    }
    if config.security_protocol.startswith("SASL_"):
        assert config.credential is not None
        cred = await context.resolve_secret(config.credential)
        if cred.username is None:
            from unsflow.errors import SecretError

            raise SecretError(f"secret {config.credential.secret_name!r}: no username")
        settings.update({"sasl.mechanism": config.sasl_mechanism,
                         "sasl.username": cred.username, "sasl.password": cred.password or ""})
    if "SSL" in config.security_protocol:
        # "probe": librdkafka looks for the system CA store in the usual places.
        settings["ssl.ca.location"] = config.ca_file or "probe"
    return settings


class ErrorWatch:
    """librdkafka's ``error_cb``: keeps the last client-level errors, logs each kind once.

    Broker-down and login errors repeat every reconnect; one log line per
    kind until :meth:`clear` (called after a success) keeps the log readable.
    """

    def __init__(self, component_id: str, log: logging.Logger) -> None:
        self.id = component_id
        self.log = log
        self._lock = threading.Lock()
        self._seen: set[int] = set()
        self.last: Any = None
        self.auth: Any = None
        self.fatal: Any = None

    def __call__(self, err: Any) -> None:
        from confluent_kafka import KafkaError

        with self._lock:
            self.last = err
            code = err.code()
            if code in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED,
                        KafkaError._SSL):
                self.auth = err
            if err.fatal():
                self.fatal = err
            first = code not in self._seen
            self._seen.add(code)
        if first:
            self.log.warning("[%s] kafka: %s (repeats are not logged until it recovers)",
                             self.id, err.str())

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()
            self.auth = None


def check_connection(client: Any, watch: ErrorWatch, config: KafkaConnectionConfig,
                     component_id: str, timeout: float,
                     poll: Callable[[], object] | None = None) -> bool:
    """One metadata request. A refused login raises AccessDenied, a failed TLS handshake
    PermanentError: no retry fixes either.

    An unreachable cluster only returns False: librdkafka keeps reconnecting,
    and a target that is down must not stop the pipeline. Call from a thread;
    ``error_cb`` runs only when the client is polled: by another thread, or
    here with ``poll``.
    """
    from confluent_kafka import KafkaError, KafkaException

    deadline = time.monotonic() + timeout
    while True:
        try:
            client.list_topics(timeout=min(1.0, max(deadline - time.monotonic(), 0.1)))
            watch.clear()
            return True
        except KafkaException:
            pass
        if poll is not None:
            poll()
        auth = watch.auth
        if auth is not None:
            who = ""
            if config.security_protocol.startswith("SASL_") and config.credential is not None:
                who = (f" of the user in secret {config.credential.secret_name!r} "
                       f"({config.sasl_mechanism})")
            error = PermanentError if auth.code() == KafkaError._SSL else AccessDenied
            raise error(f"Kafka {config.bootstrap_servers} ({config.security_protocol}) "
                        f"refused the login{who}: {auth.str()}", component_id=component_id)
        if time.monotonic() >= deadline:
            return False
