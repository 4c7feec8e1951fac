"""Batch order within a target path (engine/order.py, issue 11).

Every stage of a path sees batches in the order the source delivered them, whatever
the stage does inside: processors that sleep a random time per batch (concurrent and
serial), drop whole batches, fail messages, or retry.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path
from typing import ClassVar, Literal

from unsflow.components import Context
from unsflow.config.loading import parse_config
from unsflow.config.models import ProcessorConfig
from unsflow.engine.deadletter import DeadLetter
from unsflow.engine.order import Turnstile
from unsflow.engine.path import TargetPath
from unsflow.engine.pipeline import Pipeline
from unsflow.errors import TransientError
from unsflow.message import Failure, Message
from unsflow.processors.base import Processor, ProcessResult
from unsflow.testing import MemorySource, MemoryTarget


class Sleepy(Processor[ProcessorConfig]):
    """Sleeps a random time per batch; records the order batches came in and went out."""

    ordering: ClassVar[Literal["serial", "concurrent"]] = "concurrent"

    def __init__(self, name: str, rng: random.Random, *, drop_every: int = 0,
                 fail_every: int = 0, transient_once: bool = False) -> None:
        super().__init__(name, ProcessorConfig(type="sleepy"), Context(env={}))
        self.rng = rng
        self.entered: list[int] = []
        self.active = 0
        self.max_active = 0
        self.drop_every = drop_every
        self.fail_every = fail_every
        self.transient = transient_once
        self.dropped: set[int] = set()

    async def process(self, batch: list[Message]) -> ProcessResult:
        first = int(batch[0].payload)
        self.entered.append(first)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await asyncio.sleep(self.rng.uniform(0, 0.01))
            if self.transient and first % 7 == 3:
                self.transient = False
                raise TransientError("flaky once")
        finally:
            self.active -= 1
        if self.drop_every and first % self.drop_every == 0:
            self.dropped.update(int(m.payload) for m in batch)
            return [], []  # a filter that keeps nothing of this batch
        failures = [Failure(m, "bad", self.stage) for m in batch
                    if self.fail_every and int(m.payload) % self.fail_every == 0]
        failed = {id(f.message) for f in failures}
        return [m for m in batch if id(m) not in failed], failures


class SerialSleepy(Sleepy):
    ordering: ClassVar[Literal["serial", "concurrent"]] = "serial"


def batches(count: int, rng: random.Random) -> list[list[Message]]:
    out, n = [], 0
    for _ in range(count):
        size = rng.choice([1, 2, 5, 50, 300])
        out.append([Message("a/b", str(n + i).encode()) for i in range(size)])
        n += size
    return out


async def test_every_stage_sees_batches_in_source_order_whatever_their_sleeps(
        tmp_path: Path) -> None:
    rng = random.Random(5)
    first = Sleepy("first", rng, fail_every=13, transient_once=True)
    serial = SerialSleepy("serial", rng, drop_every=11)
    last = Sleepy("last", rng)
    target = MemoryTarget()
    path = TargetPath(target, [first, serial, last], DeadLetter(str(tmp_path / "dead.jsonl")),
                      backoff_initial=0.001, backoff_max=0.01)
    work = batches(300, rng)
    # all in flight at once, as the engine does in a burst; tickets in source order
    tickets = [path.ticket() for _ in work]
    await asyncio.gather(*(path.handle(b, t) for b, t in zip(work, tickets, strict=True)))

    firsts = [int(b[0].payload) for b in work]
    # entered in source order; one batch failed transiently and came in again later
    assert len(first.entered) == len(firsts) + 1
    again = next(f for i, f in enumerate(first.entered) if f in first.entered[:i])
    retried = list(first.entered)
    del retried[len(retried) - 1 - retried[::-1].index(again)]
    assert retried == firsts
    assert first.max_active > 1  # concurrent: batches overlapped inside it
    # the serial stage: one batch at a time, in source order (minus batches emptied before)
    assert serial.max_active == 1
    assert serial.entered == sorted(serial.entered)
    assert last.entered == sorted(last.entered)
    # the target got every surviving message, in source order
    got = [int(m.payload) for m in target.messages]
    assert got == sorted(got)
    expected = [int(m.payload) for b in work for m in b
                if int(m.payload) % 13 and int(m.payload) not in serial.dropped]
    assert got == expected and serial.dropped
    # nothing waits: every gate has let every ticket through
    assert all(g.next == len(work) for g in path._gates)


async def test_a_batch_that_fails_or_is_cancelled_does_not_hold_the_ones_after_it(
        tmp_path: Path) -> None:
    class Boom(Sleepy):
        async def process(self, batch: list[Message]) -> ProcessResult:
            if batch[0].payload == b"boom":
                await asyncio.sleep(0.01)
                raise asyncio.CancelledError()
            return await super().process(batch)

    rng = random.Random(1)
    target = MemoryTarget()
    path = TargetPath(target, [Boom("b", rng), SerialSleepy("s", rng)],
                      DeadLetter(str(tmp_path / "dead.jsonl")))
    t0, t1, t2 = path.ticket(), path.ticket(), path.ticket()
    results = await asyncio.gather(
        path.handle([Message("a", b"boom")], t0), path.handle([Message("a", b"1")], t1),
        path.handle([Message("a", b"2")], t2), return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert [m.payload for m in target.messages] == [b"1", b"2"]


async def test_turnstile_lets_a_skipped_number_through() -> None:
    gate = Turnstile()
    gate.passed(1)  # skips before 0 is through
    assert gate.next == 0
    waiter = asyncio.create_task(gate.turn(2))
    await asyncio.sleep(0)
    assert not waiter.done()
    gate.passed(0)
    await asyncio.wait_for(waiter, 1)
    assert gate.next == 2


async def test_a_user_python_processor_sees_a_burst_in_source_order(tmp_path: Path) -> None:
    """Through the whole engine: a burst of batches, a user's function that sleeps a random
    time (in a worker thread) after a parser that threads large batches and not small ones."""
    import tests.plugins.engine_faults as user

    user.state["seen"] = []  # type: ignore[assignment]
    cfg = parse_config({
        "targets": {"out": {"type": "file", "path": str(tmp_path / "out.jsonl"),
                            "processors": ["json", "mine"]}},
        "processors": {"json": {"type": "parse"},
                       "mine": {"type": "python", "mode": "batch",
                                "function": "tests.plugins.engine_faults:sleepy_batch"}},
        "subscriptions": {"a/#": {"qos": 1, "target": "out"}},
        "dead-letter": {"path": str(tmp_path / "dead.jsonl")},
        "http": {"port": 0},
    }, env={})
    source = MemorySource()
    pipeline = Pipeline(cfg, Context(env={}), source=source)
    rng = random.Random(3)
    n = 0
    for _ in range(120):
        size = rng.choice([1, 3, 250, 600])
        source.push([Message("a/b", json.dumps({"n": n + i}).encode(), 1)
                     for i in range(size)])
        n += size
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    deadline = time.monotonic() + 60
    while source.acked_batches < 120 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.wait_for(task, 30)
    assert source.acked_batches == 120
    seen: list[int] = user.state["seen"]  # type: ignore[assignment]
    assert seen == list(range(n))
    written = [json.loads(line)["n"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert written == list(range(n))
