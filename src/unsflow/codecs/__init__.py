"""Payload decoding, done once per message: bytes -> record.

``decode_json`` and ``decode_csv`` turn a payload into a record or raise
:class:`~unsflow.errors.DecodeError` with a reason a user can act on.
``ensure_records`` is what targets call: it decodes messages no processor has
decoded yet (leniently: JSON, else UTF-8 text as ``{"value": text}``) and
splits out the ones that cannot be decoded as failures for the dead letter.
"""

from __future__ import annotations

import csv
import io
from operator import attrgetter
from typing import Any

import orjson

from unsflow.errors import DecodeError
from unsflow.message import NOT_DECODED, Failure, Message

__all__ = ["decode_json", "decode_csv", "records_of", "ensure_records", "coerce_scalar",
           "record_object", "json_objects", "VALUE_COLUMNS", "value_column"]


def decode_json(payload: bytes) -> Any:
    """Parse JSON strictly (no NaN/Infinity); DecodeError says where and why.

    >>> decode_json(b'{"value": 1.5}')
    {'value': 1.5}
    """
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        if not payload:
            raise DecodeError("empty payload is not JSON") from None
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError as uexc:
            raise DecodeError(f"payload is not valid UTF-8 (byte {uexc.start})") from None
        raise DecodeError(f"payload is not valid JSON: {exc}") from None


def coerce_scalar(text: str) -> Any:
    """``"12"`` -> 12, ``"1.5"`` -> 1.5, anything else stays text.

    >>> [coerce_scalar(v) for v in ("42", "-1.5", "pump-1", "")]
    [42, -1.5, 'pump-1', '']
    """
    t = text.strip()
    if not t:
        return text
    try:
        return int(t)
    except ValueError:
        pass
    try:
        value = float(t)
    except ValueError:
        return text
    # 'nan' and 'inf' parse as floats but are text in a CSV cell.
    return value if value == value and value not in (float("inf"), float("-inf")) else text


def decode_csv(payload: bytes, columns: list[str], delimiter: str = ",") -> dict[str, Any]:
    """One CSV line with named columns -> a record; numbers become numbers.

    >>> decode_csv(b"floor-1-line-1-extruder-1,pump-2,13.8,1587640442999",
    ...            ["machineId", "deviceId", "value", "epochMillis"])
    {'machineId': 'floor-1-line-1-extruder-1', 'deviceId': 'pump-2', 'value': 13.8, 'epochMillis': 1587640442999}
    """
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"payload is not valid UTF-8 (byte {exc.start})") from None
    try:
        rows = list(csv.reader(io.StringIO(text.strip()), delimiter=delimiter))
    except csv.Error as exc:  # e.g. a carriage return inside an unquoted field
        raise DecodeError(f"payload is not valid CSV: {exc}") from None
    if len(rows) != 1:
        raise DecodeError(f"expected one CSV line, found {len(rows)}")
    cells = rows[0]
    if len(cells) != len(columns):
        raise DecodeError(
            f"expected {len(columns)} CSV fields ({','.join(columns)}), found {len(cells)}"
        )
    return {name: coerce_scalar(cell) for name, cell in zip(columns, cells)}


def records_of(record: Any, event_type: str) -> list[dict[str, Any]]:
    """The rows a decoded record stands for.

    ``single``: a dict is one row, a scalar or list becomes ``{"value": ...}``.
    ``batch``: a list of dicts is many rows; anything else raises DecodeError.

    >>> records_of({"a": 1}, "single")
    [{'a': 1}]
    >>> records_of([{"a": 1}, {"a": 2}], "batch")
    [{'a': 1}, {'a': 2}]
    """
    if event_type == "batch":
        if not isinstance(record, list):
            raise DecodeError(f"event-type batch expects a JSON array of records, found {_kind(record)}")
        for i, item in enumerate(record):
            if not isinstance(item, dict):
                raise DecodeError(f"event-type batch: item {i} is {_kind(item)}, expected an object")
        return record
    if isinstance(record, dict):
        return [record]
    return [{"value": record}]


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


