"""Spool: the on-disk store-and-forward queue of one target.

When a target cannot take a batch (it is down), the batch of processed
messages is written here and counts as accepted, so the source acknowledges
it; a drainer (:meth:`unsflow.engine.path.TargetPath.drain_spool`) writes the
spooled batches to the target, oldest first, once it is back.

Contract:

- ``append(batch)`` returns only when the batch is durable: written to a
  temporary file, fsynced, renamed to ``<seq>-<created ms>.batch`` and the
  directory fsynced. Files are drained in ``seq`` order, which is the order
  of the appends. Group commit: batches appended while a file is being
  written go together into the next file (one fsync for all), in order.
- Bounded: an append that would take the spool past ``max-bytes``, or that
  the disk refuses (ENOSPC, any other ``OSError``), raises :class:`SpoolFull`
  and writes nothing; ``full`` then holds the reason until an append
  succeeds or the spool is empty. Never a silent drop: the caller waits.
- Crash-safe: a restart with the same directory finds every renamed file
  (a new :class:`Spool` indexes them at ``open``) and removes leftover
  temporary files, which were never acknowledged.
- One process per directory: ``open`` (or the first append) takes an
  exclusive ``flock`` on ``.lock``, so two replicas never share one spool
  (``open`` raises :class:`SpoolInUse`; an append refuses as full, saying so).
- A corrupt file (bad header, an unparseable line) never stops the pipeline:
  :meth:`read` returns each unreadable line as a :class:`~unsflow.message.Failure`
  holding the raw line, bound for the dead letter, and the good lines as messages.

File format (JSON lines, orjson): a header
``{"v": 1, "target": ID, "count": N, "created": EPOCH}``, then one line per
message: topic ``t``, payload ``p`` (text when valid UTF-8) or ``pb``
(base64), ``q`` qos, ``rt`` retain, ``ts`` received_at, ``s`` source_id, ``a``
attempts, ``r`` record (absent when not decoded), ``pr`` properties, ``h``
headers. Bytes inside record, properties or headers are kept as
``{"$b": base64}`` and restored. Not preserved: tuples come back as lists,
datetimes as ISO text, numpy values as numbers or lists, non-text dict keys
as text. A message whose record orjson cannot encode at all is not spooled;
:meth:`append` returns it as a failure for the dead letter.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import fcntl
import logging
import os
import re
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

from unsflow.errors import SpoolFull, SpoolInUse
from unsflow.lake.durable import fsync_dir, write_file
from unsflow.message import NOT_DECODED, Failure, Message

__all__ = ["Spool", "SpoolEntry", "decode_message", "encode_message"]

log = logging.getLogger("unsflow.spool")

FORMAT_VERSION = 1
_NAME = re.compile(r"^(\d{12})-(\d+)\.batch$")
_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
_BYTES_TAG = b'"$b"'
# Seconds between two "spool full" errors in the log.
FULL_LOG_INTERVAL = 30.0
# Room for a file's header line when checking max-bytes before it is built.
_HEADER_BYTES = 128


@dataclass(frozen=True)
class SpoolEntry:
    """One spooled batch file."""

    seq: int
    created: float
    size: int
    count: int
    path: Path


def _default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$b": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (set, frozenset)):
        return list(value)
    raise TypeError(f"cannot spool a value of type {type(value).__name__}")


def _restore(value: Any) -> Any:
    """``{"$b": ...}`` back to bytes, anywhere inside ``value``."""
    if isinstance(value, dict):
        if len(value) == 1 and "$b" in value and isinstance(value["$b"], str):
            return base64.b64decode(value["$b"])
        return {k: _restore(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore(v) for v in value]
    return value


def encode_message(msg: Message) -> bytes:
    """One spool line (without the newline). Raises TypeError when it cannot be encoded."""
    entry: dict[str, Any] = {"t": msg.topic, "q": msg.qos, "ts": msg.received_at,
                             "s": msg.source_id, "a": msg.attempts}
    if msg.retain:
        entry["rt"] = True
    try:
        entry["p"] = msg.payload.decode("utf-8")
    except UnicodeDecodeError:
        entry["pb"] = base64.b64encode(msg.payload).decode("ascii")
    if msg.record is not NOT_DECODED:
        entry["r"] = msg.record
    if msg.properties:
        entry["pr"] = msg.properties
    if msg.headers:
        entry["h"] = msg.headers
    try:
        return orjson.dumps(entry, default=_default, option=_OPTIONS)
    except orjson.JSONEncodeError as exc:
        raise TypeError(str(exc)) from None


def decode_message(line: bytes) -> Message:
    """The message of one spool line. Raises ValueError when the line is not one."""
    entry = orjson.loads(line)
    if not isinstance(entry, dict) or not isinstance(entry.get("t"), str):
        raise ValueError("not a spooled message (no topic)")
    if _BYTES_TAG in line:
        entry = _restore(entry)
    if "p" in entry:
        payload = entry["p"].encode("utf-8")
    else:
        payload = base64.b64decode(entry["pb"], validate=True)
    return Message(topic=entry["t"], payload=payload, qos=int(entry.get("q", 0)),
                   retain=bool(entry.get("rt", False)), received_at=float(entry.get("ts", 0.0)),
                   properties=entry.get("pr"), record=entry.get("r", NOT_DECODED),
                   source_id=entry.get("s", ""), attempts=int(entry.get("a", 0)),
                   headers=entry.get("h"))


class Spool:
    """The spool directory of one target (module docstring: contract)."""

    def __init__(self, root: str | os.PathLike[str], target_id: str, *, max_bytes: int,
                 max_age: float | None) -> None:
        self.target_id = target_id
        self.directory = Path(root) / quote(target_id, safe="")
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.entries: deque[SpoolEntry] = deque()
        self.bytes = 0
        self.messages = 0
        self.spooled_total = 0   # messages appended, ever (this process)
        self.drained_total = 0   # messages removed after the target took them
        self.full: str | None = None  # why the last append was refused; None when not full
        self._next_seq = 1
        self._lock_fd: int | None = None
        self._append_lock = asyncio.Lock()
        self._queue: list[tuple[list[bytes], asyncio.Future[None]]] = []
        self._full_logged_at = -FULL_LOG_INTERVAL
        self._full_announced = False
        self._changed = asyncio.Event()

    @property
    def empty(self) -> bool:
        return not self.entries

    # --- opening -------------------------------------------------------------

    def open(self) -> None:
        """Index an existing spool (a restart), removing leftover temporary files.

        Nothing is created when the directory does not exist: a target that
        never spools leaves no trace. Raises :class:`SpoolInUse`.
        """
        if not self.directory.is_dir():
            return
        self._lock()
        found: list[SpoolEntry] = []
        for path in self.directory.iterdir():
            name = path.name
            if name.endswith(".tmp"):
                log.warning("[spool:%s] removing %s, a batch never acknowledged (interrupted "
                            "write)", self.target_id, path)
                path.unlink(missing_ok=True)
                continue
            match = _NAME.match(name)
            if match is None:
                if name != ".lock":
                    log.warning("[spool:%s] ignoring %s: not a spool file", self.target_id, path)
                continue
            count = self._header_count(path)
            found.append(SpoolEntry(int(match[1]), int(match[2]) / 1000, path.stat().st_size,
                                    count, path))
        found.sort(key=lambda e: e.seq)
        self.entries.extend(found)
        self.bytes = sum(e.size for e in found)
        self.messages = sum(e.count for e in found)
        if found:
            self._next_seq = found[-1].seq + 1
            log.info("[spool:%s] %d spooled batch(es), %d message(s), %d bytes to drain from %s",
                     self.target_id, len(found), self.messages, self.bytes, self.directory)

    def _header_count(self, path: Path) -> int:
        try:
            with path.open("rb") as f:
                header = orjson.loads(f.readline())
            return int(header["count"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0  # read() reports it as corrupt

    def _lock(self) -> None:
        if self._lock_fd is not None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise SpoolInUse(f"spool directory {self.directory} is in use by another process; "
                             "give each replica its own spool.path (its own volume)") from None
        self._lock_fd = fd

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # --- writing -------------------------------------------------------------

    async def append(self, batch: list[Message]) -> list[Failure]:
        """Durably spool ``batch``; returns the messages that cannot be encoded (not spooled).

        Raises :class:`SpoolFull` (nothing of ``batch`` written) when over ``max-bytes`` or
        the disk refuses. Group commit: batches appended while a write is in progress go
        together into the next file, one fsync for all of them, in the order they came.
        """
        lines: list[bytes] = []
        failures: list[Failure] = []
        for msg in batch:
            try:
                lines.append(encode_message(msg))
            except TypeError as exc:
                failures.append(Failure(msg, f"cannot be spooled: {exc}", f"spool:{self.target_id}"))
        if not lines:
            return failures
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((lines, done))
        try:
            async with self._append_lock:
                if not done.done():  # not written by the group commit of an earlier caller
                    await self._commit()
        except asyncio.CancelledError:
            if not done.cancel() and not done.cancelled():
                done.exception()  # written or refused already; nobody will ask
            raise
        done.result()  # raises SpoolFull
        return failures

    async def _commit(self) -> None:
        """Write the queued batches that fit into one file; refuse the others."""
        queue = [(lines, fut) for lines, fut in self._queue if not fut.done()]
        self._queue = []
        taken: list[tuple[list[bytes], asyncio.Future[None]]] = []
        refused: list[asyncio.Future[None]] = []
        reason = ""
        size = 0
        for lines, fut in queue:
            batch_size = sum(len(x) + 1 for x in lines)
            if refused or self.bytes + _HEADER_BYTES + size + batch_size > self.max_bytes:
                # Order: after one batch that does not fit, none of the later ones is taken.
                if not refused:
                    reason = (f"max-bytes {self.max_bytes} reached ({self.bytes} bytes spooled, "
                              f"batch of {batch_size} bytes)")
                refused.append(fut)
                continue
            taken.append((lines, fut))
            size += batch_size
        while taken:
            try:
                await self._write_group(taken)
                break
            except (OSError, SpoolInUse) as exc:
                if isinstance(exc, SpoolInUse):  # another process took the directory
                    reason = str(exc)
                elif exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    reason = f"disk full: {exc}"
                else:
                    reason = f"write failed: {exc}"
                # Half the group may fit where the whole did not: halve down to one batch
                # before refusing everything (else a backlog bigger than the free space
                # would never go in, however much the drainer frees).
                if len(taken) > 1:
                    half = len(taken) // 2
                    refused = [fut for _, fut in taken[half:]] + refused
                    taken = taken[:half]
                else:
                    refused = [taken[0][1], *refused]
                    taken = []
        now = time.monotonic()
        if taken and self.full is not None:
            if self._full_announced:
                log.info("[spool:%s] taking batches again", self.target_id)
                self._full_announced = False
            self.full = None
        if refused:
            # One error per FULL_LOG_INTERVAL: a spool that drains near its limit goes full
            # and not full again with every drained file.
            if self.full is None and now - self._full_logged_at >= FULL_LOG_INTERVAL:
                log.error("[spool:%s] full: %s; holding acknowledgements (backpressure) until "
                          "there is space", self.target_id, reason)
                self._full_logged_at = now
                self._full_announced = True
            self.full = reason
            error = SpoolFull(f"spool of target {self.target_id!r} full: {reason}")
            for fut in refused:
                if not fut.done():
                    fut.set_exception(error)

    async def _write_group(self, taken: list[tuple[list[bytes], asyncio.Future[None]]]) -> None:
        """One file holding the batches of ``taken``, in order; their futures complete."""
        count = sum(len(lines) for lines, _ in taken)
        created = time.time()
        header = orjson.dumps({"v": FORMAT_VERSION, "target": self.target_id,
                               "count": count, "created": created})
        data = b"\n".join([header, *(x for lines, _ in taken for x in lines)]) + b"\n"
        seq = self._next_seq
        name = f"{seq:012d}-{int(created * 1000)}.batch"
        await asyncio.to_thread(self._write_file, name, data)
        self._next_seq = seq + 1
        self.entries.append(SpoolEntry(seq, created, len(data), count, self.directory / name))
        self.bytes += len(data)
        self.messages += count
        self.spooled_total += count
        self._changed.set()
        for _, fut in taken:
            if not fut.done():
                fut.set_result(None)

    def _write_file(self, name: str, data: bytes) -> None:
        self._lock()
        write_file(self.directory / name, data)

    # --- draining ------------------------------------------------------------

    def expired(self, now: float | None = None) -> list[SpoolEntry]:
        """The oldest entries spooled more than ``max-age`` seconds ago."""
        if self.max_age is None:
            return []
        limit = (time.time() if now is None else now) - self.max_age
        out = []
        for entry in self.entries:
            if entry.created >= limit:
                break
            out.append(entry)
        return out

    async def read(self, entries: list[SpoolEntry]
                   ) -> tuple[list[Message], dict[int, list[Failure]]]:
        """The messages of ``entries`` in order, and by entry ``seq`` each unreadable line
        as a failure (bound for the dead letter, the raw line as its payload)."""
        return await asyncio.to_thread(self._read_files, entries)

    def _read_files(self, entries: list[SpoolEntry]
                    ) -> tuple[list[Message], dict[int, list[Failure]]]:
        messages: list[Message] = []
        corrupt: dict[int, list[Failure]] = {}
        stage = f"spool:{self.target_id}"
        for entry in entries:
            failures = corrupt.setdefault(entry.seq, [])
            try:
                data = entry.path.read_bytes()
            except FileNotFoundError:
                log.error("[spool:%s] %s vanished before it was drained", self.target_id,
                          entry.path)
                continue
            lines = data.split(b"\n")
            if lines and lines[-1] == b"":
                lines.pop()
            if not lines:
                failures.append(Failure(Message(topic="", payload=b"", source_id=stage),
                                        f"corrupt spool file {entry.path.name}: empty", stage))
                continue
            count = -1
            try:
                header = orjson.loads(lines[0]) if lines else None
                count = int(header["count"])  # type: ignore[index]
                body, first = lines[1:], 2
            except (ValueError, KeyError, TypeError):
                body, first = lines, 1  # no usable header: try every line
            for n, line in enumerate(body, first):
                try:
                    messages.append(decode_message(line))
                except (ValueError, KeyError, TypeError) as exc:
                    raw = Message(topic="", payload=line, source_id=stage)
                    failures.append(Failure(raw, f"corrupt spool file {entry.path.name} line "
                                                 f"{n}: {exc}; payload is the raw line",
                                            stage))
            if count >= 0 and count != len(body):
                failures.append(Failure(
                    Message(topic="", payload=lines[0] if lines else b"", source_id=stage),
                    f"corrupt spool file {entry.path.name}: header says {count} message(s), "
                    f"file holds {len(body)} line(s); payload is the header line", stage))
            if not failures:
                del corrupt[entry.seq]
        return messages, corrupt

    async def remove(self, entries: list[SpoolEntry], drained: int = 0) -> None:
        """Forget ``entries`` (the target or the dead letter took them): delete their files."""
        await asyncio.to_thread(self._unlink, entries)
        gone = {e.seq for e in entries}
        removed: list[SpoolEntry] = []
        # The drainer and the expiry take entries from the front: pop those in O(1).
        while self.entries and self.entries[0].seq in gone:
            removed.append(self.entries.popleft())
            gone.discard(removed[-1].seq)
        if gone:
            removed.extend(e for e in self.entries if e.seq in gone)
            self.entries = deque(e for e in self.entries if e.seq not in gone)
        self.bytes -= sum(e.size for e in removed)
        self.messages -= sum(e.count for e in removed)
        self.drained_total += drained
        if not self.entries:
            self.full = None
        self._changed.set()

    def _unlink(self, entries: list[SpoolEntry]) -> None:
        for entry in entries:
            entry.path.unlink(missing_ok=True)
        if entries and self.directory.is_dir():
            fsync_dir(self.directory)

    async def wait_changed(self, timeout: float | None = None) -> None:
        """Until something is appended or removed (or ``timeout`` seconds pass)."""
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass
