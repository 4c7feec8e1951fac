"""Object store target: rows as Parquet (or JSON lines) objects in S3, MinIO, GCS, Azure or a directory.

Contract:

- ``write(batch)`` returns only after the object holding its rows is written:
  the PUT returned (S3, GCS, Azure) or, for a local directory, the file was
  fsynced under a hidden staging name, renamed into place and its directory
  fsynced. Concurrent writes share a buffer and so one object: a flush comes
  at ``batching.max-records`` rows, ``max-bytes`` payload bytes, or
  ``max-age`` seconds after the first buffered row, whichever is first, or
  ``max-idle`` seconds after the last row when at least a tenth of either
  limit waits (a burst or a drained backlog ends).
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
import gzip
import re
from dataclasses import dataclass, field
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, model_validator

from unsflow.codecs import ensure_records
from unsflow.components import Context
from unsflow.config.models import BatchingConfig, SecretRef, TargetConfig
from unsflow.errors import NotConnected, PermanentError, TransientError
from unsflow.lake._deps import require
from unsflow.lake.layout import Layout, Partition, content_digest, unique_name
from unsflow.lake.parquet import encode_parquet, json_parquet
from unsflow.lake.rows import METADATA_COLUMNS, encode_message, parquet_rows
from unsflow.lake.store import (
    NO_CREDENTIAL_SCHEMES,
    URL_SCHEMES,
    ObjectWriter,
    build_store,
)
from unsflow.message import Failure, Message
from unsflow.targets.base import Target

if TYPE_CHECKING:
    from unsflow.secrets.base import Credential

__all__ = ["ObjectStoreTarget", "ObjectStoreTargetConfig"]

_NAME = r"^[A-Za-z][A-Za-z0-9_]*$"
_payload = attrgetter("payload")
_MIB = 1024 * 1024


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
        if self.store_url and scheme not in URL_SCHEMES:
            raise ValueError(f"store-url: scheme {scheme!r} is not one of {sorted(URL_SCHEMES)}")
        s3_keys = [k for k, v in (("region", self.region), ("endpoint", self.endpoint))
                   if v is not None]
        if s3_keys and not (self.s3_bucket or scheme in ("s3", "s3a")):
            raise ValueError(f"{', '.join(s3_keys)} only apply to s3-bucket or an s3:// store-url")
        if self.credential is not None and (self.local_path or scheme in NO_CREDENTIAL_SCHEMES):
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


@dataclass
class _Buffer:
    """Rows bound for one partition; every writer with rows here awaits ``future``.

    An entry is ``(message, encoded)``: its rows (Parquet) or JSON lines; or
    the message alone: one row, its JSON object payload, encoded in the flush
    (the columnar path; no tuple per message). ``messages_only`` tells that
    every entry is of that last kind.
    """

    future: asyncio.Future[list[Failure]]
    entries: list[Any] = field(default_factory=list)
    messages_only: bool = True


class ObjectStoreTarget(Target[ObjectStoreTargetConfig]):
    """Writes batches as Hive-partitioned Parquet or JSON-lines objects (module docstring: contract)."""

    config_class = ObjectStoreTargetConfig

    def __init__(self, component_id: str, config: ObjectStoreTargetConfig,
                 context: Context) -> None:
        super().__init__(component_id, config, context)
        self._writer: ObjectWriter | None = None
        self._pending: dict[tuple[str, ...], _Buffer] = {}
        self._rows = self._bytes = 0
        self._first_at: float | None = None
        self._last_at = 0.0  # loop time of the last write that buffered rows
        # The last flush was of a full buffer: rows are coming in a burst (a drained
        # backlog), and what waits now is its tail, however small.
        self._in_burst = False
        self._has_rows = asyncio.Event()
        self._full = asyncio.Event()
        self._closing = False
        self._flusher: asyncio.Task[None] | None = None
        self._layout = Layout(config.partition_by, config.topic_levels, config.key_prefix)
        self._reserved = frozenset(METADATA_COLUMNS) | self._layout.columns
        self._ext = ".parquet" if config.format == "parquet" else (
            ".jsonl.gz" if config.compression == "gzip" else ".jsonl")

    async def start(self) -> None:
        ref = self.config.credential
        credential = await self.context.resolve_secret(ref) if ref is not None else None
        self._writer = await asyncio.to_thread(self._open_writer, credential)
        self._closing = False
        self._has_rows.clear()
        self._full.clear()
        self._flusher = asyncio.create_task(self._run_flusher(), name=f"{self.stage}:flusher")

    def _open_writer(self, credential: Credential | None) -> ObjectWriter:
        cfg = self.config
        if cfg.format == "parquet":
            require("pyarrow.parquet")
        obstore_error = require("obstore.exceptions").BaseError
        try:
            store, local_root = build_store(
                local_path=cfg.local_path, s3_bucket=cfg.s3_bucket, store_url=cfg.store_url,
                region=cfg.region, endpoint=cfg.endpoint, allow_http=cfg.allow_http,
                credential=credential, retry_timeout=cfg.retry_timeout)
        except OSError as exc:
            raise TransientError(f"cannot open the store: {exc}", component_id=self.id) from exc
        except (ValueError, obstore_error) as exc:
            raise PermanentError(f"cannot build the store: {exc}", component_id=self.id) from exc
        return ObjectWriter(store, local_root, chunk_size=cfg.multipart_chunk_size,
                            component_id=self.id)

    async def write(self, batch: list[Message]) -> list[Failure]:
        if self._flusher is None or self._flusher.done() or self._closing:
            raise NotConnected("object store target is not started (or stopping)",
                               component_id=self.id)
        loop = asyncio.get_running_loop()
        touched: dict[int, _Buffer] = {}
        failures: list[Failure] = []
        if self.config.format == "parquet" and self.config.event_type == "single":
            # One row per message: decoded and encoded in the flush's worker thread, all
            # messages of an object together (lake.parquet.json_parquet), or by the row path
            # there when a payload is not a JSON object.
            for key, messages in self._layout.groups(batch):
                buf = self._buffer(key, loop)
                buf.entries.extend(messages)
                touched[id(buf)] = buf
                self._rows += len(messages)
                self._bytes += sum(map(len, map(_payload, messages)))
        else:
            good, failures = ensure_records(batch, self.config.event_type, self.stage)
            for msg, rows in good:
                if not rows:
                    continue
                try:
                    entry = self._encode_rows(msg, rows)
                except TypeError as exc:
                    failures.append(Failure(msg, str(exc), self.stage))
                    continue
                buf = self._buffer(self._layout.partition(msg), loop)
                buf.entries.append((msg, entry))
                buf.messages_only = False
                touched[id(buf)] = buf
                self._rows += len(rows)
                self._bytes += len(msg.payload)
        if not touched:
            return failures
        self._last_at = loop.time()
        if self._first_at is None:
            self._first_at = self._last_at
            self._has_rows.set()
        limits = self.config.batching
        if self._rows >= limits.max_records or self._bytes >= limits.max_bytes:
            self._full.set()
        # asyncio.wait, not gather: a cancelled writer must not cancel futures others share.
        await asyncio.wait([buf.future for buf in touched.values()])
        errors = [buf.future.exception() for buf in touched.values()]
        if error := next((e for e in errors if e is not None), None):
            raise error
        results = [buf.future.result() for buf in touched.values()]
        if any(results):
            own = {id(msg) for msg in batch}
            for result in results:
                failures.extend(f for f in result if id(f.message) in own)
        return failures

    def _buffer(self, key: tuple[str, ...], loop: asyncio.AbstractEventLoop) -> _Buffer:
        buf = self._pending.get(key)
        if buf is None:
            buf = self._pending[key] = _Buffer(loop.create_future())
        return buf

    def _encode_rows(self, msg: Message, rows: list[dict[str, Any]]) -> Any:
        if self.config.format == "jsonl":
            return encode_message(msg, rows, self._reserved)
        return parquet_rows(msg, rows, self._reserved)

    async def _run_flusher(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._has_rows.wait()
            while not self._closing and self._first_at is not None:
                delay = self._due() - loop.time()
                if delay <= 0:
                    break
                try:
                    await asyncio.wait_for(self._full.wait(), delay)
                    break
                except TimeoutError:
                    continue  # due now, or rows came in meanwhile: look again
            self._has_rows.clear()
            await self._flush()
            if self._closing and not self._pending:
                return

    def _due(self) -> float:
        """When (loop time) the buffered rows are to be written: ``max-age`` after the first;
        earlier, ``max-idle`` after the last, once a tenth of max-records or max-bytes waits
        or the last flush was of a full buffer (a burst that ended, and its tail); while less
        waits, look again ``max-idle`` later."""
        limits = self.config.batching
        assert self._first_at is not None
        due = self._first_at + limits.max_age
        idle = limits.max_idle
        if idle is None:
            return due
        if self._in_burst or self._rows * 10 >= limits.max_records \
                or self._bytes * 10 >= limits.max_bytes:
            return min(due, self._last_at + idle)
        return min(due, asyncio.get_running_loop().time() + idle)

    async def _flush(self) -> None:
        """Write every buffered partition (one object each) and settle its writers."""
        pending, self._pending = self._pending, {}
        # A flush of a full buffer: a burst; the next flush by time (its tail) ends it.
        self._in_burst = self._full.is_set() and not self._closing
        self._rows = self._bytes = 0
        self._first_at = None
        self._full.clear()
        try:
            # An object holds at most max-records rows (a message's rows stay together),
            # so "50 messages per object" means 50, however much arrived before the flush.
            most = self.config.batching.max_records
            jobs = [(key, buf, chunk) for key, buf in pending.items()
                    for chunk in (_slices(buf.entries, most) if buf.messages_only
                                  else _chunks(buf.entries, most))]
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
                      entries: list[Any]) -> list[Failure]:
        """Encode and store one object (worker thread); the failures are unencodable messages."""
        data, failures = self._encode(entries)
        if data:
            cfg = self.config
            if cfg.object_names == "deterministic":
                # The messages the object holds (not those that failed to encode).
                failed = {id(f.message) for f in failures}
                pairs = [e if type(e) is tuple else (e, None) for e in entries]
                held = [p for p in pairs if id(p[0]) not in failed] if failed else pairs
                name = f"{cfg.object_prefix}-{content_digest(held)}{self._ext}"
            else:
                name = unique_name(cfg.object_prefix, self._ext)
            assert self._writer is not None
            self._writer.put(self._layout.key(partition, name), data)
        return failures

    def _encode(self, entries: list[Any]) -> tuple[bytes, list[Failure]]:
        if self.config.format == "jsonl":
            data = b"".join(lines for _, lines in entries)
            return (gzip.compress(data, mtime=0) if self.config.compression == "gzip" else data), []
        compression = self.config.compression
        if not any(type(e) is tuple for e in entries):
            errors = (require("pyarrow").ArrowException, ValueError, TypeError, OverflowError)
            try:
                columnar = json_parquet(entries, compression, self._reserved)
            except errors:
                columnar = None  # the row path finds the messages that cannot be written
            if columnar is not None:
                return columnar, []
        # The row path: payloads that are not JSON objects, a record of a reserved field
        # name, or values that cannot be written.
        undecided = [e for e in entries if type(e) is not tuple]
        decoded, failures = ensure_records(undecided, self.config.event_type, self.stage)
        rows_of = {id(m): records for m, records in decoded}
        rows: list[tuple[Message, Any]] = []
        for entry in entries:
            msg, encoded = entry if type(entry) is tuple else (entry, None)
            if encoded is None:
                records = rows_of.get(id(msg))
                if records is None:
                    continue  # a failure already
                try:
                    encoded = parquet_rows(msg, records, self._reserved)
                except TypeError as exc:
                    failures.append(Failure(msg, str(exc), self.stage))
                    continue
            rows.append((msg, encoded))
        data, more = encode_parquet(rows, compression, self.stage) if rows else (b"", [])
        return data, failures + more

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


def _slices(entries: list[Any], max_rows: int) -> list[list[Any]]:
    """Split entries of one row each into runs of at most ``max_rows``."""
    return [entries[i:i + max_rows] for i in range(0, len(entries), max_rows)]


def _chunks(entries: list[Any], max_rows: int) -> list[list[Any]]:
    """Split entries into runs of at most ``max_rows`` rows; one message is never split."""
    chunks: list[list[tuple[Message, Any]]] = []
    current: list[tuple[Message, Any]] = []
    rows = 0
    for entry in entries:
        # rows (parquet), JSON lines (jsonl), or a message alone: one row
        encoded = entry[1] if type(entry) is tuple else None
        n = 1 if encoded is None else len(encoded) if isinstance(encoded, list) \
            else max(1, encoded.count(b"\n"))
        if current and rows + n > max_rows:
            chunks.append(current)
            current, rows = [], 0
        current.append(entry)
        rows += n
    if current:
        chunks.append(current)
    return chunks
