"""Config models: the reference edge solution's JSON format, and what extends it.

Keys are kebab-case. Every model forbids unknown keys. Component configs (a
target's, a processor's) subclass :class:`TargetConfig` or
:class:`ProcessorConfig` and live beside their component; the root model is
assembled from the registry by :func:`pipeline_model`, so a plugin's config
is validated and appears in the JSON Schema like a built-in one.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from unsflow import registry

__all__ = [
    "Model",
    "SecretRef",
    "TlsConfig",
    "BrokerConfig",
    "BatchingConfig",
    "ComponentConfig",
    "TargetConfig",
    "ProcessorConfig",
    "SubscriptionConfig",
    "SourceConfig",
    "DeadLetterConfig",
    "HttpConfig",
    "SpoolConfig",
    "ReloadConfig",
    "PipelineConfig",
    "pipeline_model",
]


def _kebab(name: str) -> str:
    return name.replace("_", "-")


class Model(BaseModel):
    """Base of every config model: kebab-case keys, unknown keys rejected."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=_kebab,
        populate_by_name=True,
        frozen=True,
    )


class SecretRef(Model):
    """A reference to a credential in a secret store; never the credential itself.

    ``provider`` picks the store. Without it, a reference with ``secret-region``
    means AWS Secrets Manager (as in the reference config), and one without
    means ``env``.
    """

    secret_name: str = Field(min_length=1, description="Name of the secret in its store.")
    secret_region: str | None = Field(None, description="Cloud region of the secret store.")
    provider: str | None = Field(
        None, description="Secret provider: env, file, aws-secrets-manager or a plugin's name."
    )
    path: str | None = Field(
        None, description="file provider: the file (or directory holding secret-name) to read."
    )
    endpoint: str | None = Field(None, description="Override of the secret store's endpoint URL.")

    @property
    def provider_name(self) -> str:
        if self.provider:
            return self.provider
        return "aws-secrets-manager" if self.secret_region else "env"


class TlsConfig(Model):
    """TLS for an MQTT connection."""

    ca_file: str | None = Field(None, description="CA bundle (PEM) to verify the broker.")
    cert_file: str | None = Field(None, description="Client certificate (PEM) for mutual TLS.")
    key_file: str | None = Field(None, description="Client private key (PEM).")
    insecure: bool = Field(False, description="Skip hostname and certificate checks (tests only).")


class BrokerConfig(Model):
    """How to reach the UNS broker. Host and port default to EDGE_BROKER_HOST / EDGE_MQTT_PORT."""

    host: str | None = Field(None, description="Broker host; default EDGE_BROKER_HOST or localhost.")
    port: int | None = Field(None, ge=1, le=65535, description="Default EDGE_MQTT_PORT or 1883/8883.")
    client_id: str | None = Field(
        None, description="Fixed client id. Needed for a persistent session; default "
        "UNSFLOW_CLIENT_ID (a StatefulSet gives each replica its pod name), else random."
    )
    protocol_version: Literal["5", "3.1.1"] = Field("5", description="MQTT protocol version.")
    clean_start: bool | None = Field(
        None,
        description="Start a new session. Default: false with a fixed client-id "
        "(persistent session), true without one.",
    )
    session_expiry: int = Field(
        86400, ge=0, le=0xFFFFFFFF, description="Seconds the broker keeps the session (MQTT 5)."
    )
    keepalive: int = Field(60, ge=5, le=65535, description="Keep-alive in seconds.")
    receive_maximum: int = Field(
        65535, ge=1, le=65535,
        description="MQTT 5 in-flight window: unacknowledged QoS 1/2 messages the broker may "
        "send. Acks wait for durable writes, so throughput is about this window divided by "
        "the targets' commit time (e.g. batching max-age).",
    )
    tls: TlsConfig | None = Field(None, description="Use TLS with these settings.")
    reconnect_min: float = Field(0.5, gt=0, description="First reconnect delay, seconds.")
    reconnect_max: float = Field(30.0, gt=0, description="Reconnect delay cap, seconds.")
    client: Literal["asyncio", "gmqtt"] = Field(
        "asyncio", description="MQTT client implementation: asyncio (unsflow's own protocol "
        "code: every PUBLISH of a socket read decoded in one pass) or gmqtt (the gmqtt "
        "library, one callback per message).")
    leave_shared_on_stop: bool = Field(
        True, description="On a stop (SIGTERM), unsubscribe the shared subscriptions "
        "($share/GROUP/FILTER) and take what is still in flight before disconnecting, so "
        "that the other members get this member's share while it is away (a restart "
        "subscribes again). false: keep them in the session; the broker then goes on "
        "dealing this member its share until it comes back or the session expires.")

    @property
    def persistent(self) -> bool:
        if self.clean_start is not None:
            return not self.clean_start
        return self.client_id is not None


