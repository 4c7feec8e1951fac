"""Object store target: rows as Parquet (or JSON lines) objects in S3, MinIO, GCS, Azure or a directory.

Contract:

- ``write(batch)`` returns only after the object holding its rows is written:
  the PUT returned (S3, GCS, Azure) or, for a local directory, the file was
  fsynced under a hidden staging name, renamed into place and its directory
  fsynced. Concurrent writes share a buffer and so one object: a flush comes
  at ``batching.max-records`` rows, ``max-bytes`` payload bytes, or
  ``max-age`` seconds after the first buffered row, whichever is first.
- Objects are atomic: readers never see a partial one (an S3 PUT is all or
  nothing, and so is a multipart upload, used above ``multipart-chunk-size``;
  locally obstore writes ``<key>#<n>`` and renames, and unsflow adds fsync
  before the rename). Keys are Hive style,
  ``{key-prefix}/date=YYYY-MM-DD/hour=HH/[level=value/...]{object-prefix}-{UTC time}-{id}.parquet``,
  so DuckDB (``hive_partitioning``, ``union_by_name``) and pyarrow read a prefix as one table.
  With ``object-names: deterministic`` the name is ``{object-prefix}-{digest}.parquet``,
  the digest of the messages in the object, so writing the same messages again
  (a retry, a replay) overwrites the object instead of adding a duplicate.
- A row is a record's fields plus ``_topic`` and ``_received_at`` (UTC,
  milliseconds). Columns are the union of the fields in a file; per column
  all ints -> int64, ints and floats -> float64, bools -> bool, strings ->
  string, nested values -> JSON text, any other mix -> string. A record field
  named like a metadata or partition column is kept with ``_`` appended.
- Bad input is data: a message that cannot be decoded or whose values cannot
  be encoded comes back as a :class:`~unsflow.message.Failure`; the rest is
  written. A failing PUT or file system raises
  :class:`~unsflow.errors.TransientError` to every writer of that object;
  none of it counts as accepted and the engine retries (at-least-once).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import math
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self
from urllib.parse import quote, urlsplit
from urllib.request import url2pathname

import orjson
from pydantic import Field, model_validator

from unsflow.codecs import ensure_records
from unsflow.components import Context
from unsflow.config.models import BatchingConfig, SecretRef, TargetConfig
from unsflow.errors import MissingDependency, NotConnected, PermanentError, TransientError
from unsflow.message import Failure, Message
from unsflow.targets.base import Target
from unsflow.targets.file import METADATA_COLUMNS, encode_message, with_metadata

if TYPE_CHECKING:
    import pyarrow.dataset
    import pyarrow.fs

    from unsflow.secrets.base import Credential

__all__ = ["ObjectStoreTarget", "ObjectStoreTargetConfig", "build_store", "content_digest",
           "fsync_path", "open_lake"]

_URL_SCHEMES = {"s3", "s3a", "gs", "az", "abfs", "abfss", "adl", "azure", "file", "memory",
                "http", "https"}
_NO_CREDENTIAL = {"file", "memory", "http", "https"}
_AZURE = {"az", "abfs", "abfss", "adl", "azure"}
Partition = Literal["date", "hour", "topic-levels"]
_NAME = r"^[A-Za-z][A-Za-z0-9_]*$"
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
_MIB = 1024 * 1024
# Message.headers a Kafka source sets; together they identify a record for good.
KAFKA_COORDINATES = ("kafka.topic", "kafka.partition", "kafka.offset")


class ObjectStoreTargetConfig(TargetConfig):
    """Where and how objects are written. Exactly one of s3-bucket, local-path, store-url."""

    type: Literal["s3"] = Field(description="Target type: an object store (S3, MinIO, GCS, Azure, "
                                            "local directory).")
    s3_bucket: str | None = Field(None, min_length=1, description="S3 bucket (AWS, or MinIO "
                                  "with endpoint).")
    local_path: str | None = Field(None, min_length=1, description="Local directory (relative "
                                   "to the working directory, created if missing); no S3 needed.")
    store_url: str | None = Field(None, min_length=1, description="Store URL for obstore: "
                                  "s3://bucket, gs://bucket, az://container, file:///abs/path.")
    region: str | None = Field(None, description="S3 region; default from the AWS environment.")
    endpoint: str | None = Field(None, description="S3 endpoint override (MinIO: "
                                 "http://host:9000); implies path-style requests.")
    allow_http: bool = Field(False, description="Allow plain HTTP to the endpoint (MinIO in tests).")
    credential: SecretRef | None = Field(None, description="Store credential. S3: username = "
                                         "access key id, password = secret key; Azure: username "
                                         "= storage account, password = account key; GCS: "
                                         "password = service account key (JSON). Default: the "
                                         "store's environment variables.")
    retry_timeout: float = Field(30.0, gt=0, description="Seconds a failing request is retried "
                                 "inside the store client before the engine's backoff takes over.")
    key_prefix: str = Field("", description="Key prefix of every object (the dataset root).")
    object_prefix: str = Field("part", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                               description="Start of each object's file name.")
    format: Literal["parquet", "jsonl"] = Field("parquet", description="Object format.")
    compression: Literal["zstd", "snappy", "gzip", "none"] = Field(
        "zstd", description="Parquet codec. jsonl: gzip writes .jsonl.gz, default is uncompressed.")
    object_names: Literal["unique", "deterministic"] = Field(
        "unique", description="unique: time + random id, a replay adds an object; "
        "deterministic: a digest of the object's messages, a replay overwrites it.")
    multipart_chunk_size: int = Field(
        5 * _MIB, ge=5 * _MIB, le=5 * 1024 * _MIB, description="Remote stores: an object larger "
        "than this goes up as a multipart upload in parts of this size (bytes; S3 allows 5 MiB "
        "to 5 GiB).")
    batching: BatchingConfig = Field(default_factory=BatchingConfig,
                                     description="When buffered rows are flushed to one object.")
    partition_by: list[Partition] = Field(
        default=["date", "hour"],
        description="Hive partitions in key order: date and hour (UTC, of _received_at) and "
        "topic-levels.")
    topic_levels: list[str] = Field(default=[], description="Partition names for the "
                                    "first MQTT topic levels, e.g. [enterprise, site, area].")

    @model_validator(mode="after")
    def _check(self) -> Self:
        where = [k for k, v in (("s3-bucket", self.s3_bucket), ("local-path", self.local_path),
                                ("store-url", self.store_url)) if v]
        if len(where) != 1:
            raise ValueError("exactly one of s3-bucket, local-path, store-url must be set; "
                             f"found {' and '.join(where) or 'none'}")
        scheme = urlsplit(self.store_url).scheme if self.store_url else ""
        if self.store_url and scheme not in _URL_SCHEMES:
            raise ValueError(f"store-url: scheme {scheme!r} is not one of {sorted(_URL_SCHEMES)}")
        s3_keys = [k for k, v in (("region", self.region), ("endpoint", self.endpoint))
                   if v is not None]
        if s3_keys and not (self.s3_bucket or scheme in ("s3", "s3a")):
            raise ValueError(f"{', '.join(s3_keys)} only apply to s3-bucket or an s3:// store-url")
        if self.credential is not None and (self.local_path or scheme in _NO_CREDENTIAL):
            raise ValueError("credential applies to S3, GCS and Azure stores only")
        if self.allow_http and (self.local_path or scheme in ("file", "memory")):
            raise ValueError("allow-http only applies to a remote store")
        if any(s in (".", "..") for s in self.key_prefix.split("/")):
            raise ValueError("key-prefix: '.' and '..' are not allowed as path segments")
        if len(set(self.partition_by)) != len(self.partition_by):
            raise ValueError("partition-by: each partition may appear once")
        if ("topic-levels" in self.partition_by) != bool(self.topic_levels):
            raise ValueError("topic-levels (names) and 'topic-levels' in partition-by go together")
        for name in self.topic_levels:
            if not re.match(_NAME, name) or name in ("date", "hour"):
                raise ValueError(f"topic-levels: {name!r} must match {_NAME} and not be date/hour")
        if len(set(self.topic_levels)) != len(self.topic_levels):
            raise ValueError("topic-levels: names must be unique")
        if self.format == "jsonl" and self.compression in ("zstd", "snappy") \
                and "compression" in self.model_fields_set:
            raise ValueError("format jsonl supports compression gzip or none")
        return self


def _require(module: str) -> Any:
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependency(module.partition(".")[0], "lake") from None


def _plain(value: Any, name: str) -> Any:
    """``value`` as None, bool, int64, float or str (nested values as JSON text)."""
    kind = type(value)
    if value is None or kind is bool or kind is str or kind is float:
        return value
    if kind is int:
        return value if _INT64_MIN <= value <= _INT64_MAX else str(value)
    try:
        text = orjson.dumps(value, option=_JSON_OPTIONS)
    except orjson.JSONEncodeError as exc:
        raise TypeError(f"field {name!r}: cannot encode a value of type {kind.__name__} "
                        f"({exc})") from None
    decoded = orjson.loads(text)  # datetime -> ISO text, numpy scalars -> numbers
    return text.decode() if kind in (dict, list, tuple) or isinstance(decoded, (dict, list)) \
        else _plain(decoded, name)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return orjson.dumps(value).decode()


def _column(values: list[Any]) -> Any:
    import pyarrow as pa

    kinds = {type(v) for v in values}
    kinds.discard(type(None))
    if not kinds:
        return pa.nulls(len(values))
    if kinds == {bool}:
        return pa.array(values, pa.bool_())
    if kinds == {int}:
        return pa.array(values, pa.int64())
    if kinds <= {int, float}:
        return pa.array(values, pa.float64())
    if kinds != {str}:
        values = [None if v is None else _text(v) for v in values]
    return pa.array(values, pa.string())


def _parquet_bytes(rows: list[dict[str, Any]], compression: str) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    for meta in METADATA_COLUMNS:  # metadata last, in a fixed order
        names.pop(meta, None)
    columns = [_column([row.get(n) for row in rows]) for n in names]
    columns.append(pa.array([row["_topic"] for row in rows], pa.string()))
    columns.append(pa.array([row["_received_at"] for row in rows], pa.timestamp("ms", tz="UTC")))
    table = pa.table(columns, names=[*names, *METADATA_COLUMNS])
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression=None if compression == "none" else compression)
    return bytes(sink.getvalue())


def fsync_path(path: Path, directory: bool = False) -> None:
    """fsync a file, or with ``directory`` a directory (so a rename in it is durable)."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@lru_cache(maxsize=1024)
