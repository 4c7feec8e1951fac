"""Secrets from environment variables.

``secret-name: mqtt-credential`` reads ``MQTT_CREDENTIAL`` (a JSON object with
username and password), or else ``MQTT_CREDENTIAL_USERNAME`` and
``MQTT_CREDENTIAL_PASSWORD``.
"""

from __future__ import annotations

import json
import re

from unsflow.config.models import SecretRef
from unsflow.errors import SecretError
from unsflow.secrets.base import Credential, SecretProvider, credential_from_mapping

__all__ = ["EnvSecretProvider", "env_var_name"]


def env_var_name(secret_name: str) -> str:
    """``mqtt-credential`` -> ``MQTT_CREDENTIAL``."""
    return re.sub(r"[^A-Za-z0-9]", "_", secret_name).upper()


class EnvSecretProvider(SecretProvider):
    name = "env"

    async def resolve(self, ref: SecretRef) -> Credential:
        var = env_var_name(ref.secret_name)
        raw = self.env.get(var)
        if raw:
            try:
                data = json.loads(raw)
            except json.JSONDecodeError:
                raise SecretError(
                    f"secret {ref.secret_name!r}: environment variable {var} is not a JSON object "
                    "with 'username' and 'password'"
                ) from None
            return credential_from_mapping(data, ref.secret_name)
        user = self.env.get(f"{var}_USERNAME")
        if user:
            return Credential(username=user, password=self.env.get(f"{var}_PASSWORD"))
        raise SecretError(
            f"secret {ref.secret_name!r}: set the environment variable {var} (JSON with "
            f"username and password) or {var}_USERNAME and {var}_PASSWORD"
        )