class BatchingConfig(Model):
    """How a target groups records before one durable write."""

    max_records: int = Field(10000, ge=1, description="Flush at this many records.")
    max_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="Flush at this many payload bytes.")
    max_age: float = Field(1.0, gt=0, description="Flush when the oldest record is this old (s).")
    max_idle: float | None = Field(
        0.1, gt=0, description="Flush early when no record arrived for this long (s) and at "
        "least a tenth of max-records (or of max-bytes) waits, or the last flush was of a full "
        "batch: the end of a burst or of a drained backlog, its tail included, is written "
        "(and acknowledged) at once, not max-age later; a trickle still waits for max-age. "
        "null: never early.")


class ComponentConfig(Model):
    """Base of component configs: ``type`` selects the registered class."""

    type: str


class ProcessorConfig(ComponentConfig):
    """Base of processor configs."""


class SourceConfig(ComponentConfig):
    """Base of configs of sources other than the UNS broker (which ``subscriptions`` feed)."""

    target: str | list[str] = Field(description="Target name (or names) for every message.")

    @property
    def target_names(self) -> list[str]:
        return [self.target] if isinstance(self.target, str) else list(self.target)


class TargetConfig(ComponentConfig):
    """Base of target configs."""

    event_type: Literal["single", "batch"] = Field(
        "single", description="single: a payload is one record; batch: a JSON array of records."
    )
    processors: list[str] = Field(
        default_factory=list, description="Processors applied in order before the target."
    )
    spool: bool = Field(
        True, description="While the target is down, keep its batches in the on-disk spool "
        "(see the top-level spool section) and acknowledge them; false: hold the "
        "acknowledgements and retry instead.")


class SubscriptionConfig(Model):
    """One topic filter: its QoS and where its messages go."""

    qos: int = Field(1, ge=0, le=2, description="Subscription QoS: 0, 1 or 2.")
    target: str | list[str] = Field(description="Target name (or names) for matching messages.")

    @property
    def target_names(self) -> list[str]:
        return [self.target] if isinstance(self.target, str) else list(self.target)


class DeadLetterConfig(Model):
    """Where messages that can never succeed are written, with the reason."""

    path: str = Field(
        "./unsflow-deadletter.jsonl",
        description="JSON-lines file: original payload, topic, error, stage, attempts. With "
        "`target` set, the fallback for entries that target refuses for good.",
    )
    target: str | None = Field(
        None,
        description="Name of a target in `targets` (file, mqtt, kafka, s3) that receives each "
        "dead-letter entry as a JSON record instead of the file; retried while it is down.",
    )


class SpoolConfig(Model):
    """The store-and-forward spool: batches for a target that is down wait here, on disk."""

    path: str = Field(
        "./unsflow-spool",
        description="Directory of the spool, one subdirectory per target. In Kubernetes, a "
        "persistent volume of the pod's own (a replica needs its own directory).")
    max_bytes: int = Field(
        1024 * 1024 * 1024, ge=1,
        description="Most bytes spooled per target; when reached, acknowledgements are held "
        "(backpressure) and /readyz is not ready until the spool drains.")
    max_age: float | None = Field(
        7 * 24 * 3600.0, gt=0,
        description="Seconds a batch may wait in the spool; an older one goes to the dead "
        "letter (with that reason). null: no age limit.")


class HttpConfig(Model):
    """The HTTP endpoints /healthz, /readyz and /metrics (Prometheus)."""

    host: str = Field("0.0.0.0", description="Address to listen on (0.0.0.0: every interface, "
                      "as a Kubernetes probe needs).")
    port: int = Field(9464, ge=0, le=65535,
                      description="Port for /healthz, /readyz and /metrics; 0 turns them off.")