def ensure_records(batch: list[Message], event_type: str,
                   stage: str) -> tuple[list[tuple[Message, list[dict[str, Any]]]], list[Failure]]:
    """Decode what is not decoded yet; pair each message with its rows.

    Messages no processor decoded are read as JSON; a payload that is valid
    UTF-8 but not JSON becomes ``{"value": text}`` (a UNS often carries plain
    values such as ``RUNNING``). Invalid UTF-8, an empty payload and a batch
    payload that is not an array of objects are failures.
    """
    good: list[tuple[Message, list[dict[str, Any]]]] = []
    failures: list[Failure] = []
    loads = orjson.loads
    for msg in batch:
        record = msg.record
        try:
            if record is NOT_DECODED:
                if not msg.payload:
                    raise DecodeError("empty payload")
                try:
                    record = loads(msg.payload)
                except orjson.JSONDecodeError:
                    try:
                        text = msg.payload.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        raise DecodeError(f"payload is not valid UTF-8 (byte {exc.start})") from None
                    if event_type == "batch":
                        raise DecodeError("event-type batch expects a JSON array, payload is not JSON") from None
                    record = text
                msg.record = record
            good.append((msg, records_of(record, event_type)))
        except DecodeError as exc:
            failures.append(Failure(msg, str(exc), stage))
    return good, failures


_record = attrgetter("record")
_payload = attrgetter("payload")


def json_objects(batch: list[Message]) -> bool:
    """Decode the JSON payload of every message not decoded yet, all in one go; True when
    every record is now a JSON object (one row each, for ``event-type: single``).

    False leaves the batch to :func:`ensure_records`, which decodes message by
    message and says why one fails (a payload that is not JSON, not UTF-8, ...).

    >>> batch = [Message("a", b'{"v": 1}'), Message("b", b'{"v": 2}')]
    >>> json_objects(batch), batch[1].record
    (True, {'v': 2})
    >>> json_objects([Message("a", b"RUNNING")])
    False
    """
    records = list(map(_record, batch))
    if records.count(NOT_DECODED):
        todo = [m for m, r in zip(batch, records) if r is NOT_DECODED]
        try:
            decoded = list(map(orjson.loads, map(_payload, todo)))
        except orjson.JSONDecodeError:
            return False
        for msg, record in zip(todo, decoded):
            msg.record = record
        records = list(map(_record, batch))
    return set(map(type, records)) == {dict}


def record_object(msg: Message) -> dict[str, Any]:
    """A message's record as an object: decoded JSON if not decoded yet; a number is
    ``{"value": n}``. Anything else raises ValueError with the reason.

    >>> record_object(Message("a/b", b"21.5"))
    {'value': 21.5}
    """
    record = msg.record
    if record is NOT_DECODED:
        try:
            record = decode_json(msg.payload)
        except DecodeError as exc:
            raise ValueError(str(exc)) from None
    if isinstance(record, dict):
        return record
    if isinstance(record, (int, float)) and not isinstance(record, bool):
        return {"value": record}
    raise ValueError(f"record must be an object or a number, found {record!r:.60}")


# The typed value columns of sources and decoders with mixed value types per record
# (Sparkplug metrics, OPC UA nodes), so that one Parquet file keeps each type's column.
VALUE_COLUMNS = ("value_int", "value_float", "value_bool", "value_string", "value_json")
_INT64 = 1 << 63


def value_column(value: Any) -> tuple[str, Any]:
    """The typed column a value goes to, and the value as stored there: ints in
    int64 (beyond int64, decimal text), floats, bools, text; lists and objects as JSON text.

    >>> [value_column(v) for v in (3, 2.5, True, "on", [1, 2], 1 << 64)]
    [('value_int', 3), ('value_float', 2.5), ('value_bool', True), ('value_string', 'on'), ('value_json', '[1,2]'), ('value_string', '18446744073709551616')]
    """
    kind = type(value)
    if kind is bool:
        return "value_bool", value
    if kind is int:
        return ("value_int", value) if -_INT64 <= value < _INT64 else ("value_string", str(value))
    if kind is float:
        return "value_float", value
    if kind is str:
        return "value_string", value
    return "value_json", orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
