"""Secrets from mounted files: a Kubernetes Secret volume.

The file holds a JSON object with ``username`` and ``password``. Where it is:
``path`` in the reference (a file, or a directory holding a file named after
``secret-name``), else ``$UNSFLOW_SECRETS_DIR/<secret-name>``, else
``/var/run/secrets/unsflow/<secret-name>``. A directory with ``username`` and
``password`` files (the Kubernetes layout of a basic-auth Secret) works too.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from unsflow.config.models import SecretRef
from unsflow.errors import SecretError
from unsflow.secrets.base import Credential, SecretProvider, credential_from_mapping

__all__ = ["FileSecretProvider"]

DEFAULT_DIR = "/var/run/secrets/unsflow"


class FileSecretProvider(SecretProvider):
    name = "file"

    def _location(self, ref: SecretRef) -> Path:
        if ref.path:
            p = Path(ref.path)
            return p / ref.secret_name if p.is_dir() and not (p / "username").exists() else p
        return Path(self.env.get("UNSFLOW_SECRETS_DIR") or DEFAULT_DIR) / ref.secret_name

    async def resolve(self, ref: SecretRef) -> Credential:
        return await asyncio.to_thread(self._read, ref)

    def _read(self, ref: SecretRef) -> Credential:
        p = self._location(ref)
        if p.is_dir():
            user_file, pass_file = p / "username", p / "password"
            if not user_file.is_file():
                raise SecretError(f"secret {ref.secret_name!r}: {p} has no 'username' file")
            password = pass_file.read_text().strip() if pass_file.is_file() else None
            return Credential(username=user_file.read_text().strip(), password=password)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise SecretError(f"secret {ref.secret_name!r}: cannot read {p}: {exc.strerror}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            raise SecretError(
                f"secret {ref.secret_name!r}: {p} is not a JSON object with 'username' and 'password'"
            ) from None
        return credential_from_mapping(data, ref.secret_name)
