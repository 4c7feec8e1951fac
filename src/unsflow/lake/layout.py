"""Where an object goes: Hive partitions and object names.

A key is ``{key-prefix}/{partition}/.../{name}``. Partitions are
``name=value`` directories, in the order configured:

- ``date`` and ``hour``: ``date=YYYY-MM-DD`` and ``hour=HH`` (UTC) of the
  message's receive time;
- ``topic-levels``: one ``NAME=VALUE`` per named leading topic level, the
  value percent-encoded, a missing or empty level ``_``.

Names are ``{object-prefix}-{UTC time}-{random}{ext}`` (unique: a replay
adds an object), or ``{object-prefix}-{digest}{ext}`` (deterministic: the
digest of the messages it holds, so a replay overwrites it).

>>> layout = Layout(["date", "hour", "topic-levels"], ["site", "area"], "lake/raw")
>>> msg = Message("acme/plant 1", b"", received_at=1700000000.0)
>>> layout.key(layout.partition(msg), "part-x.parquet")
'lake/raw/date=2023-11-14/hour=22/site=acme/area=plant%201/part-x.parquet'
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterable, Sequence
from functools import lru_cache
from operator import attrgetter
from typing import Any, Literal
from urllib.parse import quote

from unsflow.message import Message

__all__ = ["KAFKA_COORDINATES", "Layout", "Partition", "content_digest", "unique_name"]

Partition = Literal["date", "hour", "topic-levels"]
_received_at = attrgetter("received_at")
# Message.headers a Kafka source sets; together they identify a record for good.
KAFKA_COORDINATES = ("kafka.topic", "kafka.partition", "kafka.offset")


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


class Layout:
    """The partition directories and keys of one dataset (module docstring)."""

    def __init__(self, partition_by: Sequence[Partition], topic_levels: Sequence[str] = (),
                 key_prefix: str = "") -> None:
        self.partition_by = tuple(partition_by)
        self.level_names = tuple(topic_levels)
        self.prefix = [s for s in key_prefix.split("/") if s]

    @property
    def columns(self) -> frozenset[str]:
        """The partition column names (a record field of such a name is renamed)."""
        names = {p for p in self.partition_by if p != "topic-levels"}
        if "topic-levels" in self.partition_by:
            names.update(self.level_names)
        return frozenset(names)

    def partition(self, msg: Message) -> tuple[str, ...]:
        """The ``name=value`` directories of ``msg``."""
        parts: list[str] = []
        for name in self.partition_by:
            if name == "topic-levels":
                parts.extend(_level_parts(msg.topic, self.level_names))
            else:
                parts.append(_hour_parts(int(msg.received_at // 3600))[name == "hour"])
        return tuple(parts)

    def groups(self, batch: list[Message]) -> list[tuple[tuple[str, ...], list[Message]]]:
        """``batch`` split by partition (each group in batch order): one group when every
        message falls in one partition, as a batch received within an hour does.

        >>> layout = Layout(["date", "hour"])
        >>> [(k, len(g)) for k, g in layout.groups([Message("a", b"", received_at=t)
        ...                                          for t in (0.0, 10.0, 3600.0)])]
        [(('date=1970-01-01', 'hour=00'), 2), (('date=1970-01-01', 'hour=01'), 1)]
        """
        if not batch:
            return []
        if "topic-levels" not in self.partition_by:
            times = list(map(_received_at, batch))
            low, high = min(times), max(times)
            if low // 3600 == high // 3600:
                return [(self.partition(batch[0]), batch)]
        out: dict[tuple[str, ...], list[Message]] = {}
        for msg in batch:
            key = self.partition(msg)
            group = out.get(key)
            if group is None:
                out[key] = [msg]
            else:
                group.append(msg)
        return list(out.items())

    def key(self, partition: Iterable[str], name: str) -> str:
        """The object key of ``name`` in ``partition``."""
        return "/".join([*self.prefix, *partition, name])


def unique_name(prefix: str, ext: str, now: float | None = None) -> str:
    """``{prefix}-{UTC time to the ms}Z-{12 random hex digits}{ext}``."""
    now = time.time() if now is None else now
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now * 1000) % 1000:03d}Z"
    return f"{prefix}-{stamp}-{uuid.uuid4().hex[:12]}{ext}"


def content_digest(entries: Iterable[tuple[Message, Any]]) -> str:
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
