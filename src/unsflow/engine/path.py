"""TargetPath: one target with its processor chain, retries and dead letter.

A routed batch goes through the target's processors in order, then to the
target. What can never succeed goes to the dead letter with its stage; what
may succeed later is retried with capped, jittered backoff, holding the
batch's acknowledgement meanwhile (backpressure), until it succeeds or the
pipeline stops (then the source does not acknowledge it and the broker
redelivers it after a restart).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from unsflow.engine.backoff import Backoff
from unsflow.engine.deadletter import DeadLetter
from unsflow.engine.metrics import LatencyBuckets
from unsflow.errors import ComponentError, PermanentError, TransientError
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
    errors: dict[str, int] = field(default_factory=dict)
    # By stage id (processor:NAME, target:NAME); read by the metrics collector.
    stages: dict[str, StageStats] = field(default_factory=dict)


class TargetPath:
    """Processors then target, for one target name."""

    def __init__(self, target: Target, processors: list[Processor], dead_letter: DeadLetter,
                 *, backoff_initial: float = 0.2, backoff_max: float = 30.0) -> None:
        self.target = target
        self.processors = processors
        self.dead_letter = dead_letter
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.stats = PathStats()
        self._last_warning: dict[str, tuple[float, int]] = {}

    @property
    def id(self) -> str:
        return self.target.id

    async def handle(self, batch: list[Message]) -> None:
        """Return when every message of ``batch`` is durably accepted or dead-lettered."""
        started = time.monotonic()
        self.stats.received += len(batch)
        for proc in self.processors:
            outputs = await self._attempt(proc.stage, batch, proc.process)
            if outputs is None:
                return
            batch = outputs
            if not batch:
                return
        written = await self._attempt(self.target.stage, batch, self._write)
        if written is not None:
            self.stats.accepted += len(written)
        self.stats.last_batch_seconds = time.monotonic() - started

    async def _write(self, batch: list[Message]) -> tuple[list[Message], list[Failure]]:
        failures = await self.target.write(batch)
        if not failures:
            return batch, []
        failed = {id(f.message) for f in failures}
        return [m for m in batch if id(m) not in failed], failures

    async def _attempt(
        self, stage: str, batch: list[Message],
        call: Callable[[list[Message]], Awaitable[tuple[list[Message], list[Failure]]]],
    ) -> list[Message] | None:
        """Run ``call`` until it succeeds; dead-letter failures. None: all dead-lettered."""
        backoff = Backoff(self.backoff_initial, self.backoff_max)
        unexpected = 0
        st = self.stats.stages.get(stage)
        if st is None:
            st = self.stats.stages[stage] = StageStats()
        st.received += len(batch)
        started = time.monotonic()
        while True:
            for m in batch:
                m.attempts += 1
            try:
                outputs, failures = await call(batch)
            except PermanentError as exc:
                await self._dead_letter([Failure(m, str(exc), stage) for m in batch], st)
                return None
            except (TransientError, ComponentError) as exc:
                st.retries += 1
                self._note_retry(stage, exc, backoff)
                await asyncio.sleep(backoff.next())
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a component bug or an unmapped library error
                unexpected += 1
                if unexpected >= MAX_UNEXPECTED_ATTEMPTS:
                    log.exception("[%s] unexpected error, dead-lettering the batch", stage)
                    reason = f"unexpected {type(exc).__name__}: {exc}"
                    await self._dead_letter([Failure(m, reason, stage) for m in batch], st)
                    return None
                st.retries += 1
                self._note_retry(stage, exc, backoff)
                await asyncio.sleep(backoff.next())
                continue
            if failures:
                await self._dead_letter(failures, st)
            st.emitted += len(outputs)
            st.latency.observe(time.monotonic() - started)
            return outputs

    def _note_retry(self, stage: str, exc: BaseException, backoff: Backoff) -> None:
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
