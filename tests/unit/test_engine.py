"""The engine with an in-memory source and real targets: routing, acks, retries, dead letter."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from unsflow.components import Context
from unsflow.config.loading import parse_config
from unsflow.engine.pipeline import Pipeline
from unsflow.testing import MemorySource


def msg(topic: str, payload: dict | bytes, qos: int = 1):
    from unsflow.message import Message

    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return Message(topic, data, qos, received_at=time.time(), source_id="mem")


def config(tmp_path, **extra):
    data = {
        "targets": {
            "a": {"type": "file", "path": str(tmp_path / "a.jsonl")},
            "b": {"type": "file", "path": str(tmp_path / "b.jsonl")},
        },
        "subscriptions": {
            "plant/#": {"qos": 1, "target": "a"},
            "plant/+/press/#": {"qos": 1, "target": ["a", "b"]},
        },
        "dead-letter": {"path": str(tmp_path / "dead.jsonl")},
    }
    for key, value in extra.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return parse_config(data, env={})


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def run_until(pipeline: Pipeline, condition, timeout: float = 10.0) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 30)
    assert condition(), "condition not reached"


async def test_each_distinct_target_gets_a_message_once(tmp_path):
    source = MemorySource()
    pipeline = Pipeline(config(tmp_path), Context(env={}), source=source)
    source.push([msg("plant/l1/press/vib", {"n": 1}), msg("plant/l1/oven/temp", {"n": 2}),
                 msg("other/x", {"n": 3})])
    await run_until(pipeline, lambda: source.acked_batches == 1)
    assert sorted(r["n"] for r in lines(tmp_path / "a.jsonl")) == [1, 2]
    assert [r["n"] for r in lines(tmp_path / "b.jsonl")] == [1]
    assert pipeline.unrouted == 1


async def test_ack_waits_for_every_target_and_acks_in_order(tmp_path):
    cfg = config(tmp_path, processors={"slow": {"type": "python",
                                                "function": "plugins.engine_faults:flaky"}})
    cfg = cfg.model_copy(update={"targets": {
        **cfg.targets, "b": cfg.targets["b"].model_copy(update={"processors": ["slow"]})}})
    from plugins import engine_faults

    engine_faults.state.update(calls=0, fail_first=3)
    source = MemorySource()
    pipeline = Pipeline(cfg, Context(env={}), source=source)
    source.push([msg("plant/l1/press/vib", {"n": 1})])   # a and b (b retries 3 times)
    source.push([msg("plant/l1/oven/temp", {"n": 2})])   # a only: done first
    await run_until(pipeline, lambda: source.acked_batches == 2)
    # The second batch finished first but was acknowledged after the first.
    assert source.ack_calls == [1, 0]
    assert source.released == [0, 1]
    assert [r["n"] for r in lines(tmp_path / "b.jsonl")] == [1]
    assert lines(tmp_path / "b.jsonl")[0]["checked"] is True
    assert engine_faults.state["calls"] == 4
    assert pipeline.paths["b"].stats.retries == 3


async def test_undecodable_payload_goes_to_dead_letter_rest_goes_on(tmp_path):
    source = MemorySource()
    pipeline = Pipeline(config(tmp_path), Context(env={}), source=source)
    source.push([msg("plant/l1/oven/t", {"n": 1}), msg("plant/l1/oven/t", b"\xff\x00"),
                 msg("plant/l1/oven/t", b""), msg("plant/l1/oven/t", {"n": 4})])
    await run_until(pipeline, lambda: source.acked_batches == 1)
    assert [r["n"] for r in lines(tmp_path / "a.jsonl")] == [1, 4]
    dead = lines(tmp_path / "dead.jsonl")
    assert [d["stage"] for d in dead] == ["target:a", "target:a"]
    assert "UTF-8" in dead[0]["error"] and dead[0]["payload_base64"] == "/wA="
    assert "empty payload" in dead[1]["error"]
    assert pipeline.dead_letter.count == 2


async def test_unfinished_batch_is_not_acked_at_shutdown(tmp_path):
    from plugins import engine_faults

    cfg = config(tmp_path, processors={"down": {"type": "python",
                                                "function": "plugins.engine_faults:flaky"}},
                 **{"shutdown-timeout": 0.5})
    cfg = cfg.model_copy(update={"targets": {
        **cfg.targets, "b": cfg.targets["b"].model_copy(update={"processors": ["down"]})}})
    engine_faults.state.update(calls=0, fail_first=10**9)   # never recovers
    source = MemorySource()
    pipeline = Pipeline(cfg, Context(env={}), source=source)
    source.push([msg("plant/l1/press/vib", {"n": 1})])
    await run_until(pipeline, lambda: engine_faults.state["calls"] >= 2)
    assert source.acked_batches == 0  # the broker would redeliver it
    assert lines(tmp_path / "b.jsonl") == []


@pytest.fixture(autouse=True)
def _plugins_on_path(monkeypatch):
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).parents[1]))
