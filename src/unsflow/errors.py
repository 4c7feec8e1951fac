"""The whole unsflow exception tree.

::

    UnsflowError
    ├── ConfigError              the config is not whole; carries every ConfigIssue
    ├── SecretError              a secret reference cannot be resolved (never its value)
    ├── ComponentError           raised by a source, processor or target; carries component_id
    │   ├── NotConnected         transient: the system is unreachable; retry with backoff
    │   ├── TransientError       transient: a retry may succeed (timeout, 5xx, broker busy)
    │   └── PermanentError       retrying cannot fix it; the message goes to the dead letter
    │       ├── DecodeError      a payload that cannot be decoded into a record
    │       └── AccessDenied     a refused login, authorisation or ACL: fix the credential
    ├── ReloadFailed             a valid new config could not start; the previous one runs on
    ├── NotRunning               the pipeline is starting or stopping: a reload cannot begin
    ├── DeliveryFailed           a batch could be neither delivered nor dead-lettered: the
    │                            pipeline stops (its source redelivers what was not acked)
    ├── SpoolFull                the spool cannot take a batch now (max-bytes, or the disk refused)
    ├── SpoolInUse               another process holds the spool directory
    ├── LakeError                the data lake cannot be read (no such directory, bad URL)
    ├── ModelStoreError          the model store cannot be read or written (names store, model)
    │   ├── ModelNotFound        no such model, or no such (complete) version
    │   └── ModelCorrupt         an artifact that cannot be read or loaded
    ├── TrainingDataError        the lake or the ground truth cannot give training data
    ├── ProtocolError            an inference request the server rejects; carries the HTTP status
    ├── DashboardError           a dashboard request that cannot be answered; carries the HTTP status
    ├── MalformedPacket          bytes from an MQTT broker that are no valid packet (the
    │                            client closes that connection and connects again)
    ├── MissingDependency        an optional extra is not installed; names the extra
    └── IncompatibleDependency   an installed library lacks a part unsflow relies on (a
                                 renamed private hook); names it and the library version

Third-party exceptions (gmqtt, paho, httpx, obstore, pyarrow, botocore,
confluent-kafka) are mapped to these at the component boundary:
``raise TransientError(...) from exc``; ``tests/unit/test_error_boundaries.py``
raises every exception class of those libraries at each boundary and fails on
one that escapes. Deadlines that pass raise the built-in :class:`TimeoutError`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "UnsflowError",
    "ConfigError",
    "ConfigIssue",
    "SecretError",
    "ComponentError",
    "NotConnected",
    "TransientError",
    "PermanentError",
    "DecodeError",
    "AccessDenied",
    "ReloadFailed",
    "NotRunning",
    "DeliveryFailed",
    "SpoolFull",
    "SpoolInUse",
    "LakeError",
    "ModelStoreError",
    "ModelNotFound",
    "ModelCorrupt",
    "TrainingDataError",
    "ProtocolError",
    "DashboardError",
    "MissingDependency",
    "IncompatibleDependency",
    "MalformedPacket",
]


class UnsflowError(Exception):
    """Base of every error unsflow raises on purpose."""


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config: where, what was expected, what was found."""

    path: str
    expected: str
    found: str

    def __str__(self) -> str:
        return f"{self.path or '<root>'}: expected {self.expected}, found {self.found}"


class ConfigError(UnsflowError):
    """The config cannot run. ``issues`` lists every problem, each with its key path."""

    def __init__(self, issues: list[ConfigIssue], source: str = "config") -> None:
        self.issues = list(issues)
        self.source = source
        lines = "\n".join(f"  {issue}" for issue in self.issues)
        super().__init__(f"{source}: {len(self.issues)} error(s)\n{lines}")


class SecretError(UnsflowError):
    """A secret reference cannot be resolved. The message names the secret, never its value."""


class ComponentError(UnsflowError):
    """An error raised by a component; ``component_id`` says which."""

    def __init__(self, message: str, *, component_id: str = "") -> None:
        self.component_id = component_id
        prefix = f"[{component_id}] " if component_id else ""
        super().__init__(prefix + message)


class NotConnected(ComponentError):
    """The external system is unreachable; the engine retries with backoff."""


class TransientError(ComponentError):
    """A failure that a retry may fix."""


class PermanentError(ComponentError):
    """A failure that no retry can fix; the message goes to the dead letter."""


class DecodeError(PermanentError):
    """A payload that cannot be decoded into a record."""


class AccessDenied(PermanentError):
    """The system refused the credential or the permission (a login, an ACL, a ban).

    Retrying with the same settings cannot succeed; at start-up it stops the
    pipeline with this message instead of reconnecting forever.
    """


class ReloadFailed(UnsflowError):
    """A valid config could not be started; the previous one runs again."""


class NotRunning(UnsflowError):
    """The pipeline is not running (starting, or stopping): a reload cannot begin now."""


class DeliveryFailed(UnsflowError):
    """A batch could be neither delivered nor dead-lettered (an unexpected error in the
    engine or a component): its acknowledgement, and so every later one of its source,
    can never be sent. The pipeline stops with this error instead of stalling; the
    source's upstream redelivers what was not acknowledged."""


class SpoolFull(UnsflowError):
    """The spool cannot take this batch now (``max-bytes`` reached, or the disk refused)."""


class SpoolInUse(UnsflowError):
    """Another process holds the spool directory."""


class LakeError(UnsflowError):
    """The data lake cannot be read: no such directory, an unsupported URL."""


class ModelStoreError(UnsflowError):
    """The model store cannot be read or written; the message names the store and the model."""


class ModelNotFound(ModelStoreError):
    """No such model in the store, or no such complete version of it."""


class ModelCorrupt(ModelStoreError):
    """A model artifact that cannot be read (bad JSON, missing model file) or loaded."""


class TrainingDataError(UnsflowError):
    """The lake or the ground truth cannot give training data; the message says why."""


class ProtocolError(UnsflowError):
    """An inference request the server rejects: ``status`` (400, 404, 413, 500) and the
    text for the answer's ``{"error"}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class DashboardError(UnsflowError):
    """A dashboard request that cannot be answered (a lake path outside the lake, a missing
    object); ``status`` is the HTTP status the dashboard answers with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class MalformedPacket(UnsflowError, ValueError):
    """Bytes from an MQTT broker that are not a valid packet (MQTT 4.13: the connection is
    closed). Raised by the packet decoder of the asyncio MQTT client, which closes the
    connection and connects again; it never leaves the client."""


class MissingDependency(UnsflowError):
    """An optional dependency is missing; the message names the extra to install."""

    def __init__(self, module: str, extra: str) -> None:
        self.module = module
        self.extra = extra
        super().__init__(
            f"the Python module {module!r} is not installed; "
            f"install it with: pip install 'unsflow[{extra}]'"
        )


class IncompatibleDependency(UnsflowError):
    """An installed library lacks a part unsflow relies on: a private hook renamed or
    changed by a new release. Names the library, its version and what is missing."""

    def __init__(self, package: str, version: str, missing: str) -> None:
        self.package = package
        self.version = version
        self.missing = missing
        super().__init__(
            f"{package} {version} is not compatible with this unsflow: {missing}; "
            f"install the version unsflow pins (pip install 'unsflow') or report it"
        )
