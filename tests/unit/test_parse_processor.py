"""parse: JSON and CSV payloads into records; bad payloads into failures."""

from __future__ import annotations

import time
from typing import Any

import pytest
from pydantic import ValidationError

from unsflow.components import Context
from unsflow.config.loading import parse_config
from unsflow.errors import ConfigError
from unsflow.message import NOT_DECODED, Message
from unsflow.processors.parse import ParseProcessor, ParseProcessorConfig

DEMO_COLUMNS = ["machineId", "deviceId", "value", "epochMillis"]


def msg(payload: bytes, topic: str = "com1/plant1/area1/pump-1/Message1") -> Message:
    return Message(topic=topic, payload=payload, received_at=time.time())


async def run(config: dict[str, Any], batch: list[Message]) -> tuple[list[Message], list[Any]]:
    p = ParseProcessor("p1", ParseProcessorConfig.model_validate(config), Context(env={}))
    await p.start()
    try:
        return await p.process(batch)
    finally:
        await p.stop()


async def test_json_payloads_become_records() -> None:
    batch = [msg(b'{"value": 13.8, "unit": "mm/s"}'), msg(b"[1, 2]"), msg(b'"RUNNING"')]
    outputs, failures = await run({"type": "parse"}, batch)
    assert failures == []
    assert [o.record for o in outputs] == [{"value": 13.8, "unit": "mm/s"}, [1, 2], "RUNNING"]
    # derived messages keep their origin and original bytes; inputs are left alone
    assert outputs[0].topic == batch[0].topic and outputs[0].payload == batch[0].payload
    assert outputs[0].received_at == batch[0].received_at
    assert batch[0].record is NOT_DECODED


async def test_csv_with_the_demo_sensor_columns() -> None:
    config = {"type": "parse", "format": "csv", "columns": DEMO_COLUMNS}
    batch = [msg(b"floor-1-line-1-extruder-1,pump-2,13.8,1587640442999"),
             msg(b"floor-1-line-1-extruder-1,pump-1,-7,1587640443999\n")]
    outputs, failures = await run(config, batch)
    assert failures == []
    assert [o.record for o in outputs] == [
        {"machineId": "floor-1-line-1-extruder-1", "deviceId": "pump-2",
         "value": 13.8, "epochMillis": 1587640442999},
        {"machineId": "floor-1-line-1-extruder-1", "deviceId": "pump-1",
         "value": -7, "epochMillis": 1587640443999},
    ]
    assert isinstance(outputs[0].record["epochMillis"], int)


async def test_csv_with_another_delimiter() -> None:
    config = {"type": "parse", "format": "csv", "columns": ["id", "value"], "delimiter": ";"}
    outputs, failures = await run(config, [msg(b"pump-1;1.5")])
    assert failures == [] and outputs[0].record == {"id": "pump-1", "value": 1.5}


async def test_csv_wrong_field_count_fails_that_message_only() -> None:
    config = {"type": "parse", "format": "csv", "columns": DEMO_COLUMNS}
    good = msg(b"m1,pump-1,12.5,1587640442999")
    short = msg(b"m1,pump-1,12.5")
    outputs, failures = await run(config, [short, good])
    assert [o.record["value"] for o in outputs] == [12.5]
    assert len(failures) == 1
    assert failures[0].message is short
    assert failures[0].error == (
        "expected 4 CSV fields (machineId,deviceId,value,epochMillis), found 3")
    assert failures[0].stage == "processor:p1"


@pytest.mark.parametrize("fmt", ["json", "csv"])
async def test_invalid_utf8_and_empty_payloads_fail(fmt: str) -> None:
    config: dict[str, Any] = {"type": "parse", "format": fmt}
    if fmt == "csv":
        config["columns"] = ["value"]
    bad_utf8, empty, good = msg(b"\xff\xfe1"), msg(b""), msg(b"1")
    outputs, failures = await run(config, [bad_utf8, empty, good])
    expected_good: Any = 1 if fmt == "json" else {"value": 1}
    assert [o.record for o in outputs] == [expected_good]
    errors = {f.message.payload: f.error for f in failures}
    assert errors[b"\xff\xfe1"] == "payload is not valid UTF-8 (byte 0)"
    assert "empty payload" in errors[b""]


async def test_invalid_json_says_why() -> None:
    outputs, failures = await run({"type": "parse"}, [msg(b"{value: 1}")])
    assert outputs == []
    assert failures[0].error.startswith("payload is not valid JSON")


async def test_already_decoded_messages_pass_unchanged() -> None:
    decoded = msg(b"not json at all")
    decoded.record = {"value": 1}
    outputs, failures = await run({"type": "parse"}, [decoded])
    assert failures == [] and outputs[0] is decoded


async def test_large_batch_is_decoded_in_order() -> None:
    batch = [msg(b'{"i": %d}' % i) for i in range(1000)]  # takes the worker-thread path
    outputs, failures = await run({"type": "parse"}, batch)
    assert failures == [] and [o.record["i"] for o in outputs] == list(range(1000))


def test_csv_without_columns_is_rejected_naming_the_key() -> None:
    with pytest.raises(ValidationError) as info:
        ParseProcessorConfig.model_validate({"type": "parse", "format": "csv"})
    (error,) = info.value.errors()
    assert error["loc"] == ("columns",)
    assert error["msg"] == "a list of column names (required when format is csv)"


@pytest.mark.parametrize("config, loc", [
    ({"type": "parse", "columns": ["a"]}, ("columns",)),
    ({"type": "parse", "format": "csv", "columns": ["a", "a"]}, ("columns",)),
    ({"type": "parse", "format": "csv", "columns": ["a"], "delimiter": ";;"}, ("delimiter",)),
    ({"type": "parse", "format": "xml"}, ("format",)),
    ({"type": "parse", "colums": ["a"]}, ("colums",)),
])
def test_other_config_mistakes(config: dict[str, Any], loc: tuple[str, ...]) -> None:
    with pytest.raises(ValidationError) as info:
        ParseProcessorConfig.model_validate(config)
    assert loc in [e["loc"] for e in info.value.errors()]


def test_full_config_rejects_csv_without_columns() -> None:
    data = {
        "targets": {"out": {"type": "file", "path": "/tmp/x.jsonl", "processors": ["p"]}},
        "processors": {"p": {"type": "parse", "format": "csv"}},
        "subscriptions": {"a/#": {"qos": 1, "target": "out"}},
    }
    with pytest.raises(ConfigError) as info:
        parse_config(data, env={})
    expected = ("processors.p.columns: expected a list of column names "
                "(required when format is csv), found None")
    assert [str(issue) for issue in info.value.issues] == [expected]
