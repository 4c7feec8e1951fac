"""window: per-key sliding windows, oldest value first, whatever the arrival order."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from unsflow.components import Context
from unsflow.config.loading import parse_config
from unsflow.errors import ConfigError
from unsflow.message import Message
from unsflow.processors.window import WindowProcessor, WindowProcessorConfig

DEMO_CSV = Path("/work/shared/data/manuela-vibration.csv")


def reading(value: Any, *, t: Any = None, machine: str = "m1", sensor: str = "vibration",
            topic: str = "acme/p1/a1/l1/m1/vibration") -> Message:
    record: dict[str, Any] = {"machine": machine, "sensor": sensor, "value": value}
    if t is not None:
        record["ts"] = t
    return Message(topic=topic, payload=b"", record=record)


def processor(**config: Any) -> WindowProcessor:
    cfg = WindowProcessorConfig.model_validate({"type": "window", **config})
    return WindowProcessor("w", cfg, Context(env={}))


async def test_windows_are_oldest_first_and_start_when_full() -> None:
    w = processor(size=3)
    outputs, failures = await w.process([reading(v) for v in (1, 2, 3, 4, 5)])
    assert failures == []
    assert [o.record["window"] for o in outputs] == [[1, 2, 3], [2, 3, 4], [3, 4, 5]]
    # the output is the input record plus the window; its value is the window's newest
    assert outputs[0].record == {"machine": "m1", "sensor": "vibration", "value": 3,
                                 "window": [1, 2, 3]}
    assert w.describe()["warming"] == 2


async def test_state_carries_across_batches_and_keys_are_separate() -> None:
    w = processor(size=2)
    out1, _ = await w.process([reading(1), reading(10, sensor="temperature"), reading(2)])
    out2, _ = await w.process([reading(20, sensor="temperature"), reading(3, machine="m2")])
    assert [(o.record["sensor"], o.record["window"]) for o in out1 + out2] == [
        ("vibration", [1, 2]), ("temperature", [10, 20])]
    assert w.describe()["keys"] == 3


async def test_out_of_order_arrivals_are_placed_by_time() -> None:
    # The original demo sent its windows newest first to a model trained oldest first,
    # so a spike looked old and was flagged late. Order must come from the time, not arrival.
    w = processor(size=4, **{"time-field": "ts"})
    arrivals = [reading(12.0, t=1000), reading(13.0, t=3000), reading(40.0, t=4000),
                reading(12.5, t=2000), reading(14.0, t=5000), reading(11.0, t=3500)]
    outputs, failures = await w.process(arrivals)
    assert failures == []
    # Each record gets its own window: the values at or before its time, its own last.
    assert [(o.record["ts"], o.record["window"]) for o in outputs] == [
        (5000, [12.5, 13.0, 40.0, 14.0]),  # 12.5 (t=2000) arrived fourth, placed second
        (3500, [12.0, 12.5, 13.0, 11.0]),  # arrived after t=4000 and 5000: the window it
    ]                                      # would have had in order, not the newest values
    # t=1000..4000 were warming: fewer than 4 values at or before their time on arrival
    assert w.outcomes() == {"warming": 4, "late": 0, "evicted": 0}


async def test_a_late_record_gets_its_window_from_the_kept_history() -> None:
    w = processor(size=3, history=6, **{"time-field": "ts"})
    in_order, _ = await w.process([reading(float(t), t=t) for t in (1, 2, 3, 5, 6, 7)])
    assert [o.record["window"] for o in in_order] == [[1, 2, 3], [2, 3, 5], [3, 5, 6],
                                                      [5, 6, 7]]
    late, failures = await w.process([reading(4.0, t=4)])  # after 5, 6, 7
    assert failures == [] and late[0].record["window"] == [2.0, 3.0, 4.0]
    # later windows include it in its place
    after, _ = await w.process([reading(8.0, t=8)])
    assert after[0].record["window"] == [6.0, 7.0, 8.0]
    assert w._windows[("m1", "vibration")].values == [3.0, 4.0, 5.0, 6.0, 7.0, 8.0]


async def test_too_late_record_is_dead_lettered_with_the_reason_or_passed() -> None:
    # history 2: a record older than both kept values, while older ones existed
    w = processor(size=2, history=2, **{"time-field": "ts"})
    first = [reading(1, t=10), reading(2, t=20), reading(3, t=30)]
    outputs, failures = await w.process([*first, reading(0, t=5)])
    assert [o.record["window"] for o in outputs] == [[1, 2], [2, 3]]
    assert [f.error for f in failures] == [
        "late: time 5 is older than the 2 values kept for key ('m1', 'vibration') (oldest 20);"
        " its window cannot be rebuilt: raise history (now 2) to accept later arrivals"]
    assert w.outcomes()["late"] == 1
    # one whose window needs a value the history dropped (t=10) is late too
    outputs, failures = await w.process([reading(2.5, t=25)])
    assert outputs == [] and len(failures) == 1 and w.outcomes()["late"] == 2

    w = processor(size=2, history=2, late="pass", **{"time-field": "ts"})
    late = reading(0, t=5)
    outputs, failures = await w.process([*first, late])
    assert failures == []
    assert [o.record.get("window") for o in outputs] == [[1, 2], [2, 3], None]
    assert outputs[2] is late and w.outcomes()["late"] == 1


async def test_a_key_that_never_had_older_values_is_warming_not_late() -> None:
    w = processor(size=3, **{"time-field": "ts"})
    outputs, failures = await w.process([reading(2, t=20), reading(1, t=10)])
    assert outputs == [] and failures == []
    assert w.outcomes() == {"warming": 2, "late": 0, "evicted": 0}


async def test_warming_records_pass_on_without_window_or_emit_partial() -> None:
    w = processor(size=3, **{"no-window": "pass"})
    outputs, _ = await w.process([reading(1), reading(2), reading(3)])
    assert [o.record.get("window") for o in outputs] == [None, None, [1, 2, 3]]

    w = processor(size=3, **{"emit-partial": True})
    outputs, _ = await w.process([reading(1), reading(2), reading(3)])
    assert [o.record["window"] for o in outputs] == [[1], [1, 2], [1, 2, 3]]


async def test_redelivered_reading_with_same_time_does_not_count_twice() -> None:
    w = processor(size=3, **{"time-field": "ts"})
    batch = [reading(1, t=1), reading(2, t=2), reading(2, t=2), reading(3, t=3)]
    outputs, _ = await w.process(batch)
    assert [o.record["window"] for o in outputs] == [[1, 2, 3]]


async def test_iso_times_and_topic_key() -> None:
    w = processor(size=2, key="{topic}", **{"time-field": "ts"})
    a = Message("acme/m1/vibration", b"", record={"value": 1.0, "ts": "2026-11-23T12:00:00+00:00"})
    c = Message("acme/m1/vibration", b"", record={"value": 3.0, "ts": "2026-11-23T12:00:02+00:00"})
    b = Message("acme/m1/vibration", b"", record={"value": 2.0, "ts": "2026-11-23T12:00:01+00:00"})
    outputs, failures = await w.process([a, c, b])
    assert failures == [] and [o.record["window"] for o in outputs] == [[1.0, 3.0], [1.0, 2.0]]
    # undecoded bare numbers (a UNS topic per metric) are read as {"value": number}
    w = processor(size=2, key="{topic}")
    outputs, failures = await w.process([Message("acme/m2/vibration", b"7.5"),
                                         Message("acme/m2/vibration", b"8")])
    assert failures == [] and [o.record for o in outputs] == [{"value": 8, "window": [7.5, 8]}]


async def test_bad_records_are_failures_with_reasons() -> None:
    w = processor(**{"time-field": "ts"})
    bad = [reading("high", t=1), reading(None, t=1), reading(float("nan"), t=1), reading(True, t=1),
           Message("t", b"", record={"machine": "m1", "sensor": "s", "ts": 1}),
           Message("t", b"", record={"sensor": "s", "value": 1, "ts": 1}),
           reading(1.0), reading(1.0, t="yesterday"),
           Message("t", b"{nope"), Message("t", b"", record=["a"])]
    outputs, failures = await w.process(bad)
    assert outputs == []
    assert [f.message for f in failures] == bad
    assert [f.error for f in failures] == [
        "value field 'value' must hold a finite number, found 'high'",
        "value field 'value' must hold a finite number, found None",
        "value field 'value' must hold a finite number, found nan",
        "value field 'value' must hold a finite number, found True",
        "record has no value field 'value'",
        "record has no key field 'machine'",
        "record has no time field 'ts'",
        "time field 'ts' must hold an epoch number or an ISO 8601 time, found 'yesterday'",
        failures[8].error,
        "record must be an object or a number, found ['a']",
    ]
    assert failures[8].error.startswith("payload is not valid JSON")
    assert {f.stage for f in failures} == {"processor:w"}


async def test_keys_are_bounded_least_recently_used_first() -> None:
    w = processor(size=2, **{"max-keys": 2})
    # a is used again after b, so b is the least recently used key when c arrives
    await w.process([reading(1, machine="a"), reading(1, machine="b"), reading(2, machine="a"),
                     reading(1, machine="c")])
    assert w.describe()["evicted"] == 1
    outputs, _ = await w.process([reading(3, machine="a"), reading(2, machine="c"),
                                  reading(2, machine="b")])
    # a and c kept their values; b was forgotten and warms up again (evicting a)
    assert [(o.record["machine"], o.record["window"]) for o in outputs] == [
        ("a", [2, 3]), ("c", [1, 2])]
    assert w.describe()["keys"] == 2 and w.describe()["evicted"] == 2


async def test_large_batches_go_through_a_thread_with_the_same_result() -> None:
    w = processor(size=3, **{"key-fields": ["machine"]})
    outputs, _ = await w.process([reading(i, machine=f"m{i % 7}") for i in range(3500)])
    assert len(outputs) == 3500 - 2 * 7
    assert outputs[-1].record["window"] == [3499 - 14, 3499 - 7, 3499]


async def test_demo_data_windows_match_the_csv_per_pump() -> None:
    rows = list(csv.DictReader(DEMO_CSV.read_text().splitlines()))
    batch = [Message("iot-sensor/sw/vibration", b"",
                     record={"machineId": "floor-1-line-1-extruder-1", "deviceId": r["id"],
                             "value": float(r["value"]), "epochMillis": int(r["ts"])})
             for r in reversed(rows)]  # newest first, as the demo sent them
    w = processor(size=5, **{"key-fields": ["machineId", "deviceId"], "time-field": "epochMillis"})
    outputs, failures = await w.process(batch)
    # newest first: each arrival is older than every value before it, so none has the
    # values before it; once a pump's history (20) is full, older arrivals are late and
    # dead-lettered saying so, never held without a trace
    assert outputs == []
    assert w.outcomes()["warming"] == 2 * 20 and w.outcomes()["late"] == len(rows) - 2 * 20
    assert len(failures) == len(rows) - 2 * 20
    assert all(f.error.startswith("late: time ") for f in failures)
    # each pump keeps its last twenty values by time
    for pump in ("pump-1", "pump-2"):
        values = [float(r["value"]) for r in sorted(rows, key=lambda r: int(r["ts"]))
                  if r["id"] == pump]
        key = ("floor-1-line-1-extruder-1", pump)
        assert w._windows[key].values == values[-20:]


def test_config_errors_name_the_key() -> None:
    data = {
        "targets": {"out": {"type": "file", "path": "/tmp/x.jsonl", "processors": ["w"]}},
        "processors": {"w": {"type": "window", "size": 0, "key": "{topic}",
                             "key-fields": ["machine"]}},
        "subscriptions": {"a/#": {"qos": 1, "target": "out"}},
    }
    with pytest.raises(ConfigError) as info:
        parse_config(data, env={})
    text = str(info.value)
    assert "processors.w.size" in text
    data["processors"]["w"] = {"type": "window", "key": "{topic}", "key-fields": ["machine"]}
    with pytest.raises(ConfigError) as info:
        parse_config(data, env={})
    assert "either key or key-fields, not both" in str(info.value)
    data["processors"]["w"] = {"type": "window", "key-fields": ["machineId", "deviceId"],
                               "time-field": "epochMillis"}
    assert parse_config(data, env={}).processors["w"].size == 5


def test_outputs_serialise_as_json() -> None:
    # what a target writes: the window is a plain list of numbers
    assert json.dumps({"window": [1.0, 2]}) == '{"window": [1.0, 2]}'


async def test_demo_data_in_time_order_gives_consecutive_slices() -> None:
    rows = [r for r in csv.DictReader(DEMO_CSV.read_text().splitlines()) if r["id"] == "pump-1"]
    batch = [Message("iot-sensor/sw/vibration", b"",
                     record={"machineId": "m", "deviceId": "pump-1", "value": float(r["value"]),
                             "epochMillis": int(r["ts"])}) for r in rows]
    w = processor(size=5, **{"key-fields": ["machineId", "deviceId"], "time-field": "epochMillis"})
    outputs, _ = await w.process(batch)
    values = [float(r["value"]) for r in rows]
    assert [o.record["window"] for o in outputs] == [values[i - 4:i + 1]
                                                    for i in range(4, len(values))]


async def test_in_a_pipeline_held_and_failed_messages_are_acknowledged(tmp_path: Path) -> None:
    # parse (csv) -> window -> threshold on the window's newest value, through the real engine
    import asyncio
    import time

    from unsflow.engine.pipeline import Pipeline
    from unsflow.testing import MemorySource

    data = {
        "targets": {"alerts": {"type": "file", "path": str(tmp_path / "alerts.jsonl"),
                               "processors": ["csv", "win", "spike"]}},
        "processors": {
            "csv": {"type": "parse", "format": "csv",
                    "columns": ["machineId", "deviceId", "value", "epochMillis"]},
            "win": {"type": "window", "size": 3, "key-fields": ["machineId", "deviceId"],
                    "time-field": "epochMillis"},
            "spike": {"type": "threshold", "above": 25, "name": "vibration"}},
        "subscriptions": {"iot-sensor/sw/#": {"qos": 1, "target": "alerts"}},
        "dead-letter": {"path": str(tmp_path / "dead.jsonl")},
    }
    cfg = parse_config(data, env={})
    source = MemorySource()
    pipeline = Pipeline(cfg, Context(env={}), source=source)
    payloads = [b"m1,pump-1,12.0,1000", b"m1,pump-1,13.0,2000", b"m1,pump-1,33.0,3000",
                b"m1,pump-1,high,4000", b"m1,pump-1,14.0,5000"]
    source.push([Message("iot-sensor/sw/vibration", p, 1, received_at=time.time())
                 for p in payloads])
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    deadline = time.monotonic() + 10
    while source.acked_batches < 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 30)
    assert source.acked_batches == 1  # held (warming) and failed messages included
    alerts = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert [(a["alert"], a["reading"]["window"]) for a in alerts] == [
        ("vibration above 25", [12.0, 13.0, 33.0])]
    dead = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert [d["stage"] for d in dead] == ["processor:win"]
    assert "must hold a finite number, found 'high'" in dead[0]["error"]


async def test_batches_reach_the_window_in_source_order_through_the_engine(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """parse sends a large batch to a worker thread and a small one inline: the window
    after it must still see the large one first (issue 11: a burst lost 30% of readings)."""
    import asyncio

    import unsflow.processors.parse as parse_module
    from unsflow.engine.deadletter import DeadLetter
    from unsflow.engine.path import TargetPath
    from unsflow.processors.parse import ParseProcessor, ParseProcessorConfig
    from unsflow.testing import MemoryTarget

    to_thread = asyncio.to_thread

    async def slow_thread_start(*args: Any) -> Any:  # a busy machine: the thread starts late
        await asyncio.sleep(0.05)
        return await to_thread(*args)

    monkeypatch.setattr(parse_module.asyncio, "to_thread", slow_thread_start)
    parse = ParseProcessor("p", ParseProcessorConfig.model_validate({"type": "parse"}),
                           Context(env={}))
    w = processor(size=5, time_field="ts")
    target = MemoryTarget()
    path = TargetPath(target, [parse, w], DeadLetter(str(tmp_path / "dead.jsonl")))

    def raw(i: int) -> Message:
        return Message("acme/p1/a1/l1/m1/vibration",
                       json.dumps({"machine": "m1", "sensor": "vibration", "value": float(i),
                                   "ts": i}).encode())

    first = [raw(i) for i in range(300)]  # large: parsed in a worker thread
    second = [raw(i) for i in range(300, 310)]  # small: parsed inline, would overtake
    tickets = path.ticket(), path.ticket()
    await asyncio.gather(path.handle(first, tickets[0]), path.handle(second, tickets[1]))
    assert w.outcomes() == {"warming": 4, "late": 0, "evicted": 0}
    windows = [m.record["window"] for m in target.messages]
    assert len(windows) == 306
    assert windows[296] == [296.0, 297.0, 298.0, 299.0, 300.0]
