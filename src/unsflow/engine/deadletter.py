"""The dead letter: where messages that can never succeed are kept, with why.

Each failure becomes one JSON line: the original payload (as text when it is
valid UTF-8, else base64), the source topic, the error, the stage that failed,
the attempt count and the time. The file is appended and fsynced before
``write`` returns, so a dead-lettered message counts as durably accepted and
its source message may be acknowledged.

With ``dead-letter.target`` set, each entry goes instead to that target (a
file, an MQTT or Kafka topic, an object store) as a JSON record, and counts as
accepted when that target accepted it. While the target is down the write is
retried with backoff (the source's acknowledgement waits, as for any target);
an entry the target refuses for good is appended to the file, with the
target's reason added, so nothing is dropped.

A file that cannot be written (a full or read-only disk, a directory that is
gone) is never skipped: the write is retried with capped backoff while the
batch's acknowledgement waits, so the source stops being acknowledged
(backpressure), and :attr:`DeadLetter.failing` names the cause, which makes
``/readyz`` answer 503 with it. A failed append is truncated back to where it
began, so a retry never leaves a torn line. When the file is writable again
the waiting batches go on in order.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import time
from pathlib import Path

import orjson

from unsflow.engine.backoff import Backoff
from unsflow.errors import ComponentError, PermanentError, TransientError
from unsflow.message import Failure, Message
from unsflow.targets.base import Target

__all__ = ["DeadLetter", "dead_letter_entry", "dead_letter_line"]

# Seconds between two warnings about a dead-letter target that is down.
_RETRY_LOG_INTERVAL = 5.0
# Longest wait (s) between two tries of a dead-letter file that cannot be written: a disk
# that has room again should be noticed soon, and a try costs one open() and write().
FILE_RETRY_MAX = 5.0

log = logging.getLogger("unsflow.deadletter")


def dead_letter_line(failure: Failure) -> bytes:
    return orjson.dumps(dead_letter_entry(failure)) + b"\n"


def dead_letter_entry(failure: Failure) -> dict[str, object]:
    """One failure as the JSON object the dead letter stores."""
    msg = failure.message
    entry: dict[str, object] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "topic": msg.topic,
        "qos": msg.qos,
        "source": msg.source_id,
        "stage": failure.stage,
        "error": failure.error,
        "attempts": msg.attempts,
        "received_at": msg.received_at,
    }
    try:
        entry["payload"] = msg.payload.decode("utf-8")
    except UnicodeDecodeError:
        entry["payload_base64"] = base64.b64encode(msg.payload).decode("ascii")
    return entry


class DeadLetter:
    """Appends failures to a JSON-lines file, durably."""

    def __init__(self, path: str | os.PathLike[str], target: Target | None = None, *,
                 backoff_initial: float = 0.2, backoff_max: float = 30.0) -> None:
        self.path = Path(path)
        self.target = target
        self.count = 0
        self.fallbacks = 0  # entries the target refused, kept in the file instead
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._lock = asyncio.Lock()
        self._last_warning = 0.0
        # Why the file cannot be written now (while retrying), for /readyz; None when it can.
        self.failing: str | None = None
        self.file_errors = 0  # failed appends (each retried)

    async def write(self, failures: list[Failure]) -> None:
        """Return once every failure is durably stored (see the module docstring)."""
        if not failures:
            return
        if self.target is None:
            await self._to_file(failures)
        else:
            await self._to_target(failures, self.target)
        self.count += len(failures)
        for f in failures[:3]:
            log.warning("dead letter: topic=%s stage=%s error=%s", f.message.topic, f.stage, f.error)
        if len(failures) > 3:
            log.warning("dead letter: %d more from the same batch", len(failures) - 3)

    async def _to_file(self, failures: list[Failure]) -> None:
        data = b"".join(dead_letter_line(f) for f in failures)
        backoff = Backoff(self.backoff_initial, min(self.backoff_max, FILE_RETRY_MAX))
        async with self._lock:  # in order: later writers wait behind one that retries
            while True:
                try:
                    await asyncio.to_thread(self._append, data)
                except OSError as exc:
                    self._note_file_error(exc)
                    await asyncio.sleep(backoff.next())
                    continue
                if self.failing is not None:
                    log.warning("dead letter: %s is writable again; going on", self.path)
                    self.failing = None
                return

    def _note_file_error(self, exc: OSError) -> None:
        self.file_errors += 1
        self.failing = f"cannot write the dead letter {self.path}: {exc}"
        now = time.monotonic()
        if now - self._last_warning >= _RETRY_LOG_INTERVAL:
            log.error("%s; holding acknowledgements and retrying until it is writable",
                      self.failing)
            self._last_warning = now

    async def _to_target(self, failures: list[Failure], target: Target) -> None:
        entries = [Message(topic=f.message.topic, payload=dead_letter_line(f)[:-1],
                           qos=f.message.qos, received_at=f.message.received_at,
                           record=dead_letter_entry(f), source_id=f.message.source_id)
                   for f in failures]
        backoff = Backoff(self.backoff_initial, self.backoff_max)
        while True:
            try:
                refused = await target.write(entries)
                break
            except PermanentError as exc:
                refused = [Failure(m, str(exc), target.stage) for m in entries]
                break
            except (TransientError, ComponentError) as exc:
                now = time.monotonic()
                if now - self._last_warning >= _RETRY_LOG_INTERVAL:
                    log.warning("dead letter: target %s: %s; retrying with backoff", target.id, exc)
                    self._last_warning = now
                await asyncio.sleep(backoff.next())
        if refused:
            original = {id(m): f for m, f in zip(entries, failures)}
            kept = [Failure(original[id(r.message)].message,
                            f"{original[id(r.message)].error} (dead-letter target {target.id} "
                            f"refused it: {r.error})", original[id(r.message)].stage)
                    for r in refused]
            log.error("dead letter: target %s refused %d entr%s; kept in %s", target.id,
                      len(kept), "y" if len(kept) == 1 else "ies", self.path)
            self.fallbacks += len(kept)
            await self._to_file(kept)

    def _append(self, data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            start = os.lseek(fd, 0, os.SEEK_END)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)  # no torn line for the retry to append after
                raise
        finally:
            os.close(fd)
