"""Rows: a record's fields plus the metadata columns, as the lake and the file target write them.

A row is a record's fields, then ``_topic`` (the message's topic) and
``_received_at`` (when it was received; epoch milliseconds). A record field
named like a metadata column (or a partition column) is kept with ``_``
appended, so no value is lost or overwritten.

For Parquet (:func:`parquet_rows`) every value is reduced to a type a column
can hold: None, bool, int64, float or str, with nested values as JSON text.
For JSON lines (:func:`encode_message`) values stay as JSON encodes them.

>>> with_metadata({"value": 1, "_topic": "x"}, "a/b", 5)
{'value': 1, '_topic_': 'x', '_topic': 'a/b', '_received_at': 5}
"""

from __future__ import annotations

from collections.abc import Collection
from collections.abc import Set as AbstractSet
from typing import Any

import orjson

from unsflow.message import Message

__all__ = ["METADATA_COLUMNS", "encode_message", "json_line", "parquet_rows", "plain_value",
           "with_metadata"]

METADATA_COLUMNS = ("_topic", "_received_at")

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def with_metadata(row: dict[Any, Any], topic: str, received: Any,
                  reserved: Collection[str] = METADATA_COLUMNS) -> dict[str, Any]:
    """``row`` plus ``_topic`` and ``_received_at``; a record field with a reserved name gets ``_``."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        name = key if isinstance(key, str) else str(key)
        if name in reserved or name in out:
            name += "_"
            while name in reserved or name in out or name in row:
                name += "_"
        out[name] = value
    out["_topic"] = topic
    out["_received_at"] = received
    return out


def json_line(row: dict[Any, Any], topic: str, received_ms: int,
              reserved: Collection[str] = METADATA_COLUMNS) -> bytes:
    """One JSON line for ``row``; raises ``TypeError`` for a value JSON cannot encode."""
    return orjson.dumps(with_metadata(row, topic, received_ms, reserved),
                        option=_JSON_OPTIONS) + b"\n"


def encode_message(msg: Message, rows: list[dict[str, Any]],
                   reserved: Collection[str] = METADATA_COLUMNS) -> bytes:
    """The JSON lines of one message's rows; ``TypeError`` names the reason if one cannot be encoded."""
    received_ms = int(msg.received_at * 1000)
    try:
        return b"".join(json_line(row, msg.topic, received_ms, reserved) for row in rows)
    except orjson.JSONEncodeError as exc:
        raise TypeError(f"record cannot be encoded as JSON: {exc}") from None


def plain_value(value: Any, name: str) -> Any:
    """``value`` as None, bool, int64, float or str (nested values as JSON text).

    An int beyond int64 becomes its decimal text; a value JSON cannot encode
    raises ``TypeError`` naming the field.

    >>> plain_value({"a": 1}, "f"), plain_value(1 << 70, "f")
    ('{"a":1}', '1180591620717411303424')
    """
    kind = type(value)
    if value is None or kind is bool or kind is str or kind is float:
        return value
    if kind is int:
        return value if INT64_MIN <= value <= INT64_MAX else str(value)
    try:
        text = orjson.dumps(value, option=_JSON_OPTIONS)
    except orjson.JSONEncodeError as exc:
        raise TypeError(f"field {name!r}: cannot encode a value of type {kind.__name__} "
                        f"({exc})") from None
    decoded = orjson.loads(text)  # datetime -> ISO text, numpy scalars -> numbers
    return text.decode() if kind in (dict, list, tuple) or isinstance(decoded, (dict, list)) \
        else plain_value(decoded, name)


def parquet_rows(msg: Message, records: list[dict[str, Any]],
                 reserved: AbstractSet[str] = frozenset(METADATA_COLUMNS)) -> list[dict[str, Any]]:
    """The rows of one message's records, every value plain (see :func:`plain_value`).

    ``_received_at`` is epoch milliseconds (an int); ``reserved`` names the
    columns a record field must not take (metadata and partition columns).
    Raises ``TypeError`` for a value that cannot be encoded.
    """
    received_ms = int(msg.received_at * 1000)
    out = []
    for record in records:
        if reserved.isdisjoint(record):
            full = dict(record)
            full["_topic"] = msg.topic
            full["_received_at"] = received_ms
        else:
            full = with_metadata(record, msg.topic, received_ms, reserved)
        # Fast path: JSON-decoded records are nearly always flat scalars already.
        for value in full.values():
            kind = type(value)
            if not (kind is str or kind is float or kind is bool or value is None
                    or (kind is int and INT64_MIN <= value <= INT64_MAX)):
                full = {name: plain_value(v, name) for name, v in full.items()}
                break
        out.append(full)
    return out
