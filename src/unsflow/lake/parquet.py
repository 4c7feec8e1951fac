"""Parquet encoding: rows (:mod:`unsflow.lake.rows`) -> Arrow table -> Parquet bytes.

Columns are the union of the fields of the rows, in first-seen order, then
``_topic`` (string) and ``_received_at`` (timestamp, ms, UTC). Per column: all
ints -> int64, ints and floats -> float64, bools -> bool, strings -> string,
any other mix -> string (numbers as JSON text; NaN and infinities by name);
a column of nulls only is of the null type.

:func:`encode_parquet` writes what can be written: when the rows of some
messages cannot become Parquet, those messages come back as
:class:`~unsflow.message.Failure` (for the dead letter) and the rest is encoded.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from unsflow.lake._deps import require
from unsflow.lake.rows import METADATA_COLUMNS
from unsflow.message import Failure, Message

__all__ = ["encode_parquet", "parquet_bytes"]



def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return orjson.dumps(value).decode()


def _column(values: list[Any]) -> Any:
    import pyarrow as pa

    kinds = {type(v) for v in values}
    kinds.discard(type(None))
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
