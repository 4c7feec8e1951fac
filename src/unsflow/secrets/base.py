"""The secret provider contract."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from unsflow.config.models import SecretRef
from unsflow.errors import SecretError

__all__ = ["Credential", "SecretProvider", "credential_from_mapping"]


@dataclass(frozen=True)
class Credential:
    """A resolved credential. Its repr never shows the values."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        return f"Credential(username={'***' if self.username else None}, password=***)"

    __str__ = __repr__


def credential_from_mapping(data: Any, secret_name: str) -> Credential:
    """A credential from a JSON object with ``username`` and ``password``."""
    if not isinstance(data, Mapping):
        raise SecretError(
            f"secret {secret_name!r}: expected a JSON object with 'username' and 'password', "
            f"found {type(data).__name__}"
        )
    username = data.get("username")
    password = data.get("password")
    if not isinstance(username, str) or not username:
        raise SecretError(f"secret {secret_name!r}: expected a non-empty string 'username'")
    if password is not None and not isinstance(password, str):
        raise SecretError(f"secret {secret_name!r}: expected 'password' to be a string")
    extra = {k: v for k, v in data.items() if k not in ("username", "password")}
    return Credential(username=username, password=password, extra=extra)


class SecretProvider(ABC):
    """Resolves a :class:`SecretRef` to a :class:`Credential`.

    Contract: a missing or malformed secret raises :class:`SecretError` whose
    message names the secret and what was wrong, and never contains its value.
    """

    name: ClassVar[str]

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    @abstractmethod
    async def resolve(self, ref: SecretRef) -> Credential:
        """Fetch and parse the secret named by ``ref``."""
