"""TargetPath: one target with its processor chain, retries and dead letter.

A routed batch goes through the target's processors in order, then to the
target. What can never succeed goes to the dead letter with its stage; what
may succeed later is retried with capped, jittered backoff, holding the
batch's acknowledgement meanwhile (backpressure), until it succeeds or the
pipeline stops (then the source does not acknowledge it and the broker
redelivers it after a restart).

With a spool (:mod:`unsflow.engine.spool`), a target write that fails in a way
a retry may fix sends the processed batch to the spool instead, and the batch
counts as accepted; while the spool holds anything, new batches go there too,
so the target sees them in order. A drainer task writes spooled batches to the
target, oldest first, with the same backoff. A full spool is waited for
(acknowledgements held), never skipped. Processor failures are retried as
before: the spool sits between the last processor and the target.

Order: every stage of the path sees batches in the order the source delivered
them (:mod:`unsflow.engine.order`): a batch leaves a stage only after the one
before it left, and a ``serial`` processor (one with state across batches)
takes one batch at a time. So a window after a parser that sends large
batches to a worker thread still sees readings in source order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from unsflow.engine.backoff import Backoff
from unsflow.engine.deadletter import DeadLetter
from unsflow.engine.metrics import LatencyBuckets
from unsflow.engine.order import Turnstile
from unsflow.engine.spool import Spool, SpoolEntry
from unsflow.errors import ComponentError, PermanentError, SpoolFull, TransientError
from unsflow.message import Failure, Message
from unsflow.processors.base import Processor
from unsflow.targets.base import Target

__all__ = ["TargetPath", "PathStats", "StageStats"]

log = logging.getLogger("unsflow.engine")

T = TypeVar("T")

# Unexpected exceptions (a component bug, an unmapped library error) are
# retried this many times before the batch is dead-lettered with the error.
MAX_UNEXPECTED_ATTEMPTS = 5
# Seconds between two retry warnings of one stage.
RETRY_LOG_INTERVAL = 5.0
# Most messages the spool drainer hands the target in one write (whole files; at least one).
DRAIN_MESSAGES = 10000
# Longest wait (s) before a batch that found the spool full tries again.
SPOOL_FULL_RECHECK = 2.0


class _Retry(Exception):
    """An attempt failed in a way a retry may fix (the cause is chained)."""


def _front(entries: Iterable[SpoolEntry], limit: int) -> list[SpoolEntry]:
    """The oldest entries holding up to ``limit`` messages (at least one entry)."""
    out: list[SpoolEntry] = []
    count = 0
    for entry in entries:
        if out and count + entry.count > limit:
            break
        out.append(entry)
        count += entry.count
    return out


@dataclass
class StageStats:
    """Counters of one stage (a processor or the target) on one path, updated per batch."""

    received: int = 0
    emitted: int = 0
    dead_lettered: int = 0
    retries: int = 0
    latency: LatencyBuckets = field(default_factory=LatencyBuckets)


@dataclass
class PathStats:
    received: int = 0
    accepted: int = 0
    dead_lettered: int = 0
    retries: int = 0
    last_batch_seconds: float = 0.0
    # Messages routed to the path whose handle() has not returned (processing, writing,
    # retrying, waiting for a full spool).
    in_flight: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    # By stage id (processor:NAME, target:NAME); read by the metrics collector.
    stages: dict[str, StageStats] = field(default_factory=dict)


class TargetPath:
    """Processors then target, for one target name."""

    def __init__(self, target: Target, processors: list[Processor], dead_letter: DeadLetter,
                 *, backoff_initial: float = 0.2, backoff_max: float = 30.0,
                 spool: Spool | None = None,
                 on_fatal: Callable[[str, BaseException], None] | None = None) -> None:
        self.target = target
        self._next_ticket = 0
        self._processors: list[Processor] = []
        self._gates: list[Turnstile] = []
        self.processors = processors
        self.dead_letter = dead_letter
        self.spool = spool
        # Told when the spool drainer dies of an error (its batches would wait for ever).
        self.on_fatal = on_fatal
        self._drainer: asyncio.Task[None] | None = None
        self._drain_stop = asyncio.Event()
        self._drain_writing = False
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.stats = PathStats()
        self._last_warning: dict[str, tuple[float, int]] = {}

    @property
    def id(self) -> str:
        return self.target.id

    @property
    def processors(self) -> list[Processor]:
        return self._processors

    @processors.setter
    def processors(self, processors: list[Processor]) -> None:
        """A new chain (a reload, with no batch in flight): one turnstile per stage + target."""
        self._processors = list(processors)
        self._gates = [Turnstile(self._next_ticket) for _ in range(len(self._processors) + 1)]

    def ticket(self) -> int:
        """The next batch's place in this path's order. Taken when the batch is routed
        (synchronously, in source order), then given to :meth:`handle`."""
        n = self._next_ticket
        self._next_ticket += 1
        return n

    async def handle(self, batch: list[Message], ticket: int | None = None) -> None:
        """Return when every message of ``batch`` is durably accepted (by the target or the
        spool) or dead-lettered.

        ``ticket`` (from :meth:`ticket`) is the batch's place in source order; each stage
        sees the batches of this path in ticket order. Without one, the batch takes the
        next ticket now.
        """
        if ticket is None:
            ticket = self.ticket()
        started = time.monotonic()
        self.stats.received += len(batch)
        routed = len(batch)
        self.stats.in_flight += routed
        gates = self._gates
        reached = 0
        try:
            for i, proc in enumerate(self._processors):
                reached = i
                gate = gates[i]
                if proc.ordering == "serial":
                    await gate.turn(ticket)
                outputs = await self._attempt(proc.stage, batch, proc.process)
                await gate.turn(ticket)  # leave in order: the next stage sees source order
                gate.passed(ticket)
                reached = i + 1
                if not outputs:  # all dead-lettered (None) or nothing to pass on
                    return
                batch = outputs
            gate = gates[-1]
            if self.spool is None:
                written = await self._attempt(self.target.stage, batch, self._write)
            else:
                written = await self._write_or_spool(batch)
            await gate.turn(ticket)
            gate.passed(ticket)
            reached = len(gates)
            if written is not None:
                self.stats.accepted += len(written)
            self.stats.last_batch_seconds = time.monotonic() - started
        finally:
            self.stats.in_flight -= routed
            # Ended early (filtered out, dead-lettered, cancelled, failed): later batches
            # must not wait for this one at the stages it never reached.
            for gate in gates[reached:]:
                gate.passed(ticket)

    async def _write(self, batch: list[Message]) -> tuple[list[Message], list[Failure]]:
        failures = await self.target.write(batch)
        if not failures:
            return batch, []
        failed = {id(f.message) for f in failures}
        return [m for m in batch if id(m) not in failed], failures

    def _stage(self, stage: str) -> StageStats:
        st = self.stats.stages.get(stage)
        if st is None:
            st = self.stats.stages[stage] = StageStats()
        return st

    async def _attempt(
        self, stage: str, batch: list[Message],
        call: Callable[[list[Message]], Awaitable[tuple[list[Message], list[Failure]]]],
    ) -> list[Message] | None:
        """Run ``call`` until it succeeds; dead-letter failures. None: all dead-lettered."""
        backoff = Backoff(self.backoff_initial, self.backoff_max)
        unexpected = [0]
        st = self._stage(stage)
        st.received += len(batch)
        started = time.monotonic()
        while True:
            try:
                return await self._once(stage, batch, call, st, unexpected, started)
            except _Retry:
                await asyncio.sleep(backoff.next())

    async def _once(
        self, stage: str, batch: list[Message],
        call: Callable[[list[Message]], Awaitable[tuple[list[Message], list[Failure]]]],
        st: StageStats, unexpected: list[int], started: float,
    ) -> list[Message] | None:
        """One attempt: outputs, or None when all were dead-lettered. Raises _Retry."""
        for m in batch:
            m.attempts += 1
        try:
            outputs, failures = await call(batch)
        except PermanentError as exc:
            await self._dead_letter([Failure(m, str(exc), stage) for m in batch], st)
            return None
        except (TransientError, ComponentError) as exc:
            st.retries += 1
            self._note_retry(stage, exc)
            raise _Retry() from exc
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a component bug or an unmapped library error
            unexpected[0] += 1
            if unexpected[0] >= MAX_UNEXPECTED_ATTEMPTS:
                log.exception("[%s] unexpected error, dead-lettering the batch", stage)
                reason = f"unexpected {type(exc).__name__}: {exc}"
                await self._dead_letter([Failure(m, reason, stage) for m in batch], st)
                return None
            st.retries += 1
            self._note_retry(stage, exc)
            raise _Retry() from exc
        if failures:
            await self._dead_letter(failures, st)
        st.emitted += len(outputs)
        st.latency.observe(time.monotonic() - started)
        return outputs

    # --- store and forward ---------------------------------------------------

    async def _write_or_spool(self, batch: list[Message]) -> list[Message] | None:
        """To the target while the spool is empty; to the spool when the target fails or
        the spool holds batches (their order kept). Spooled messages return as [] (the
        drainer counts them accepted when the target takes them). A full spool is waited
        for (backpressure), never dropped."""
        spool = self.spool
        assert spool is not None
        stage = self.target.stage
        st = self._stage(stage)
        st.received += len(batch)
        started = time.monotonic()
        backoff = Backoff(self.backoff_initial, min(self.backoff_max, SPOOL_FULL_RECHECK))
        unexpected = [0]
        while True:
            if spool.empty:
                try:
                    return await self._once(stage, batch, self._write, st, unexpected, started)
                except _Retry:
                    pass  # the target failed: spool the batch
            try:
                failures = await spool.append(batch)
            except SpoolFull:
                # Drained batches free space; a disk freed by someone else shows on a recheck.
                await spool.wait_changed(backoff.next())
                continue
            if failures:
                await self._dead_letter(failures, st)
            return []

    async def start_spool(self) -> None:
        """Open the spool (indexing what a previous run left) and start its drainer."""
        if self.spool is None or self._drainer is not None:
            return
        await asyncio.to_thread(self.spool.open)
        self._drain_stop = asyncio.Event()
        self._drainer = asyncio.create_task(self.drain_spool(), name=f"spool:{self.id}:drainer")
        self._drainer.add_done_callback(self._drainer_done)

    def _drainer_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        assert exc is not None
        what = f"the spool drainer of target {self.id!r} failed: {type(exc).__name__}: {exc}"
        if self.on_fatal is not None:
            self.on_fatal(what, exc)
        else:
            log.critical("%s; spooled batches are not drained", what)

    async def stop_spool(self, timeout: float) -> None:
        """Stop the drainer: a write in progress gets ``timeout`` seconds, then is cancelled
        (its batch stays spooled and is drained by the next run)."""
        task, self._drainer = self._drainer, None
        if task is None:
            return
        self._drain_stop.set()
        if not self._drain_writing:
            task.cancel()
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        spool = self.spool
        if spool is not None:
            if not spool.empty:
                log.warning("[spool:%s] stopping with %d message(s) in %d spooled batch file(s) "
                            "in %s; the next start drains them", self.id, spool.messages,
                            len(spool.entries), spool.directory)
            spool.close()

    async def drain_spool(self) -> None:
        """Write spooled batches to the target, oldest first, until stopped.

        Several spool files go in one write (up to ``DRAIN_MESSAGES`` messages); a
        file is deleted only after the target took it (or its messages were
        dead-lettered), so a crash in between writes them again (at least once).
        """
        spool = self.spool
        assert spool is not None
        stage = self.target.stage
        st = self._stage(stage)
        backoff = Backoff(self.backoff_initial, self.backoff_max)
        unexpected = [0]
        group: list[SpoolEntry] = []
        messages: list[Message] = []
        reported: set[int] = set()  # entries whose corrupt lines went to the dead letter
        while not self._drain_stop.is_set():
            if spool.empty:
                await spool.wait_changed()
                continue
            try:
                expired = spool.expired()
                if expired:
                    group, messages = [], []
                    await self._expire(expired, reported)
                    continue
                if not group:
                    group = _front(spool.entries, DRAIN_MESSAGES)
                    messages, corrupt = await spool.read(group)
                    await self._report_corrupt(corrupt, reported)
                    st.received += len(messages)
            except OSError as exc:
                # The spool's disk or the dead letter's failed: the drainer must not die
                # (nothing would drain any more); try again after a pause.
                group, messages = [], []
                log.error("[spool:%s] cannot drain: %s; retrying", self.id, exc)
                await asyncio.sleep(backoff.next())
                continue
            if messages:
                self._drain_writing = True
                try:
                    written = await self._once(stage, messages, self._write, st, unexpected,
                                               time.monotonic())
                except _Retry:
                    await asyncio.sleep(backoff.next())
                    continue
                finally:
                    self._drain_writing = False
                if written:
                    self.stats.accepted += len(written)
            backoff.reset()
            unexpected[0] = 0
            try:
                await spool.remove(group, drained=len(messages))
            except OSError as exc:
                # The target has these messages: only try the delete again, never the write.
                log.error("[spool:%s] cannot delete drained spool files: %s", self.id, exc)
                messages = []
                await asyncio.sleep(backoff.next())
                continue
            reported.difference_update(e.seq for e in group)
            group, messages = [], []

    async def _report_corrupt(self, corrupt: dict[int, list[Failure]],
                              reported: set[int]) -> None:
        """Dead-letter the unreadable lines of spool files, once per file."""
        failures = [f for seq, fs in corrupt.items() if seq not in reported for f in fs]
        reported.update(corrupt)
        if failures:
            log.error("[spool:%s] %d unreadable line(s) in spool file(s); sent to the dead "
                      "letter as raw lines", self.id, len(failures))
            await self._dead_letter(failures, self._stage(f"spool:{self.id}"))

    async def _expire(self, entries: list[SpoolEntry], reported: set[int]) -> None:
        """Dead-letter spooled batches older than max-age, saying so."""
        spool = self.spool
        assert spool is not None
        messages, corrupt = await spool.read(entries)
        await self._report_corrupt(corrupt, reported)
        oldest = min(e.created for e in entries)
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(oldest))
        reason = (f"spooled {time.time() - oldest:.0f}s ago (at {when}), older than spool "
                  f"max-age {spool.max_age:g}s: target {self.id!r} did not take it in time")
        stage = f"spool:{self.id}"
        log.error("[%s] %d message(s) %s; sent to the dead letter", stage, len(messages), reason)
        await self._dead_letter([Failure(m, reason, stage) for m in messages], self._stage(stage))
        await spool.remove(entries)
        reported.difference_update(e.seq for e in entries)

    def _note_retry(self, stage: str, exc: BaseException) -> None:
        self.stats.retries += 1
        key = type(exc).__name__
        self.stats.errors[key] = self.stats.errors.get(key, 0) + 1
        # Many batches retry at once during an outage: one warning per stage every
        # few seconds, with the count of those not shown, instead of one per batch.
        now = time.monotonic()
        last, hidden = self._last_warning.get(stage, (0.0, 0))
        if now - last >= RETRY_LOG_INTERVAL:
            more = f" ({hidden} more retries not logged)" if hidden else ""
            log.warning("[%s] %s; retrying with backoff%s", stage, exc, more)
            self._last_warning[stage] = (now, 0)
        else:
            self._last_warning[stage] = (last, hidden + 1)

    async def _dead_letter(self, failures: list[Failure], st: StageStats) -> None:
        await self.dead_letter.write(failures)
        self.stats.dead_lettered += len(failures)
        st.dead_lettered += len(failures)