class ReloadConfig(Model):
    """Live reload of the config file (`unsflow run FILE`); SIGHUP reloads at once."""

    interval: float = Field(
        2.0, ge=0, description="Seconds between two checks of the config file's content "
        "(a changed ConfigMap volume swaps a symlink, so the content is compared, not the "
        "mtime); 0 turns polling off, SIGHUP still reloads.")


class PipelineConfig(Model):
    """The whole pipeline. Sections and keys follow the reference edge solution."""

    mqtt_broker_credential: SecretRef | None = Field(
        None, description="Credential for the UNS broker (username and password)."
    )
    mqtt_broker: BrokerConfig = Field(
        default_factory=BrokerConfig, description="Connection to the UNS broker (all optional).")
    targets: dict[str, TargetConfig] = Field(description="Targets by name; `type` selects one.")
    processors: dict[str, ProcessorConfig] = Field(
        default_factory=dict, description="Processors by name, attached to targets.")
    subscriptions: dict[str, SubscriptionConfig] = Field(
        default_factory=dict,
        description="UNS topic filter (+, #, $share/GROUP/FILTER) to QoS and target.")
    sources: dict[str, SourceConfig] = Field(
        default_factory=dict, description="Other sources by name (Kafka, ...); `type` selects one.")
    dead_letter: DeadLetterConfig = Field(
        default_factory=DeadLetterConfig, description="Where failures that retry cannot fix go.")
    http: HttpConfig = Field(
        default_factory=HttpConfig, description="Health, readiness and metrics endpoints.")
    spool: SpoolConfig = Field(
        default_factory=SpoolConfig,
        description="On-disk store-and-forward for targets that are down.")
    reload: ReloadConfig = Field(
        default_factory=ReloadConfig, description="Live reload of a changed config file.")
    batch_size: int = Field(
        2000, ge=1, le=100000, description="Most messages a source hands on in one batch."
    )
    max_in_flight: int = Field(
        50000, ge=1, description="Most messages per source taken but not yet acknowledged; "
        "beyond it the source is not read (backpressure). With max-in-flight-bytes, what "
        "bounds memory, whatever the broker's backlog.",
    )
    max_in_flight_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Most payload bytes the UNS source holds read "
        "and not yet acknowledged; beyond it the socket is not read (backpressure).",
    )
    shutdown_timeout: float = Field(
        25.0, gt=0, description="Seconds SIGTERM waits for in-flight batches."
    )

    @model_validator(mode="after")
    def _check_inputs(self) -> "PipelineConfig":
        if not self.subscriptions and not self.sources:
            raise ValueError("at least one subscription (or a source in 'sources')")
        return self


def _union(classes: list[type]) -> Any:
    if len(classes) == 1:
        return classes[0]
    return Annotated[Union[tuple(classes)], Field(discriminator="type")]  # noqa: UP007


@lru_cache(maxsize=1)
def pipeline_model() -> type[PipelineConfig]:
    """The root model with every registered target and processor config in its unions."""
    from pydantic import create_model

    targets = [cls.config_class for cls in registry.load_all("targets").values()]
    processors = [cls.config_class for cls in registry.load_all("processors").values()]
    # The UNS MQTT source is configured by the top-level keys, not in `sources`: only
    # sources whose config names targets (SourceConfig) are entries there.
    sources = [cls.config_class for cls in registry.load_all("sources").values()
               if issubclass(getattr(cls, "config_class", object), SourceConfig)]
    model = create_model(
        "Pipeline",
        __base__=PipelineConfig,
        targets=(dict[str, _union(targets)], PipelineConfig.model_fields["targets"]),  # type: ignore[valid-type]
        processors=(dict[str, _union(processors)], PipelineConfig.model_fields["processors"]),  # type: ignore[valid-type]
    )
    if sources:
        model = create_model(
            "Pipeline", __base__=model,
            sources=(dict[str, _union(sources)], PipelineConfig.model_fields["sources"]),  # type: ignore[valid-type]
        )
    return model
