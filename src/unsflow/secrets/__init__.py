"""Secret providers: resolve a reference (secret-name, ...) to a credential."""

from unsflow.secrets.base import Credential, SecretProvider

__all__ = ["Credential", "SecretProvider"]
