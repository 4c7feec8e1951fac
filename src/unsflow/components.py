"""What every component gets from the engine: its id and a context.

The context is the component's only way to the outside world that the engine
owns: resolving secret references and the environment. Components never read
``os.environ`` themselves, so tests and reloads can give them another one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from unsflow.config.models import SecretRef
    from unsflow.secrets.base import Credential

__all__ = ["Context"]


@dataclass
class Context:
    """Shared services for components: secrets and environment."""

    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))

    async def resolve_secret(self, ref: SecretRef) -> Credential:
        """Resolve ``ref`` with its provider; SecretError names the secret, never its value."""
        from unsflow import registry
        from unsflow.errors import SecretError

        name = ref.provider_name
        try:
            provider_class = registry.load("secrets", name)
        except KeyError:
            raise SecretError(
                f"secret {ref.secret_name!r}: no secret provider named {name!r} is installed; "
                f"installed: {', '.join(registry.names('secrets'))}"
            ) from None
        return await provider_class(self.env).resolve(ref)
