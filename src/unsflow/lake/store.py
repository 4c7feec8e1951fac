"""The store factory (obstore) and durable object writes, shared by the ``s3`` target,
the model store and the lake reader.

- :func:`build_store` makes an obstore store for a local directory, an S3
  bucket (AWS or MinIO) or a store URL (``s3://``, ``gs://``, ``az://``,
  ``file://``, ``memory://``).
- :func:`credential_from_options` reads the ``KEY=VALUE`` store options of
  ``unsflow train --lake-option`` and the model store (``access-key-id``, ...).
- :class:`ObjectWriter` puts whole objects: a remote PUT (multipart above the
  chunk size) is all or nothing; on a local directory obstore renames a staged
  file into place but never fsyncs, so the writer stages under a hidden name
  (readers skip it), fsyncs, renames, and fsyncs the directories.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

from unsflow.errors import TransientError
from unsflow.lake._deps import require
from unsflow.lake.durable import fsync_dir, fsync_path

if TYPE_CHECKING:
    from unsflow.secrets.base import Credential

__all__ = ["AZURE_SCHEMES", "NO_CREDENTIAL_SCHEMES", "STORE_OPTION_KEYS", "URL_SCHEMES",
           "ObjectWriter", "build_store", "credential_from_options", "first_line"]

URL_SCHEMES = frozenset({"s3", "s3a", "gs", "az", "abfs", "abfss", "adl", "azure", "file",
                         "memory", "http", "https"})
NO_CREDENTIAL_SCHEMES = frozenset({"file", "memory", "http", "https"})
AZURE_SCHEMES = frozenset({"az", "abfs", "abfss", "adl", "azure"})
# Options of a store given as KEY=VALUE text (model store, `unsflow train --lake-option`).
STORE_OPTION_KEYS = frozenset({"endpoint", "region", "allow-http", "access-key-id",
                               "secret-access-key", "session-token", "account-name",
                               "account-key", "service-account-key", "retry-timeout"})


def build_store(*, local_path: str | None = None, s3_bucket: str | None = None,
                store_url: str | None = None, region: str | None = None,
                endpoint: str | None = None, allow_http: bool = False,
                credential: Credential | None = None,
                retry_timeout: float = 30.0) -> tuple[Any, Path | None]:
    """An obstore store for exactly one of ``local_path``, ``s3_bucket``, ``store_url``.

    Returns ``(store, local_root)``; ``local_root`` is the directory for a local
    store (created if missing), else None. ``endpoint`` implies path-style S3
    requests (MinIO). Raises OSError (a directory cannot be made), ValueError
    or obstore's errors (a store that cannot be built).
    """
    store_mod = require("obstore.store")
    retry = {"retry_timeout": timedelta(seconds=retry_timeout)}
    client = {"allow_http": True} if allow_http else None
    if local_path:
        root = Path(local_path).resolve()
        root.mkdir(parents=True, exist_ok=True)
        fsync_dir(root.parent)
        return store_mod.LocalStore(root, mkdir=True), root
    url = urlsplit(store_url or "")
    options: dict[str, Any] = {k: v for k, v in (("region", region), ("endpoint", endpoint)) if v}
    if endpoint:
        options["virtual_hosted_style_request"] = False
    if credential is not None:
        options.update(_store_credential(url.scheme or "s3", credential))
    if s3_bucket:
        return store_mod.S3Store(s3_bucket, config=options, client_options=client,
                                 retry_config=retry), None
    if url.scheme == "file":
        return store_mod.from_url(store_url, mkdir=True), Path(url2pathname(url.path))
    if url.scheme == "memory":
        return store_mod.from_url(store_url), None
    return store_mod.from_url(store_url, config=options or None, client_options=client,
                              retry_config=retry), None


def _store_credential(scheme: str, credential: Credential) -> dict[str, str]:
    """obstore config keys for a resolved credential, by kind of store."""
    if scheme in AZURE_SCHEMES:
        return {"account_name": credential.username or "", "account_key": credential.password or ""}
    if scheme == "gs":
        return {"service_account_key": credential.password or ""}
    keys = {"access_key_id": credential.username or "",
            "secret_access_key": credential.password or ""}
    token = credential.extra.get("session-token") or credential.extra.get("session_token")
    if token:
        keys["session_token"] = str(token)
    return keys


def credential_from_options(options: Mapping[str, str]) -> Credential | None:
    """The credential the store options carry (S3, Azure or GCS keys), or None."""
    from unsflow.secrets.base import Credential

    o = options
    if not any(k in o for k in ("access-key-id", "account-name", "service-account-key")):
        return None
    return Credential(
        username=o.get("access-key-id") or o.get("account-name"),
        password=(o.get("secret-access-key") or o.get("account-key")
                  or o.get("service-account-key")),
        extra={"session-token": o["session-token"]} if "session-token" in o else {})


def first_line(exc: BaseException) -> str:
    """The first line of an error's text (obstore's are long), or its type's name."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class ObjectWriter:
    """Puts whole objects into ``store``, durably (module docstring).

    ``local_root`` is the store's directory for a local store (from
    :func:`build_store`), else None. A failing PUT or file system raises
    :class:`~unsflow.errors.TransientError` naming the key, for
    ``component_id``. Thread-safe for distinct keys (the s3 target writes
    objects from worker threads).
    """

    def __init__(self, store: Any, local_root: Path | None, *, chunk_size: int,
                 component_id: str = "") -> None:
        self.store = store
        self.local_root = local_root
        self.chunk_size = chunk_size
        self.component_id = component_id
        self._synced_dirs: set[Path] = set()
        self._obstore = require("obstore")
        self._errors = (require("obstore.exceptions").BaseError, OSError)

    def put(self, key: str, data: bytes) -> None:
        """Write object ``key``; it is whole and durable when this returns."""
        obstore, errors = self._obstore, self._errors
        if self.local_root is None:
            try:
                obstore.put(self.store, key, data, chunk_size=self.chunk_size)
            except errors as exc:
                raise TransientError(f"cannot put {key}: {first_line(exc)}",
                                     component_id=self.component_id) from exc
            return
        directory, _, name = key.rpartition("/")
        staging = f"{directory}/.{name}.tmp" if directory else f".{name}.tmp"
        try:
            obstore.put(self.store, staging, data)
            fsync_path(self.local_root / staging)
            obstore.rename(self.store, staging, key)
            self._sync_dirs(self.local_root / directory)
        except errors as exc:
            with contextlib.suppress(*errors):
                obstore.delete(self.store, staging)
            raise TransientError(f"cannot write {key}: {first_line(exc)}",
                                 component_id=self.component_id) from exc

    def _sync_dirs(self, directory: Path) -> None:
        """fsync ``directory`` (the new entry) and, once, each new-looking parent up to the root."""
        fsync_dir(directory)
        path = directory
        while path != self.local_root and path not in self._synced_dirs:
            fsync_dir(path.parent)
            self._synced_dirs.add(path)
            path = path.parent
