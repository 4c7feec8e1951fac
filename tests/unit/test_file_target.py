"""File target: JSON lines appended, fsynced, never interleaved; bad input as failures."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from unsflow.components import Context
from unsflow.config.loading import parse_config
from unsflow.errors import ConfigError, NotConnected, TransientError
from unsflow.message import Message
from unsflow.targets.file import FileTarget

T0 = 1767268800.5  # 2026-01-01T12:00:00.500Z
T0_MS = 1767268800500


def msg(payload: bytes, topic: str = "com1/plant1/area1/pump-1/Message1",
        record: Any = None) -> Message:
    m = Message(topic=topic, payload=payload, received_at=T0)
    if record is not None:
        m.record = record
    return m


def target(path: Path | str, **keys: Any) -> FileTarget:
    cfg = FileTarget.config_class.model_validate({"type": "file", "path": str(path)} | keys)
    return FileTarget("out", cfg, Context(env={}))


async def write_all(path: Path, *batches: list[Message], **keys: Any) -> list[list[Any]]:
    t = target(path, **keys)
    await t.start()
    try:
        return [await t.write(batch) for batch in batches]
    finally:
        await t.stop()


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


async def test_rows_are_appended_as_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "out.jsonl"
    first = [msg(b'{"value": 13.8, "tags": {"unit": "mm/s"}}', topic="a/1"), msg(b"RUNNING", topic="a/2")]
    second = [msg(b'{"value": 14}', topic="a/3")]
    assert await write_all(path, first) == [[]]
    assert await write_all(path, second, fsync=False) == [[]]  # a restart appends
    assert lines(path) == [
        {"value": 13.8, "tags": {"unit": "mm/s"}, "_topic": "a/1", "_received_at": T0_MS},
        {"value": "RUNNING", "_topic": "a/2", "_received_at": T0_MS},
        {"value": 14, "_topic": "a/3", "_received_at": T0_MS},
    ]


async def test_event_type_batch_gives_a_line_per_item(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    (failures,) = await write_all(path, [msg(b'[{"a": 1}, {"a": 2}]'), msg(b'"x"')],
                                  **{"event-type": "batch"})
    assert [f.message.payload for f in failures] == [b'"x"']
    assert [row["a"] for row in lines(path)] == [1, 2]


async def test_bad_messages_are_failures_and_the_rest_is_written(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    batch = [msg(b'{"ok": 1}'), msg(b"\xc3\x28"), msg(b""),
             msg(b"{}", record={"blob": b"\x00"}), msg(b'{"ok": 2}')]
    (failures,) = await write_all(path, batch)
    assert [(f.message.payload, f.stage) for f in failures] == [
        (b"\xc3\x28", "target:out"), (b"", "target:out"), (b"{}", "target:out")]
    assert "UTF-8" in failures[0].error and "empty" in failures[1].error
    assert "JSON" in failures[2].error
    assert [row["ok"] for row in lines(path)] == [1, 2]


async def test_a_record_field_named_like_metadata_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    await write_all(path, [msg(b'{"_topic": "mine", "_topic_": 2}', topic="t")])
    assert lines(path) == [{"_topic__": "mine", "_topic_": 2, "_topic": "t",
                            "_received_at": T0_MS}]


async def test_concurrent_writes_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    t = target(path)
    await t.start()
    try:
        big = b'{"pad": "%s", "n": %d}'
        batches = [[msg(big % (b"x" * 5000, w * 100 + i)) for i in range(100)] for w in range(10)]
        assert await asyncio.gather(*(t.write(b) for b in batches)) == [[]] * 10
    finally:
        await t.stop()
    rows = lines(path)
    assert sorted(row["n"] for row in rows) == list(range(1000))
    # each batch is contiguous
    ns = [row["n"] for row in rows]
    assert all(ns[i] // 100 == ns[i - 1] // 100 for i in range(1, 1000) if i % 100)


async def test_a_failing_write_is_transient(tmp_path: Path) -> None:
    t = target("/dev/full")  # every write fails with ENOSPC
    await t.start()
    try:
        with pytest.raises(TransientError) as info:
            await t.write([msg(b'{"a": 1}')])
        assert info.value.component_id == "out" and "No space" in str(info.value)
    finally:
        await t.stop()
    with pytest.raises(NotConnected):
        await t.write([msg(b'{"a": 1}')])


def test_config_requires_a_path() -> None:
    data = {"targets": {"out": {"type": "file", "fsync": "sometimes"}},
            "subscriptions": {"a/#": {"qos": 1, "target": "out"}}}
    with pytest.raises(ConfigError) as info:
        parse_config(data, env={})
    paths = sorted(issue.path for issue in info.value.issues)
    assert paths == ["targets.out.fsync", "targets.out.path"]
