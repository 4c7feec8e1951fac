"""In-order acknowledgement: release batches upstream in the order they arrived.

Batches finish in any order (one target is slower than another), but MQTT
wants acknowledgements in arrival order (4.6) and Kafka can only commit an
offset once everything before it is done. ``InOrderAcks`` holds each batch's
upstream acknowledgement data until every earlier batch is done.

>>> acks = InOrderAcks()
>>> a, b = acks.add("a"), acks.add("b")
>>> acks.done(b)
[]
>>> acks.done(a)
['a', 'b']
"""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["InOrderAcks"]

T = TypeVar("T")


class InOrderAcks(Generic[T]):
    def __init__(self) -> None:
        self._next_seq = 0
        self._next_release = 0
        self._pending: dict[int, T] = {}
        self._done: set[int] = set()

    def add(self, item: T) -> int:
        """Register a delivered batch's ack data; returns its sequence number (the token)."""
        seq = self._next_seq
        self._next_seq += 1
        self._pending[seq] = item
        return seq

    def done(self, seq: int) -> list[T]:
        """Mark ``seq`` done; return the ack data now releasable, in arrival order."""
        self._done.add(seq)
        released: list[T] = []
        while self._next_release in self._done:
            self._done.discard(self._next_release)
            released.append(self._pending.pop(self._next_release))
            self._next_release += 1
        return released

    def items(self) -> list[T]:
        """Ack data of every batch not yet released."""
        return list(self._pending.values())

    def __len__(self) -> int:
        return len(self._pending)
