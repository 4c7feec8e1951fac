"""The dead letter: where messages that can never succeed are kept, with why.

Each failure becomes one JSON line: the original payload (as text when it is
valid UTF-8, else base64), the source topic, the error, the stage that failed,
the attempt count and the time. The file is appended and fsynced before
``write`` returns, so a dead-lettered message counts as durably accepted and
its source message may be acknowledged.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import time
from pathlib import Path

import orjson

from unsflow.message import Failure

__all__ = ["DeadLetter", "dead_letter_line"]

log = logging.getLogger("unsflow.deadletter")


def dead_letter_line(failure: Failure) -> bytes:
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
    return orjson.dumps(entry) + b"\n"


class DeadLetter:
    """Appends failures to a JSON-lines file, durably."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.count = 0
        self._lock = asyncio.Lock()

    async def write(self, failures: list[Failure]) -> None:
        if not failures:
            return
        data = b"".join(dead_letter_line(f) for f in failures)
        async with self._lock:
            await asyncio.to_thread(self._append, data)
        self.count += len(failures)
        for f in failures[:3]:
            log.warning("dead letter: topic=%s stage=%s error=%s", f.message.topic, f.stage, f.error)
        if len(failures) > 3:
            log.warning("dead letter: %d more from the same batch", len(failures) - 3)

    def _append(self, data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
