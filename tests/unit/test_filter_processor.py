"""filter: only matching messages go on (the anomalies of a model), unchanged."""

from __future__ import annotations

from typing import Any

import pytest

from unsflow.components import Context
from unsflow.config.loading import parse_config
from unsflow.errors import ConfigError
from unsflow.message import Message
from unsflow.processors.filter import FilterProcessor, FilterProcessorConfig


def scored(anomaly: Any, value: float = 13.0, **extra: Any) -> Message:
    return Message(topic="acme/p1/a1/l1/m1/vibration", payload=b"",
                   record={"machine": "m1", "sensor": "vibration", "value": value,
                           "window": [12.0, 12.5, 13.0, 12.9, value], "anomaly": anomaly, **extra})


def processor(**config: Any) -> FilterProcessor:
    cfg = FilterProcessorConfig.model_validate({"type": "filter", **config})
    return FilterProcessor("anomalies-only", cfg, Context(env={}))


async def test_equals_keeps_only_anomalies_with_their_reading() -> None:
    p = processor(field="anomaly", equals=1)
    batch = [scored(0), scored(1, 33.0), scored(0), scored(1.0, 31.0), scored(True)]
    outputs, failures = await p.process(batch)
    assert failures == []
    # 1 and 1.0 match, a boolean true does not equal the number 1
    assert [o.record for o in outputs] == [batch[1].record, batch[3].record]
    assert outputs[0] is batch[1]  # unchanged: same topic, payload and record
    assert p.describe()["kept"] == 2 and p.describe()["dropped"] == 3


async def test_dotted_field_reaches_into_the_rest_answer() -> None:
    p = processor(field="inference.anomaly", equals=True)
    batch = [scored(None, inference={"label": 1, "anomaly": True}),
             scored(None, inference={"label": 0, "anomaly": False})]
    outputs, _ = await p.process(batch)
    assert [o.record["inference"]["label"] for o in outputs] == [1]


async def test_a_key_with_a_dot_wins_over_the_nested_path() -> None:
    p = processor(field="a.b", equals=2)
    m = Message(topic="t", payload=b"", record={"a.b": 2, "a": {"b": 3}})
    outputs, _ = await p.process([m])
    assert outputs == [m]


async def test_comparisons_in_and_not_equals() -> None:
    batch = [scored(0, v) for v in (5.0, 12.0, 20.0, 40.0)]
    outputs, _ = await processor(field="value", above=10, below=30).process(batch)
    assert [o.record["value"] for o in outputs] == [12.0, 20.0]
    outputs, _ = await processor(field="value", **{"in": [5, 40]}).process(batch)
    assert [o.record["value"] for o in outputs] == [5.0, 40.0]
    outputs, _ = await processor(field="value", **{"not-equals": 12}).process(batch)
    assert [o.record["value"] for o in outputs] == [5.0, 20.0, 40.0]


async def test_equals_null_is_a_condition() -> None:
    outputs, _ = await processor(field="anomaly", equals=None).process([scored(None), scored(0)])
    assert [o.record["anomaly"] for o in outputs] == [None]


async def test_missing_field_fails_or_drops_and_bad_values_fail() -> None:
    no_field = Message(topic="t", payload=b"", record={"value": 1})
    outputs, failures = await processor(field="anomaly", equals=1).process([no_field, scored(1)])
    assert len(outputs) == 1
    assert [(f.message, f.error, f.stage) for f in failures] == [
        (no_field, "record has no field 'anomaly'", "processor:anomalies-only")]
    outputs, failures = await processor(field="anomaly", equals=1, missing="drop").process(
        [no_field, scored(1)])
    assert len(outputs) == 1 and failures == []
    outputs, failures = await processor(field="anomaly", above=0).process([scored("high")])
    assert outputs == []
    assert failures[0].error == "field 'anomaly' must hold a number to compare, found 'high'"


async def test_undecoded_payloads_are_decoded_once_or_fail() -> None:
    good = Message(topic="t", payload=b'{"anomaly": 1, "value": 40}')
    bad = Message(topic="t", payload=b"not json")
    outputs, failures = await processor(field="anomaly", equals=1).process([good, bad])
    assert [o.record for o in outputs] == [{"anomaly": 1, "value": 40}]
    assert outputs[0].payload == good.payload
    assert len(failures) == 1 and "not valid JSON" in failures[0].error


async def test_large_batches_keep_order() -> None:
    batch = [scored(i % 3 == 0, float(i)) for i in range(1200)]
    outputs, _ = await processor(field="anomaly", equals=True).process(batch)
    assert [o.record["value"] for o in outputs] == [float(i) for i in range(0, 1200, 3)]


def test_config_needs_a_condition_and_is_checked_at_load() -> None:
    data = {
        "targets": {"out": {"type": "file", "path": "/tmp/x.jsonl", "processors": ["only"]}},
        "processors": {"only": {"type": "filter", "field": "anomaly"}},
        "subscriptions": {"a/#": {"qos": 1, "target": "out"}},
    }
    with pytest.raises(ConfigError) as info:
        parse_config(data, env={})
    assert "at least one condition: equals, not-equals, in, above or below" in str(info.value)
    data["processors"]["only"] = {"type": "filter", "field": "anomaly", "equals": 1,
                                  "missing": "ignore"}
    with pytest.raises(ConfigError) as info:
        parse_config(data, env={})
    assert "processors.only.missing" in str(info.value)
    data["processors"]["only"] = {"type": "filter", "field": "anomaly", "equals": 1}
    cfg = parse_config(data, env={})
    assert cfg.processors["only"].type == "filter"
