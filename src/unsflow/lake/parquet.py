"""Parquet encoding: rows (:mod:`unsflow.lake.rows`) -> Arrow table -> Parquet bytes.

Columns are the union of the fields of the rows, in first-seen order, then
``_topic`` (string) and ``_received_at`` (timestamp, ms, UTC). Per column: all
ints -> int64, ints and floats -> float64, bools -> bool, strings -> string,
any other mix -> string (numbers as JSON text; NaN and infinities by name);
a column of nulls only is of the null type.

:func:`encode_parquet` writes what can be written: when the rows of some
messages cannot become Parquet, those messages come back as
:class:`~unsflow.message.Failure` (for the dead letter) and the rest is encoded.

:func:`json_parquet` is the way for a batch of JSON object payloads, one row
per message: with the compiled module (:mod:`unsflow._speedups`) the
payloads become Arrow columns without a Python object per value, else (or
when that module leaves the batch to Python) they are decoded with orjson and
written by :func:`records_parquet`.

:func:`records_parquet` is the columnar way to the same bytes for the usual
case, one record per message: the records' values are transposed into
columns in C (``map(itemgetter(field), records)`` per field when every record
has the same fields), each column typed by the same rule (:func:`_column`), with no
row dict per message. A test checks that both ways give equal tables.
"""

from __future__ import annotations

import math
from collections.abc import Set as AbstractSet
from operator import attrgetter, itemgetter
from typing import Any

import orjson

from unsflow._speedups import speedups
from unsflow.codecs import json_objects
from unsflow.lake._deps import require
from unsflow.lake.rows import INT64_MAX, INT64_MIN, METADATA_COLUMNS, plain_value
from unsflow.message import NOT_DECODED, Failure, Message

__all__ = ["encode_parquet", "json_parquet", "parquet_bytes", "records_parquet"]

_PLAIN = frozenset({type(None), bool, int, float, str})
_NONE = type(None)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return orjson.dumps(value).decode()


def _column(values: list[Any] | tuple[Any, ...], kinds: set[type] | None = None) -> Any:
    import pyarrow as pa

    if kinds is None:
        kinds = set(map(type, values))
    kinds.discard(_NONE)
    if not kinds:
        return pa.nulls(len(values))
    if kinds == {bool}:
        return pa.array(values, pa.bool_())
    if kinds == {int}:
        return pa.array(values, pa.int64())
    if kinds <= {int, float}:
        return pa.array(values, pa.float64())
    if kinds != {str}:
        values = [None if v is None else _text(v) for v in values]
    return pa.array(values, pa.string())


def parquet_bytes(rows: list[dict[str, Any]], compression: str) -> bytes:
    """One Parquet file holding ``rows`` (each has ``_topic`` and ``_received_at`` in ms).

    Raises pyarrow's errors, ``ValueError``, ``TypeError`` or ``OverflowError``
    for rows that cannot be encoded.
    """
    pa = require("pyarrow")
    pq = require("pyarrow.parquet")
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    for meta in METADATA_COLUMNS:  # metadata last, in a fixed order
        names.pop(meta, None)
    columns = [_column([row.get(n) for row in rows]) for n in names]
    columns.append(pa.array([row["_topic"] for row in rows], pa.string()))
    columns.append(pa.array([row["_received_at"] for row in rows], pa.timestamp("ms", tz="UTC")))
    table = pa.table(columns, names=[*names, *METADATA_COLUMNS])
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression=None if compression == "none" else compression)
    return bytes(sink.getvalue())


def _record_column(values: tuple[Any, ...] | list[Any], name: str) -> Any:
    """The column of raw record values ``values``: :func:`_column` of their plain values
    (:func:`~unsflow.lake.rows.plain_value`), without converting values that are plain
    already (nearly always all of them)."""
    kinds = set(map(type, values))
    if kinds <= _PLAIN:
        if int not in kinds:
            return _column(values, kinds)
        ints = values if len(kinds - {_NONE}) == 1 else [v for v in values if type(v) is int]
        if _NONE in kinds and ints is values:
            ints = [v for v in values if v is not None]
        if INT64_MIN <= min(ints) and max(ints) <= INT64_MAX:
            return _column(values, kinds)
    return _column([plain_value(v, name) for v in values])


