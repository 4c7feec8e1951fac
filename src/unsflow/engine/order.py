"""Batch order within a target path: every stage sees batches in source order.

A target path numbers its batches in the order the source delivered them
(:meth:`TargetPath.ticket`). Each stage of the path (each processor, then the
target) has a :class:`Turnstile` that lets batch ``n`` leave the stage only
after batch ``n - 1`` left it, whatever the stage does inside (a worker
thread, an HTTP request, a retry with backoff). A ``serial`` stage (state
across batches: windows, a user's function) also lets batch ``n`` *enter*
only after ``n - 1`` left, so it handles one batch at a time; a
``concurrent`` stage (stateless: parsing, inference, filtering, the target's
write) lets batches overlap inside and only keeps their order on the way out,
so the next stage sees them in order too.

A batch that ends early on a path (all dead-lettered, filtered to nothing,
cancelled by a stop, failed) passes every stage it did not reach, so later
batches never wait for it.

>>> import asyncio
>>> async def demo():
...     gate, seen = Turnstile(), []
...     async def stage(n, delay):
...         await asyncio.sleep(delay)      # work inside the stage, any length
...         await gate.turn(n)              # leave in order
...         seen.append(n)
...         gate.passed(n)
...     await asyncio.gather(stage(0, 0.02), stage(1, 0.0), stage(2, 0.01))
...     return seen
>>> asyncio.run(demo())
[0, 1, 2]
"""

from __future__ import annotations

import asyncio

__all__ = ["Turnstile"]


class Turnstile:
    """Lets numbered batches through one at a time, in number order.

    ``turn(n)`` returns once every batch before ``n`` has ``passed``;
    ``passed(n)`` may be called in any order (a batch that skips the stage
    passes it early) and only moves the turnstile when the batches before
    it have passed too.
    """

    __slots__ = ("_next", "_passed", "_waiters")

    def __init__(self, start: int = 0) -> None:
        self._next = start
        self._passed: set[int] = set()
        self._waiters: dict[int, asyncio.Future[None]] = {}

    @property
    def next(self) -> int:
        """The number of the oldest batch that has not passed."""
        return self._next

    async def turn(self, n: int) -> None:
        """Wait until every batch numbered below ``n`` has passed."""
        if n <= self._next:
            return
        waiter = self._waiters.get(n)
        if waiter is None:
            waiter = self._waiters[n] = asyncio.get_running_loop().create_future()
        try:
            await asyncio.shield(waiter)
        finally:
            if waiter.done():
                self._waiters.pop(n, None)

    def passed(self, n: int) -> None:
        """Batch ``n`` is through (or skips this stage)."""
        if n < self._next:
            return
        self._passed.add(n)
        moved = False
        while self._next in self._passed:
            self._passed.discard(self._next)
            self._next += 1
            moved = True
        if moved:
            waiter = self._waiters.get(self._next)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
