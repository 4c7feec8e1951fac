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
    ├── LakeError                the data lake cannot be read (no such directory, bad URL)
    ├── ModelStoreError          the model store cannot be read or written (names store, model)
    │   ├── ModelNotFound        no such model, or no such (complete) version
    │   └── ModelCorrupt         an artifact that cannot be read or loaded
    ├── DashboardError           a dashboard request that cannot be answered; carries the HTTP status
    ├── MissingDependency        an optional extra is not installed; names the extra
    └── IncompatibleDependency   an installed library lacks a part unsflow relies on (a
                                 renamed private hook); names it and the library version

Third-party exceptions (gmqtt, httpx, pyarrow, obstore) are mapped to these at
the component boundary: ``raise TransientError(...) from exc``.
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
    "LakeError",
    "ModelStoreError",
    "ModelNotFound",
    "ModelCorrupt",
    "DashboardError",
    "MissingDependency",
    "IncompatibleDependency",
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


class LakeError(UnsflowError):
    """The data lake cannot be read: no such directory, an unsupported URL."""


class ModelStoreError(UnsflowError):
    """The model store cannot be read or written; the message names the store and the model."""


class ModelNotFound(ModelStoreError):
    """No such model in the store, or no such complete version of it."""


class ModelCorrupt(ModelStoreError):
    """A model artifact that cannot be read (bad JSON, missing model file) or loaded."""


class DashboardError(UnsflowError):
    """A dashboard request that cannot be answered (a lake path outside the lake, a missing
    object); ``status`` is the HTTP status the dashboard answers with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


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
