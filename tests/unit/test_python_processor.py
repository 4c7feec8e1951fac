"""python: user functions per record and per batch, their failures, and bad references."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from unsflow.components import Context
from unsflow.errors import PermanentError, TransientError
from unsflow.message import Message
from unsflow.processors.python import PythonProcessor, PythonProcessorConfig

TESTS_DIR = Path(__file__).resolve().parents[1]
TOPIC = "com1/plant1/area1/press-7/Message1"


@pytest.fixture(autouse=True)
def plugins_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    # `plugins` lives in tests/; a user's functions would be an installed package.
    monkeypatch.syspath_prepend(str(TESTS_DIR))


def msg(payload: bytes, topic: str = TOPIC) -> Message:
    return Message(topic=topic, payload=payload, received_at=time.time())


def processor(config: dict[str, Any]) -> PythonProcessor:
    cfg = PythonProcessorConfig.model_validate({"type": "python", **config})
    return PythonProcessor("p1", cfg, Context(env={}))


async def run(config: dict[str, Any], batch: list[Message]) -> tuple[PythonProcessor, Any]:
    p = processor(config)
    await p.start()
    try:
        return p, await p.process(batch)
    finally:
        await p.stop()


async def test_record_mode_maps_each_record_with_options() -> None:
    batch = [msg(b'{"temp": 212, "id": 1}'), msg(b'{"temp": 32, "id": 2}')]
    _, (outputs, failures) = await run(
        {"function": "plugins.sensors:to_celsius", "options": {"field": "temp"}}, batch)
    assert failures == []
    assert [o.record for o in outputs] == [{"temp": 100.0, "id": 1, "machine": "press-7"},
                                           {"temp": 0.0, "id": 2, "machine": "press-7"}]
    assert outputs[0].payload == batch[0].payload and outputs[0].topic == TOPIC


async def test_record_mode_uses_an_already_decoded_record() -> None:
    decoded = msg(b"ignored")
    decoded.record = {"temp": 50}
    _, (outputs, _) = await run({"function": "plugins.sensors:to_celsius"}, [decoded])
    assert outputs[0].record["temp"] == 10.0


async def test_none_filters_and_is_counted() -> None:
    batch = [msg(b'{"value": %d}' % v) for v in (5, 25, 15, 30)]
    p, (outputs, failures) = await run(
        {"function": "plugins.sensors:keep_above", "options": {"threshold": 20}}, batch)
    assert [o.record["value"] for o in outputs] == [25, 30]
    assert failures == [] and p.filtered == 2
    assert p.describe()["filtered"] == 2


async def test_a_list_gives_several_outputs() -> None:
    _, (outputs, _) = await run({"function": "plugins.sensors:split_axes"},
                                [msg(b'{"x": 0.1, "y": 0.2, "z": 0.3}')])
    assert [o.record for o in outputs] == [{"axis": "x", "value": 0.1},
                                           {"axis": "y", "value": 0.2},
                                           {"axis": "z", "value": 0.3}]


async def test_an_exception_fails_that_record_only() -> None:
    bad = msg(b'{"value": -3}')
    batch = [msg(b'{"value": 1}'), bad, msg(b'{"value": 2}'), msg(b"\xff")]
    _, (outputs, failures) = await run({"function": "plugins.sensors:strict_value"}, batch)
    assert [o.record["value"] for o in outputs] == [1, 2]
    assert [(f.message.payload, f.error) for f in failures] == [
        (b'{"value": -3}', "plugins.sensors:strict_value raised ValueError: negative reading -3"),
        (b"\xff", "payload is not valid UTF-8 (byte 0)"),
    ]
    assert failures[0].message is bad and failures[0].stage == "processor:p1"


async def test_a_wrong_return_type_is_a_failure() -> None:
    _, (outputs, failures) = await run({"function": "plugins.sensors:wrong_kind"},
                                       [msg(b"{}")])
    assert outputs == []
    assert failures[0].error == ("plugins.sensors:wrong_kind returned a list holding a str at 0; "
                                 "expected a dict, a list of dicts or None")


async def test_records_are_processed_in_order() -> None:
    from plugins import sensors  # the same module object the processor imports

    sensors.calls.clear()
    batch = [msg(b"{}", topic=f"t/{i}") for i in range(50)]
    _, (outputs, _) = await run({"function": "plugins.sensors:remember"}, batch)
    assert sensors.calls == [f"t/{i}" for i in range(50)]
    assert [o.record["n"] for o in outputs] == list(range(1, 51))


async def test_batch_mode_gets_the_whole_batch() -> None:
    batch = [msg(b"a"), msg(b"b"), msg(b"c")]
    _, (outputs, failures) = await run(
        {"function": "plugins.sensors:tag_batch", "mode": "batch", "options": {"tag": "line-1"}},
        batch)
    assert failures == []
    assert [o.record for o in outputs] == [{"tag": "line-1", "size": 3, "payload": p}
                                           for p in ("a", "b", "c")]


async def test_batch_mode_exception_fails_every_message() -> None:
    batch = [msg(b"a"), msg(b"b")]
    _, (outputs, failures) = await run(
        {"function": "plugins.sensors:failing_batch", "mode": "batch"}, batch)
    assert outputs == []
    assert [f.message for f in failures] == batch
    assert {f.error for f in failures} == {
        "plugins.sensors:failing_batch raised RuntimeError: model file missing"}


async def test_batch_mode_wrong_return_fails_every_message() -> None:
    batch = [msg(b"a"), msg(b"b")]
    _, (outputs, failures) = await run(
        {"function": "plugins.sensors:records_not_messages", "mode": "batch"}, batch)
    assert outputs == [] and [f.message for f in failures] == batch
    assert failures[0].error == ("plugins.sensors:records_not_messages returned a list holding "
                                 "a dict at 0; expected a list of Message")


async def test_transient_error_from_the_function_fails_the_batch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from plugins import sensors

    def db_down(record: Any, topic: str) -> Any:
        raise TransientError("historian unreachable")

    monkeypatch.setattr(sensors, "db_down", db_down, raising=False)
    p = processor({"function": "plugins.sensors:db_down"})
    await p.start()
    with pytest.raises(TransientError, match="historian unreachable"):
        await p.process([msg(b"{}")])


@pytest.mark.parametrize("function, why", [
    ("plugins.nosuchmodule:fn", "cannot import module 'plugins.nosuchmodule': No module named"),
    ("plugins.sensors:no_such_fn", "'plugins.sensors' has no attribute 'no_such_fn'"),
    ("plugins.sensors:NOT_A_FUNCTION", "'NOT_A_FUNCTION' is an int, not a function"),
    ("plugins.broken:fn",
     "importing module 'plugins.broken' raised RuntimeError: settings.yaml not found"),
])
async def test_a_bad_function_fails_at_start(function: str, why: str) -> None:
    p = processor({"function": function})
    with pytest.raises(PermanentError) as info:
        await p.start()
    text = str(info.value)
    assert text.startswith(f"[p1] function {function!r}: ")
    assert why in text


@pytest.mark.parametrize("config, loc, text", [
    ({"function": "plugins.sensors"}, ("function",), "a function as 'package.module:function'"),
    ({"function": "plugins/sensors.py:fn"}, ("function",), "package.module:function"),
    ({"function": "m:f", "options": {"topic": "x"}}, ("options",), "record mode"),
    ({"function": "m:f", "mode": "batch", "options": {"messages": []}}, ("options",), "messages"),
    ({"function": "m:f", "mode": "stream"}, ("mode",), "'record' or 'batch'"),
])
def test_config_is_checked_at_load(config: dict[str, Any], loc: tuple[str, ...],
                                   text: str) -> None:
    with pytest.raises(ValidationError) as info:
        PythonProcessorConfig.model_validate({"type": "python", **config})
    (error,) = info.value.errors()
    assert error["loc"] == loc and text in error["msg"]
