"""The spool on its own (files, limits, crash safety) and TargetPath with a target that fails."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from unsflow.components import Context
from unsflow.engine.deadletter import DeadLetter
from unsflow.engine.path import TargetPath
from unsflow.engine.spool import Spool, decode_message, encode_message
from unsflow.errors import SpoolFull, SpoolInUse, TransientError
from unsflow.message import NOT_DECODED, Message
from unsflow.targets.file import FileTarget, FileTargetConfig


def msg(seq: int, topic: str = "plant/l1/press/vib") -> Message:
    return Message(topic, json.dumps({"seq": seq}).encode(), 1, received_at=1700000000.0 + seq,
                   source_id="uns")


def batch(start: int, n: int) -> list[Message]:
    return [msg(i) for i in range(start, start + n)]


def spool_files(spool: Spool) -> list[str]:
    return sorted(p.name for p in spool.directory.iterdir() if p.name != ".lock")


def test_a_message_round_trips_with_everything_a_target_reads():
    original = Message("a/b", b"\xff\x00raw", 2, retain=True, received_at=1700000000.123,
                       properties={"correlation_data": [b"\x01\x02"], "user_property": [("k", "v")]},
                       record={"v": 1.5, "nested": {"x": [1, 2]}, "blob": b"\x00\x01", "s": "t"},
                       source_id="uns", attempts=3, headers={"kafka.offset": 7, "raw": b"h"})
    back = decode_message(encode_message(original))
    assert back.topic == "a/b" and back.payload == b"\xff\x00raw"
    assert (back.qos, back.retain, back.received_at, back.source_id, back.attempts) == \
        (2, True, 1700000000.123, "uns", 3)
    assert back.record == {"v": 1.5, "nested": {"x": [1, 2]}, "blob": b"\x00\x01", "s": "t"}
    # Tuples come back as lists (documented); bytes come back as bytes.
    assert back.properties == {"correlation_data": [b"\x01\x02"], "user_property": [["k", "v"]]}
    assert back.headers == {"kafka.offset": 7, "raw": b"h"}
    plain = decode_message(encode_message(Message("t", b'{"a": 1}')))
    assert plain.record is NOT_DECODED and plain.payload == b'{"a": 1}'


async def test_files_survive_a_new_spool_in_order_and_temp_files_are_removed(tmp_path):
    spool = Spool(tmp_path, "lake", max_bytes=1 << 20, max_age=None)
    spool.open()
    for start in (0, 10, 20):
        assert await spool.append(batch(start, 10)) == []
    assert (spool.messages, len(spool.entries)) == (30, 3)
    # An interrupted write (a crash between write and rename) leaves a temp file.
    (spool.directory / ".000000000004-1.batch.tmp").write_bytes(b'{"v": 1, "count": 5}\n{"t"')
    spool.close()

    again = Spool(tmp_path, "lake", max_bytes=1 << 20, max_age=None)
    again.open()
    assert not list(again.directory.glob("*.tmp"))
    assert (again.messages, len(again.entries), again.bytes) == (30, 3, spool.bytes)
    messages, corrupt = await again.read(list(again.entries))
    assert corrupt == {}
    assert [json.loads(m.payload)["seq"] for m in messages] == list(range(30))
    assert await again.append(batch(30, 1)) == []
    assert spool_files(again)[-1].startswith("000000000004-")  # numbering goes on
    again.close()


def test_one_spool_directory_one_process(tmp_path):
    first = Spool(tmp_path, "lake", max_bytes=1 << 20, max_age=None)
    (tmp_path / "lake").mkdir()
    first.open()
    with pytest.raises(SpoolInUse, match="in use by another process"):
        Spool(tmp_path, "lake", max_bytes=1 << 20, max_age=None).open()
    first.close()


async def test_byte_limit_refuses_writes_nothing_and_clears_when_drained(tmp_path):
    spool = Spool(tmp_path, "lake", max_bytes=5000, max_age=None)
    spool.open()
    await spool.append(batch(0, 40))  # about 3.5 KB
    files = spool_files(spool)
    with pytest.raises(SpoolFull, match="spool of target 'lake' full: max-bytes 5000"):
        await spool.append(batch(40, 40))
    assert spool.full is not None and "max-bytes 5000" in spool.full
    assert spool_files(spool) == files
    await spool.remove(list(spool.entries), drained=40)
    assert spool.full is None and spool.bytes == 0 and spool.drained_total == 40
    await spool.append(batch(40, 40))
    assert spool.messages == 40


async def test_concurrent_appends_share_files_in_order(tmp_path):
    spool = Spool(tmp_path, "lake", max_bytes=1 << 20, max_age=None)
    spool.open()
    await asyncio.gather(*(spool.append(batch(i, 1)) for i in range(50)))
    assert spool.messages == 50 and len(spool.entries) < 50  # group commit
    messages, _ = await spool.read(list(spool.entries))
    assert [json.loads(m.payload)["seq"] for m in messages] == list(range(50))


async def test_when_the_limit_is_reached_mid_group_only_a_prefix_is_taken(tmp_path):
    spool = Spool(tmp_path, "lake", max_bytes=2000, max_age=None)
    spool.open()
    results = await asyncio.gather(*(spool.append(batch(i * 5, 5)) for i in range(10)),
                                   return_exceptions=True)
    taken = [i for i, r in enumerate(results) if r == []]
    assert taken and taken == list(range(len(taken))) and len(taken) < 10
    assert all(isinstance(r, SpoolFull) for r in results[len(taken):])
    messages, _ = await spool.read(list(spool.entries))
    assert [json.loads(m.payload)["seq"] for m in messages] == list(range(5 * len(taken)))
    assert spool.bytes <= 2000 and spool.full is not None


async def test_corrupt_lines_become_failures_and_the_rest_is_read(tmp_path):
    spool = Spool(tmp_path, "lake", max_bytes=1 << 20, max_age=None)
    spool.open()
    await spool.append(batch(0, 3))
    path = spool.entries[0].path
    lines = path.read_bytes().split(b"\n")
    lines[2] = b'{"t": "x", "p": '  # line 3 (the 2nd message) cut short
    path.write_bytes(b"\n".join(lines))
    messages, corrupt = await spool.read(list(spool.entries))
    assert [json.loads(m.payload)["seq"] for m in messages] == [0, 2]
    (failures,) = corrupt.values()
    assert len(failures) == 1 and failures[0].stage == "spool:lake"
    assert "line 3" in failures[0].error and failures[0].message.payload == b'{"t": "x", "p": '

    path.write_bytes(b"\n".join(lines[:2]))  # truncated: the last messages are gone
    messages, corrupt = await spool.read(list(spool.entries))
    assert [json.loads(m.payload)["seq"] for m in messages] == [0]
    (failures,) = corrupt.values()
    assert "header says 3 message(s), file holds 1 line(s)" in failures[0].error


# --- TargetPath with a spool: a real file target that can be taken down ---------------


class FlakyFileTarget(FileTarget):
    """The file target, and a switch that makes every write fail as an outage does."""

    down = False

    async def write(self, batch):  # type: ignore[no-untyped-def]
        if self.down:
            raise TransientError("target down (test)", component_id=self.id)
        return await super().write(batch)


def rows(path: Path) -> list[int]:
    if not path.exists():
        return []
    return [json.loads(line)["seq"] for line in path.read_text().splitlines()]


async def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def make_path(tmp_path: Path, **spool_args) -> tuple[TargetPath, FlakyFileTarget]:
    target = FlakyFileTarget("lake", FileTargetConfig(type="file", path=str(tmp_path / "out.jsonl")),
                             Context(env={}))
    await target.start()
    spool = Spool(tmp_path / "spool", "lake", **{"max_bytes": 1 << 20, "max_age": None,
                                                  **spool_args})
    path = TargetPath(target, [], DeadLetter(tmp_path / "dead.jsonl"), backoff_initial=0.01,
                      backoff_max=0.05, spool=spool)
    await path.start_spool()
    return path, target


async def test_a_down_target_gets_its_batches_in_order_when_back(tmp_path):
    path, target = await make_path(tmp_path)
    try:
        await path.handle(batch(0, 10))
        target.down = True
        await path.handle(batch(10, 10))  # returns: spooled, so the source may acknowledge
        assert path.spool.messages == 10 and rows(tmp_path / "out.jsonl") == list(range(10))
        await path.handle(batch(20, 10))
        target.down = False
        # The spool is not empty: this one queues behind the spooled ones, order kept.
        await path.handle(batch(30, 10))
        await wait_for(lambda: path.spool.empty)
        assert rows(tmp_path / "out.jsonl") == list(range(40))
        assert path.spool.spooled_total == 30 and path.spool.drained_total == 30
        assert path.stats.accepted == 40 and path.stats.retries >= 1
        assert spool_files(path.spool) == []
    finally:
        await path.stop_spool(1.0)
        await target.stop()


async def test_a_restart_drains_what_the_last_run_spooled(tmp_path):
    path, target = await make_path(tmp_path)
    target.down = True
    await path.handle(batch(0, 25))
    await path.stop_spool(1.0)
    await target.stop()
    assert rows(tmp_path / "out.jsonl") == []

    path, target = await make_path(tmp_path)  # a new process: same spool directory
    try:
        await wait_for(lambda: path.spool.empty)
        assert rows(tmp_path / "out.jsonl") == list(range(25))
    finally:
        await path.stop_spool(1.0)
        await target.stop()


async def test_full_spool_holds_the_batch_until_space_returns(tmp_path):
    path, target = await make_path(tmp_path, max_bytes=3000)
    try:
        target.down = True
        await path.handle(batch(0, 30))  # about 2.6 KB: fits
        held = asyncio.create_task(path.handle(batch(30, 30)))
        await wait_for(lambda: path.spool.full is not None)
        await asyncio.sleep(0.3)
        assert not held.done(), "a batch was taken while the spool was full"
        assert path.spool.messages == 30
        target.down = False
        await asyncio.wait_for(held, 10)
        await wait_for(lambda: path.spool.empty)
        assert rows(tmp_path / "out.jsonl") == list(range(60))
        assert path.spool.full is None
        assert not (tmp_path / "dead.jsonl").exists()
    finally:
        await path.stop_spool(1.0)
        await target.stop()


async def test_batches_older_than_max_age_go_to_the_dead_letter_saying_so(tmp_path):
    path, target = await make_path(tmp_path, max_age=0.2)
    try:
        target.down = True
        await path.handle(batch(0, 5))
        await wait_for(lambda: path.spool.empty, timeout=10)
        dead = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
        assert sorted(json.loads(d["payload"])["seq"] for d in dead) == list(range(5))
        assert all(d["stage"] == "spool:lake" and "older than spool max-age 0.2s" in d["error"]
                   for d in dead)
        assert path.stats.dead_lettered == 5
    finally:
        await path.stop_spool(1.0)
        await target.stop()


async def test_a_corrupt_spool_file_is_dead_lettered_not_fatal(tmp_path):
    path, target = await make_path(tmp_path)
    target.down = True
    await path.handle(batch(0, 3))
    await path.stop_spool(1.0)
    await target.stop()
    spooled = next((tmp_path / "spool" / "lake").glob("*.batch"))
    spooled.write_bytes(spooled.read_bytes().replace(b'"t":', b'"t" ', 1))  # 1st message

    path, target = await make_path(tmp_path)
    try:
        await wait_for(lambda: path.spool.empty)
        assert rows(tmp_path / "out.jsonl") == [1, 2]
        dead = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
        assert len(dead) == 1 and dead[0]["stage"] == "spool:lake"
        assert "corrupt spool file" in dead[0]["error"] and "line 2" in dead[0]["error"]
    finally:
        await path.stop_spool(1.0)
        await target.stop()


def test_config_spool_is_on_by_default_with_a_per_target_opt_out(tmp_path):
    from unsflow.config.loading import parse_config
    from unsflow.engine.pipeline import build_spool

    config = parse_config({
        "targets": {"lake": {"type": "file", "path": str(tmp_path / "a.jsonl")},
                    "alerts": {"type": "file", "path": str(tmp_path / "b.jsonl"), "spool": False}},
        "subscriptions": {"plant/#": {"qos": 1, "target": ["lake", "alerts"]}},
    }, env={})
    lake = build_spool(config, "lake")
    assert lake is not None and lake.directory == Path("./unsflow-spool/lake")
    assert (lake.max_bytes, lake.max_age) == (1024 ** 3, 7 * 24 * 3600.0)
    assert build_spool(config, "alerts") is None

    config = parse_config({
        "targets": {"a/b": {"type": "file", "path": str(tmp_path / "a.jsonl")}},
        "subscriptions": {"plant/#": {"qos": 1, "target": "a/b"}},
        "spool": {"path": str(tmp_path / "sp"), "max-bytes": 5000, "max-age": None},
    }, env={})
    spool = build_spool(config, "a/b")
    assert spool is not None and spool.directory == tmp_path / "sp" / "a%2Fb"
    assert (spool.max_bytes, spool.max_age) == (5000, None)


async def test_a_spool_left_by_a_crash_is_drained_through_the_pipeline_first(tmp_path):
    """A spool file from before a restart reaches the target before the new batches."""
    from unsflow.config.loading import parse_config
    from unsflow.engine.pipeline import Pipeline
    from unsflow.testing import MemorySource

    old = Spool(tmp_path / "spool", "lake", max_bytes=1 << 20, max_age=None)
    await old.append(batch(0, 20))
    old.close()
    config = parse_config({
        "targets": {"lake": {"type": "file", "path": str(tmp_path / "out.jsonl")}},
        "subscriptions": {"plant/#": {"qos": 1, "target": "lake"}},
        "dead-letter": {"path": str(tmp_path / "dead.jsonl")},
        "spool": {"path": str(tmp_path / "spool")},
        "http": {"port": 0},
    }, env={})
    source = MemorySource()
    pipeline = Pipeline(config, Context(env={}), source=source)
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    try:
        await wait_for(lambda: len(rows(tmp_path / "out.jsonl")) >= 20)
        source.push(batch(20, 5))
        await wait_for(lambda: len(rows(tmp_path / "out.jsonl")) >= 25)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert rows(tmp_path / "out.jsonl") == list(range(25))
    assert not list((tmp_path / "spool" / "lake").glob("*.batch"))