def records_parquet(messages: list[Message], compression: str,
                    reserved: AbstractSet[str] = frozenset(METADATA_COLUMNS)) -> bytes | None:
    """One Parquet file with one row per message: its ``record`` (a dict) plus ``_topic``
    and ``_received_at``; the same bytes as :func:`parquet_bytes` of the messages' rows
    (:func:`~unsflow.lake.rows.parquet_rows`).

    Returns None when a record has a field of a ``reserved`` name (the row path
    renames it). Raises as :func:`parquet_bytes` does for values that cannot be encoded.
    """
    records = list(map(attrgetter("record"), messages))
    keys = tuple(records[0]) if records else ()
    columns: list[Any] = []
    names: list[str] = []
    same = False
    if keys and sum(map(len, records)) == len(keys) * len(records):
        try:  # every record has these fields (and no other): one column per field, in C
            values = [list(map(itemgetter(key), records)) for key in keys]
            same = True
        except KeyError:
            pass
    if same:
        names = list(keys)
    else:  # records with different fields: the union, in first-seen order
        seen: dict[str, None] = {}
        for record in records:
            seen.update(dict.fromkeys(record))
        names = list(seen)
        values = [[record.get(n) for record in records] for n in names]
    if not reserved.isdisjoint(names) or not all(type(n) is str for n in names):
        return None
    columns = [_record_column(v, n) for n, v in zip(names, values)]
    return _with_metadata(columns, names, messages, compression)


def _with_metadata(columns: list[Any], names: list[str], messages: list[Message],
                   compression: str) -> bytes:
    """Parquet bytes of ``columns`` plus the messages' ``_topic`` and ``_received_at``."""
    pa = require("pyarrow")
    pq = require("pyarrow.parquet")
    columns.append(pa.array(list(map(attrgetter("topic"), messages)), pa.string()))
    # Epoch ms as parquet_rows computes them; a read's messages share one time, so one each.
    millis: dict[float, int] = {}
    received = [millis.get(t) or millis.setdefault(t, int(t * 1000))
                for t in map(attrgetter("received_at"), messages)]
    columns.append(pa.array(received, pa.timestamp("ms", tz="UTC")))
    table = pa.table(columns, names=[*names, *METADATA_COLUMNS])
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression=None if compression == "none" else compression)
    return bytes(sink.getvalue())


def _arrow_columns(built: list[tuple[Any, ...]], rows: int) -> list[Any]:
    """Arrow arrays from the compiled module's column buffers (``json_columns``)."""
    pa = require("pyarrow")
    types = {"int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_(),
             "string": pa.string()}
    out = []
    for _, kind, nulls, validity, data, offsets in built:
        if kind == "null":
            out.append(pa.nulls(rows))
            continue
        bitmap = pa.py_buffer(validity) if validity is not None else None
        buffers = [bitmap, pa.py_buffer(data)] if offsets is None \
            else [bitmap, pa.py_buffer(offsets), pa.py_buffer(data)]
        out.append(pa.Array.from_buffers(types[kind], rows, buffers, null_count=nulls))
    return out


def json_parquet(messages: list[Message], compression: str,
                 reserved: AbstractSet[str] = frozenset(METADATA_COLUMNS)) -> bytes | None:
    """One Parquet file with one row per message, the JSON object its payload (or its
    ``record``) holds, plus ``_topic`` and ``_received_at``: what
    :func:`~unsflow.lake.rows.parquet_rows` and :func:`parquet_bytes` write for them.

    Returns None when that is not the case for every message (a payload that is
    not a JSON object, a record of a reserved field name): the row path decides
    those. Raises as :func:`parquet_bytes` does for values that cannot be encoded.
    """
    fast = speedups()
    if fast is not None and all(m.record is NOT_DECODED for m in messages):
        built = fast.json_columns(list(map(attrgetter("payload"), messages)))
        if built is not None:
            names = [column[0] for column in built]
            if reserved.isdisjoint(names):
                return _with_metadata(_arrow_columns(built, len(messages)), names, messages,
                                      compression)
    if not json_objects(messages):
        return None
    return records_parquet(messages, compression, reserved)


def encode_parquet(entries: list[tuple[Message, list[dict[str, Any]]]], compression: str,
                   stage: str) -> tuple[bytes, list[Failure]]:
    """One Parquet file of the rows of ``entries`` ((message, rows) pairs).

    Returns the bytes (``b""`` when no message could be encoded) and a
    failure, at ``stage``, for each message whose rows cannot be written.
    """
    pa = require("pyarrow")
    errors = (pa.ArrowException, ValueError, TypeError, OverflowError)
    try:
        return parquet_bytes([r for _, rows in entries for r in rows], compression), []
    except errors:
        pass
    # Find the messages that cannot be encoded; write the others.
    good: list[dict[str, Any]] = []
    failures: list[Failure] = []
    for msg, rows in entries:
        try:
            parquet_bytes(rows, compression)
        except errors as exc:
            failures.append(Failure(msg, f"rows cannot be written as Parquet: {exc}", stage))
        else:
            good.extend(rows)
    return (parquet_bytes(good, compression) if good else b""), failures