def _hour_parts(hour: int) -> tuple[str, str]:
    t = time.gmtime(hour * 3600)
    return time.strftime("date=%Y-%m-%d", t), time.strftime("hour=%H", t)


@lru_cache(maxsize=16384)
def _level_parts(topic: str, names: tuple[str, ...]) -> tuple[str, ...]:
    """``name=value`` per level; a missing or empty level is ``_``, others percent-encoded."""
    levels = topic.split("/")
    return tuple(f"{name}={quote(levels[i], safe='') if i < len(levels) and levels[i] else '_'}"
                 for i, name in enumerate(names))


@dataclass
class _Buffer:
    """Rows bound for one object; every writer with rows here awaits ``future``."""

    future: asyncio.Future[list[Failure]]
    entries: list[tuple[Message, Any]] = field(default_factory=list)


class ObjectStoreTarget(Target[ObjectStoreTargetConfig]):
    """Writes batches as Hive-partitioned Parquet or JSON-lines objects (module docstring: contract)."""

    config_class = ObjectStoreTargetConfig

    def __init__(self, component_id: str, config: ObjectStoreTargetConfig,
                 context: Context) -> None:
        super().__init__(component_id, config, context)
        self._store: Any = None
        self._local_root: Path | None = None
        self._synced_dirs: set[Path] = set()
        self._pending: dict[tuple[str, ...], _Buffer] = {}
        self._rows = self._bytes = 0
        self._first_at: float | None = None
        self._has_rows = asyncio.Event()
        self._full = asyncio.Event()
        self._closing = False
        self._flusher: asyncio.Task[None] | None = None
        self._level_names = tuple(config.topic_levels)
        reserved = set(METADATA_COLUMNS) | {p for p in config.partition_by if p != "topic-levels"}
        if "topic-levels" in config.partition_by:
            reserved.update(config.topic_levels)
        self._reserved = frozenset(reserved)
        self._prefix = [s for s in config.key_prefix.split("/") if s]
        self._ext = ".parquet" if config.format == "parquet" else (
            ".jsonl.gz" if config.compression == "gzip" else ".jsonl")

    async def start(self) -> None:
        ref = self.config.credential
        credential = await self.context.resolve_secret(ref) if ref is not None else None
        self._store = await asyncio.to_thread(self._build_store, credential)
        self._closing = False
        self._has_rows.clear()
        self._full.clear()
        self._flusher = asyncio.create_task(self._run_flusher(), name=f"{self.stage}:flusher")

    def _build_store(self, credential: Credential | None) -> Any:
        cfg = self.config
        if cfg.format == "parquet":
            _require("pyarrow.parquet")
        obstore_error = _require("obstore.exceptions").BaseError
        try:
            store, self._local_root = build_store(
                local_path=cfg.local_path, s3_bucket=cfg.s3_bucket, store_url=cfg.store_url,
                region=cfg.region, endpoint=cfg.endpoint, allow_http=cfg.allow_http,
                credential=credential, retry_timeout=cfg.retry_timeout)
        except OSError as exc:
            raise TransientError(f"cannot open the store: {exc}", component_id=self.id) from exc
        except (ValueError, obstore_error) as exc:
            raise PermanentError(f"cannot build the store: {exc}", component_id=self.id) from exc
        return store

    async def write(self, batch: list[Message]) -> list[Failure]:
        if self._flusher is None or self._flusher.done() or self._closing:
            raise NotConnected("object store target is not started (or stopping)",
                               component_id=self.id)
        good, failures = ensure_records(batch, self.config.event_type, self.stage)
        loop = asyncio.get_running_loop()
        touched: dict[int, _Buffer] = {}
        for msg, rows in good:
            if not rows:
                continue
            try:
                entry = self._encode_rows(msg, rows)
            except TypeError as exc:
                failures.append(Failure(msg, str(exc), self.stage))
                continue
            key = self._partition(msg)
            buf = self._pending.get(key)
            if buf is None:
                buf = self._pending[key] = _Buffer(loop.create_future())
            buf.entries.append((msg, entry))
            touched[id(buf)] = buf
            self._rows += len(rows)
            self._bytes += len(msg.payload)
        if not touched:
            return failures
        if self._first_at is None:
            self._first_at = loop.time()
            self._has_rows.set()
        limits = self.config.batching
        if self._rows >= limits.max_records or self._bytes >= limits.max_bytes:
            self._full.set()
        # asyncio.wait, not gather: a cancelled writer must not cancel futures others share.
        await asyncio.wait([buf.future for buf in touched.values()])
        own = {id(msg) for msg in batch}
        errors = [buf.future.exception() for buf in touched.values()]
        if error := next((e for e in errors if e is not None), None):
            raise error
        for buf in touched.values():
            failures.extend(f for f in buf.future.result() if id(f.message) in own)
        return failures

    def _encode_rows(self, msg: Message, rows: list[dict[str, Any]]) -> Any:
        if self.config.format == "jsonl":
            return encode_message(msg, rows, self._reserved)
        received_ms = int(msg.received_at * 1000)
        reserved = self._reserved
        out = []
        for row in rows:
            if reserved.isdisjoint(row):
                full = dict(row)
                full["_topic"] = msg.topic
                full["_received_at"] = received_ms
            else:
                full = with_metadata(row, msg.topic, received_ms, reserved)
            # Fast path: JSON-decoded records are nearly always flat scalars already.
            for value in full.values():
                kind = type(value)
                if not (kind is str or kind is float or kind is bool or value is None
                        or (kind is int and _INT64_MIN <= value <= _INT64_MAX)):
                    full = {name: _plain(v, name) for name, v in full.items()}
                    break
            out.append(full)
        return out

    def _partition(self, msg: Message) -> tuple[str, ...]:
        parts: list[str] = []
        for name in self.config.partition_by:
            if name == "topic-levels":
                parts.extend(_level_parts(msg.topic, self._level_names))
            else:
                parts.append(_hour_parts(int(msg.received_at // 3600))[name == "hour"])
        return tuple(parts)

    async def _run_flusher(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._has_rows.wait()
            if not self._closing and self._first_at is not None:
                delay = self._first_at + self.config.batching.max_age - loop.time()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._full.wait(), delay)
            self._has_rows.clear()
            await self._flush()
            if self._closing and not self._pending:
                return

    async def _flush(self) -> None:
        """Write every buffered partition (one object each) and settle its writers."""
        pending, self._pending = self._pending, {}
        self._rows = self._bytes = 0
        self._first_at = None
        self._full.clear()
        try:
            # An object holds at most max-records rows (a message's rows stay together),
            # so "50 messages per object" means 50, however much arrived before the flush.
            jobs = [(key, buf, chunk) for key, buf in pending.items()
                    for chunk in _chunks(buf.entries, self.config.batching.max_records)]
            results = await asyncio.gather(
                *(asyncio.to_thread(self._write_object, key, chunk) for key, _, chunk in jobs),
                return_exceptions=True)
            outcome: dict[int, list[Failure]] = {id(buf): [] for buf in pending.values()}
            for (_, buf, _), result in zip(jobs, results):
                if isinstance(result, BaseException):
                    if not buf.future.done():
                        buf.future.set_exception(result)
                else:
                    outcome[id(buf)].extend(result)
            for buf in pending.values():
                if not buf.future.done():
                    buf.future.set_result(outcome[id(buf)])
        finally:
            for buf in pending.values():  # cancelled mid-flush: no writer waits forever
                if not buf.future.done():
                    buf.future.set_exception(NotConnected("target stopped before the write "
                                                          "completed", component_id=self.id))

    def _write_object(self, partition: tuple[str, ...],
                      entries: list[tuple[Message, Any]]) -> list[Failure]:
        """Encode and store one object (worker thread); the failures are unencodable messages."""
        data, failures = self._encode(entries)
        if data:
            if self.config.object_names == "deterministic":
                name = f"{self.config.object_prefix}-{content_digest(entries)}{self._ext}"
            else:
                now = time.time()
                stamp = (time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
                         + f"{int(now * 1000) % 1000:03d}Z")
                name = f"{self.config.object_prefix}-{stamp}-{uuid.uuid4().hex[:12]}{self._ext}"
            self._put("/".join([*self._prefix, *partition, name]), data)
        return failures

    def _encode(self, entries: list[tuple[Message, Any]]) -> tuple[bytes, list[Failure]]:
        if self.config.format == "jsonl":
            data = b"".join(lines for _, lines in entries)
            return (gzip.compress(data, mtime=0) if self.config.compression == "gzip" else data), []
        pa = _require("pyarrow")
        codec = self.config.compression
        errors = (pa.ArrowException, ValueError, TypeError, OverflowError)
        try:
            return _parquet_bytes([r for _, rows in entries for r in rows], codec), []
        except errors:
            pass
        # Find the messages that cannot be encoded; write the others.
        good: list[dict[str, Any]] = []
        failures: list[Failure] = []
        for msg, rows in entries:
            try:
                _parquet_bytes(rows, codec)
            except errors as exc:
                failures.append(Failure(msg, f"rows cannot be written as Parquet: {exc}", self.stage))
            else:
                good.extend(rows)
        return (_parquet_bytes(good, codec) if good else b""), failures

    def _put(self, key: str, data: bytes) -> None:
        obstore = _require("obstore")
        errors = (_require("obstore.exceptions").BaseError, OSError)
        if self._local_root is None:
            try:
                obstore.put(self._store, key, data, chunk_size=self.config.multipart_chunk_size)
            except errors as exc:
                raise TransientError(f"cannot put {key}: {_first_line(exc)}",
                                     component_id=self.id) from exc
            return
        # obstore's LocalStore renames a staged file into place but never fsyncs: stage under a
        # hidden name (readers skip it), fsync, rename, fsync the directories.
        directory, _, name = key.rpartition("/")
        staging = f"{directory}/.{name}.tmp" if directory else f".{name}.tmp"
        try:
            obstore.put(self._store, staging, data)
            fsync_path(self._local_root / staging)
            obstore.rename(self._store, staging, key)
            self._sync_dirs(self._local_root / directory)
        except errors as exc:
            with contextlib.suppress(*errors):
                obstore.delete(self._store, staging)
            raise TransientError(f"cannot write {key}: {_first_line(exc)}",
                                 component_id=self.id) from exc

    def _sync_dirs(self, directory: Path) -> None:
        """fsync ``directory`` (the new entry) and, once, each new-looking parent up to the root."""
        fsync_path(directory, directory=True)
        path = directory
        while path != self._local_root and path not in self._synced_dirs:
            fsync_path(path.parent, directory=True)
            self._synced_dirs.add(path)
            path = path.parent

    async def stop(self) -> None:
        self._closing = True
        flusher, self._flusher = self._flusher, None
        if flusher is None:
            return
        self._has_rows.set()
        self._full.set()
        try:
            await flusher
        finally:
            if not flusher.done():
                flusher.cancel()


def build_store(*, local_path: str | None = None, s3_bucket: str | None = None,
                store_url: str | None = None, region: str | None = None,
                endpoint: str | None = None, allow_http: bool = False,
                credential: Credential | None = None,
                retry_timeout: float = 30.0) -> tuple[Any, Path | None]:
    """An obstore store for exactly one of ``local_path``, ``s3_bucket``, ``store_url``.

    Returns ``(store, local_root)``; ``local_root`` is the directory for a local
    store (created if missing), else None. ``endpoint`` implies path-style S3
    requests (MinIO). Shared by the ``s3`` target and the model store
    (:mod:`unsflow.ml.store`). Raises OSError (a directory cannot be made),
    ValueError or obstore's errors (a store that cannot be built).
    """
    store_mod = _require("obstore.store")
    retry = {"retry_timeout": timedelta(seconds=retry_timeout)}
    client = {"allow_http": True} if allow_http else None
    if local_path:
        root = Path(local_path).resolve()
        root.mkdir(parents=True, exist_ok=True)
        fsync_path(root.parent, directory=True)
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
    if scheme in _AZURE:
        return {"account_name": credential.username or "", "account_key": credential.password or ""}
    if scheme == "gs":
        return {"service_account_key": credential.password or ""}
    keys = {"access_key_id": credential.username or "",
            "secret_access_key": credential.password or ""}
    token = credential.extra.get("session-token") or credential.extra.get("session_token")
    if token:
        keys["session_token"] = str(token)
    return keys


def content_digest(entries: list[tuple[Message, Any]]) -> str:
    """32 hex digits that depend only on which messages an object holds (not their order).

    A message counts as its topic and payload plus, from a Kafka source, its
    topic/partition/offset headers (``KAFKA_COORDINATES``), which identify it
    across a replay; from any other source, its receive time instead, so that
    two equal readings received at different times never share a name (one
    would overwrite the other). A retry or a spool replay of the same messages
    keeps their receive time, and so the name.
    """
    digests = []
    for msg, _ in entries:
        h = hashlib.blake2b(digest_size=16)
        headers = msg.headers or {}
        coordinates = [headers.get(k) for k in KAFKA_COORDINATES]
        if all(c is not None for c in coordinates):
            identity = [b"kafka", *(c if isinstance(c, bytes) else str(c).encode()
                                    for c in coordinates)]
        else:
            identity = [b"received", repr(float(msg.received_at)).encode()]
        for part in (msg.topic.encode(), msg.payload, *identity):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
        digests.append(h.digest())
    digests.sort()
    return hashlib.blake2b(b"".join(digests), digest_size=16).hexdigest()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def open_lake(root: str | os.PathLike[str],
              filesystem: pyarrow.fs.FileSystem | None = None) -> pyarrow.dataset.Dataset:
    """The Parquet objects under ``root`` as one pyarrow dataset.

    ``root`` is a local directory, or with ``filesystem`` a path in it: for
    MinIO or S3, ``"bucket/key-prefix"`` with
    ``pyarrow.fs.S3FileSystem(endpoint_override=..., access_key=..., secret_key=...)``.
    Hive partitions become columns; the schema is the union of every file's
    columns with types promoted (int64 in one file and float64 in another
    read as float64), which ``pyarrow.dataset.dataset`` alone does not do: it
    takes the first file's schema.
    """
    ds = _require("pyarrow.dataset")
    fs = _require("pyarrow.fs")
    pa = _require("pyarrow")
    if filesystem is None:
        filesystem, base = fs.LocalFileSystem(), os.path.abspath(root)
    else:
        base = os.fspath(root).rstrip("/")
    factory = ds.FileSystemDatasetFactory(
        filesystem, fs.FileSelector(base, recursive=True), ds.ParquetFileFormat(),
        ds.FileSystemFactoryOptions(partitioning=ds.HivePartitioning.discover(),
                                    partition_base_dir=base))
    try:
        schema = factory.inspect(promote_options="permissive")
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        # A column that is a number in one object and text in another (a UNS
        # value that is sometimes "RUNNING"): read it as text, as DuckDB's
        # union_by_name does, instead of failing on the whole lake.
        # inspect_schemas() gives the first object's schema and the partitions';
        # every object's footer is needed here.
        first, partitions = factory.inspect_schemas()
        fmt = ds.ParquetFileFormat()
        files = factory.finish(pa.unify_schemas([first, partitions])).files
        schema = _widest_schema([fmt.inspect(f, filesystem) for f in files] + [partitions])
    return factory.finish(schema)


def _widest_schema(schemas: list[Any]) -> Any:
    """One schema for all: same type kept, ints and floats to float64, other mixes to string."""
    pa = _require("pyarrow")
    types: dict[str, list[Any]] = {}
    for schema in schemas:
        for fld in schema:
            types.setdefault(fld.name, []).append(fld.type)
    fields = []
    for name, found in types.items():
        kinds = {t for t in found if not pa.types.is_null(t)}
        if not kinds:
            kind = pa.null()
        elif len(kinds) == 1:
            kind = kinds.pop()
        elif all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in kinds):
            kind = pa.float64()
        else:
            kind = pa.string()
        fields.append(pa.field(name, kind))
    return pa.schema(fields)


def _chunks(entries: list[tuple[Message, Any]], max_rows: int) -> list[list[tuple[Message, Any]]]:
    """Split entries into runs of at most ``max_rows`` rows; one message is never split."""
    chunks: list[list[tuple[Message, Any]]] = []
    current: list[tuple[Message, Any]] = []
    rows = 0
    for entry in entries:
        encoded = entry[1]  # rows (parquet) or JSON lines (jsonl)
        n = len(encoded) if isinstance(encoded, list) else max(1, encoded.count(b"\n"))
        if current and rows + n > max_rows:
            chunks.append(current)
            current, rows = [], 0
        current.append(entry)
        rows += n
    if current:
        chunks.append(current)
    return chunks
