"""threshold: alerts for readings beyond a limit, or every record annotated."""

from __future__ import annotations

from typing import Any

import pytest

from unsflow.components import Context
from unsflow.config.loading import parse_config
from unsflow.errors import ConfigError
from unsflow.message import Message
from unsflow.processors.threshold import ThresholdProcessor, ThresholdProcessorConfig


def reading(sensor: str, value: Any, machine: str = "m1") -> Message:
    return Message(topic=f"acme/p1/a1/l1/{machine}/{sensor}", payload=b"",
                   record={"machine": machine, "sensor": sensor, "value": value, "unit": "C"})


def processor(**config: Any) -> ThresholdProcessor:
    cfg = ThresholdProcessorConfig.model_validate({"type": "threshold", **config})
    return ThresholdProcessor("hot", cfg, Context(env={}))


async def test_demo_temperature_alert_carries_the_reading() -> None:
    p = processor(match={"sensor": "temperature"}, above=70)
    batch = [reading("temperature", 52.0), reading("temperature", 73.2),
             reading("vibration", 99.0), reading("temperature", 70)]
    outputs, failures = await p.process(batch)
    assert failures == []
    assert [o.record for o in outputs] == [{
        "alert": "temperature above 70", "limit": 70, "value": 73.2,
        "reading": batch[1].record, "topic": "acme/p1/a1/l1/m1/temperature"}]
    assert outputs[0].topic == batch[1].topic  # an MQTT target's template decides where it goes
    assert p.describe()["alerts"] == 1


async def test_below_and_both_limits_with_a_name() -> None:
    p = processor(above=18.5, below=10, name="vibration")
    outputs, _ = await p.process([reading("vibration", 9.5), reading("vibration", 12),
                                  reading("vibration", 30)])
    assert [(o.record["alert"], o.record["limit"], o.record["value"]) for o in outputs] == [
        ("vibration below 10", 10, 9.5), ("vibration above 18.5", 18.5, 30)]


async def test_annotate_marks_every_record() -> None:
    p = processor(match={"sensor": "temperature"}, above=70, mode="annotate")
    batch = [reading("temperature", 71), reading("temperature", 69), reading("vibration", 80)]
    outputs, failures = await p.process(batch)
    assert failures == []
    assert [o.record["alert"] for o in outputs] == [True, False, False]
    assert outputs[0].record == {**batch[0].record, "alert": True}


async def test_match_needs_every_field() -> None:
    p = processor(match={"sensor": "temperature", "machine": "m2"}, above=0)
    outputs, _ = await p.process([reading("temperature", 1, "m1"), reading("temperature", 1, "m2")])
    assert [o.record["reading"]["machine"] for o in outputs] == ["m2"]
    assert outputs[0].record["alert"] == "temperature m2 above 0"


async def test_bad_selected_records_fail_others_are_not_checked() -> None:
    p = processor(match={"sensor": "temperature"}, above=70)
    bad = [reading("temperature", "hot"), reading("temperature", None),
           Message("t", b"", record={"sensor": "temperature"}), Message("t", b"{nope")]
    fine = reading("vibration", "n/a")  # not selected: its value is not looked at
    outputs, failures = await p.process([*bad, fine])
    assert outputs == []
    assert [f.message for f in failures] == bad
    assert [f.error for f in failures[:3]] == [
        "field 'value' must hold a number, found 'hot'",
        "field 'value' must hold a number, found None",
        "record has no field 'value'"]
    assert failures[3].error.startswith("payload is not valid JSON")


async def test_undecoded_json_and_bare_numbers() -> None:
    p = processor(above=70)
    outputs, failures = await p.process([Message("a/temp", b"75.5"),
                                         Message("a/temp", b'{"value": 80}')])
    assert failures == []
    assert [(o.record["alert"], o.record["reading"]) for o in outputs] == [
        ("value above 70", {"value": 75.5}), ("value above 70", {"value": 80})]


def test_config_needs_a_limit() -> None:
    data = {
        "targets": {"out": {"type": "file", "path": "/tmp/x.jsonl", "processors": ["hot"]}},
        "processors": {"hot": {"type": "threshold", "match": {"sensor": "temperature"}}},
        "subscriptions": {"a/#": {"qos": 1, "target": "out"}},
    }
    with pytest.raises(ConfigError) as info:
        parse_config(data, env={})
    assert "at least one limit: above or below" in str(info.value)
    data["processors"]["hot"] = {"type": "threshold", "above": 70, "mode": "loud"}
    with pytest.raises(ConfigError) as info:
        parse_config(data, env={})
    assert "processors.hot.mode" in str(info.value)


async def test_large_batches_give_the_same_result() -> None:
    p = processor(match={"sensor": "temperature"}, above=70, mode="annotate")
    batch = [reading("temperature", 60 + i % 20) for i in range(2000)]
    outputs, failures = await p.process(batch)
    assert failures == [] and len(outputs) == 2000
    assert sum(o.record["alert"] for o in outputs) == 900 == p.describe()["alerts"]
