"""No silent stall: a batch that cannot finish is retried with its ack held and /readyz
saying why, or stops the pipeline with a clear error; it never just waits unseen."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from unsflow.components import Context
from unsflow.config.loading import parse_config
from unsflow.engine.health import readiness
from unsflow.engine.pipeline import Pipeline
from unsflow.errors import DeliveryFailed
from unsflow.message import Message
from unsflow.testing import MemorySource


def config(tmp_path: Path, dead: Path) -> Any:
    return parse_config({
        "targets": {"a": {"type": "file", "path": str(tmp_path / "a.jsonl")}},
        "subscriptions": {"plant/#": {"qos": 1, "target": "a"}},
        "dead-letter": {"path": str(dead)},
        "http": {"port": 0},
    }, env={})


def msg(n: int | None) -> Message:
    payload = b"\xff\x00" if n is None else json.dumps({"n": n}).encode()  # not UTF-8
    return Message("plant/l1/t", payload, 1, received_at=time.time(), source_id="memory")


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


async def until(condition: Any, timeout: float = 10.0) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


async def test_a_dead_letter_that_cannot_be_written_holds_acks_says_why_and_goes_on(tmp_path):
    dead = tmp_path / "dead.jsonl"
    dead.symlink_to("/dev/full")  # every write: ENOSPC, a full disk
    source = MemorySource()
    pipeline = Pipeline(config(tmp_path, dead), Context(env={}), source=source)
    pipeline.dead_letter.backoff_max = 0.2
    source.push([msg(1)])
    source.push([msg(None)])  # bound for the dead letter
    source.push([msg(3)])
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    try:
        await until(lambda: len(lines(tmp_path / "a.jsonl")) == 2
                    and pipeline.dead_letter.file_errors >= 2)
        ready, report = readiness(pipeline)
        assert not ready
        assert f"cannot write the dead letter {dead}" in report["reason"]
        assert "No space left on device" in report["reason"]
        assert "acknowledgements are held" in report["reason"]
        # The first batch is acknowledged; the failing one and the one after it are not.
        assert source.released == [0]
        dead.unlink()  # the disk has room again
        await until(lambda: source.acked_batches == 3)
        assert readiness(pipeline)[0] and pipeline.dead_letter.failing is None
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert source.released == [0, 1, 2]
    assert [d["payload_base64"] for d in lines(dead)] == ["/wA="]  # once, whole
    assert [r["n"] for r in lines(tmp_path / "a.jsonl")] == [1, 3]


async def test_a_delivery_that_fails_unexpectedly_stops_the_pipeline_with_the_cause(tmp_path):
    class BrokenTarget:
        id = "broken"
        stage = "target:broken"

        async def write(self, batch: list[Message]) -> list[Any]:
            raise RuntimeError("a bug in a dead-letter target")

    source = MemorySource()
    pipeline = Pipeline(config(tmp_path, tmp_path / "dead.jsonl"), Context(env={}),
                        source=source)
    pipeline.dead_letter.target = BrokenTarget()  # type: ignore[assignment]
    source.push([msg(None)])
    with pytest.raises(DeliveryFailed) as info:
        await asyncio.wait_for(pipeline.run(asyncio.Event()), 30)
    assert "delivery task deliver-memory-1 failed: RuntimeError: a bug in a dead-letter " \
           "target" in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert source.released == []  # never acknowledged: the source gives it again


async def test_a_spool_drainer_that_dies_is_reported_not_left_dead(tmp_path):
    from unsflow.engine.deadletter import DeadLetter
    from unsflow.engine.path import TargetPath
    from unsflow.engine.spool import Spool
    from unsflow.testing.memory import MemoryTarget

    told: list[str] = []
    path = TargetPath(MemoryTarget("lake"), [], DeadLetter(tmp_path / "dead.jsonl"),
                      spool=Spool(tmp_path / "spool", "lake", max_bytes=10**6, max_age=None),
                      on_fatal=lambda what, exc: told.append(what))

    async def broken_drain() -> None:
        raise RuntimeError("a bug in the drainer")

    path.drain_spool = broken_drain  # type: ignore[method-assign]
    await path.start_spool()
    await until(lambda: bool(told))
    await path.stop_spool(1)
    assert told == [("the spool drainer of target 'lake' failed: RuntimeError: a bug in the "
                     "drainer")]
