"""Record and batch functions as a user would write them for the python processor."""

from __future__ import annotations

from typing import Any

from unsflow.message import Message

calls: list[str] = []  # topics seen by `remember`, to check the call order


def to_celsius(record: dict[str, Any], topic: str, *, field: str = "temp") -> dict[str, Any]:
    """Fahrenheit to Celsius in place of ``field``; keeps the topic's machine name."""
    return {**record, field: round((record[field] - 32) * 5 / 9, 2),
            "machine": topic.split("/")[-2]}


def keep_above(record: dict[str, Any], topic: str, *, threshold: float) -> dict[str, Any] | None:
    """A filter: None drops the record."""
    return record if record["value"] > threshold else None


def split_axes(record: dict[str, Any], topic: str) -> list[dict[str, Any]]:
    """One record per vibration axis."""
    return [{"axis": axis, "value": record[axis]} for axis in ("x", "y", "z")]


def strict_value(record: dict[str, Any], topic: str) -> dict[str, Any]:
    """Raises for a negative value, as a user's sanity check would."""
    if record["value"] < 0:
        raise ValueError(f"negative reading {record['value']}")
    return record


def wrong_kind(record: Any, topic: str) -> Any:
    """Returns something the processor cannot use."""
    return ["not", "a", "dict"]


def remember(record: Any, topic: str) -> dict[str, Any]:
    calls.append(topic)
    return {"n": len(calls)}


def tag_batch(messages: list[Message], *, tag: str) -> list[Message]:
    """Batch mode: one output per input, with the batch size in each record."""
    return [m.derive(record={"tag": tag, "size": len(messages), "payload": m.payload.decode()})
            for m in messages]


def records_not_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Batch mode returning records instead of messages: a mistake the processor reports."""
    return [{"value": 1} for _ in messages]


def failing_batch(messages: list[Message]) -> list[Message]:
    raise RuntimeError("model file missing")


NOT_A_FUNCTION = 42
