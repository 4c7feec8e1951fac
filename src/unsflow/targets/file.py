"""File target: rows appended to a local JSON-lines file.

Contract:

- ``write(batch)`` returns once every row of the batch's messages is written,
  flushed and (with ``fsync: true``, the default) fsynced to the file; only
  then does the engine acknowledge them. One batch is one ``write(2)`` loop
  under a lock, so the lines of concurrent batches never interleave.
- A row (:mod:`unsflow.lake.rows`) is one JSON object per line: the record's fields, then ``_topic``
  (the MQTT topic) and ``_received_at`` (epoch milliseconds, an integer). A
  record field named like a metadata column is kept with a ``_`` appended.
- A message that cannot be decoded (invalid UTF-8, empty payload, a batch
  payload that is not an array of objects) or whose values JSON cannot encode
  comes back as a :class:`~unsflow.message.Failure`; the rest is written.
- A failed write (disk full, I/O error) truncates the file back to where the
  batch began, so no torn line is left, and raises
  :class:`~unsflow.errors.TransientError`; nothing of the batch is accepted.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Literal

from pydantic import Field

from unsflow.codecs import ensure_records
from unsflow.components import Context
from unsflow.config.models import TargetConfig
from unsflow.errors import NotConnected, TransientError
from unsflow.lake.durable import fsync_dir
from unsflow.lake.rows import encode_message
from unsflow.message import Failure, Message
from unsflow.targets.base import Target

__all__ = ["FileTarget", "FileTargetConfig"]


class FileTargetConfig(TargetConfig):
    """A local JSON-lines file."""

    type: Literal["file"] = Field(description="Target type: a local JSON-lines file.")
    path: str = Field(
        min_length=1,
        description="The JSON-lines file to append to (relative to the working directory); "
        "missing parent directories are created.",
    )
    fsync: bool = Field(
        True,
        description="fsync the file before a batch counts as accepted. false trades durability "
        "on power loss for speed.",
    )


class FileTarget(Target[FileTargetConfig]):
    """Appends rows as JSON lines to a local file (see the module docstring for the contract)."""

    config_class = FileTargetConfig

    def __init__(self, component_id: str, config: FileTargetConfig, context: Context) -> None:
        super().__init__(component_id, config, context)
        self._fd: int | None = None
        self._lock = asyncio.Lock()

    @property
    def path(self) -> Path:
        return Path(self.config.path)

    async def start(self) -> None:
        try:
            self._fd = await asyncio.to_thread(self._open)
        except OSError as exc:
            raise TransientError(f"cannot open {self.path}: {exc}", component_id=self.id) from exc

    def _open(self) -> int:
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        existed = path.exists()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        if not existed and self.config.fsync:
            fsync_dir(path.parent)  # a new file is durable only once its directory entry is
        return fd

    async def write(self, batch: list[Message]) -> list[Failure]:
        if self._fd is None:
            raise NotConnected("file target is not started (or already stopped)",
                               component_id=self.id)
        good, failures = ensure_records(batch, self.config.event_type, self.stage)
        chunks: list[bytes] = []
        for msg, rows in good:
            try:
                chunks.append(encode_message(msg, rows))
            except TypeError as exc:
                failures.append(Failure(msg, str(exc), self.stage))
        data = b"".join(chunks)
        if data:
            async with self._lock:
                await asyncio.to_thread(self._append, data)
        return failures

    def _append(self, data: bytes) -> None:
        fd = self._fd
        if fd is None:
            raise NotConnected("file target was stopped during a write", component_id=self.id)
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if self.config.fsync:
                os.fsync(fd)
        except OSError as exc:
            try:
                os.ftruncate(fd, start)  # no torn line for the retry to append after
            except OSError:
                pass
            raise TransientError(f"cannot append to {self.path}: {exc}",
                                 component_id=self.id) from exc

    async def stop(self) -> None:
        async with self._lock:
            fd, self._fd = self._fd, None
            if fd is not None:
                os.close(fd)
