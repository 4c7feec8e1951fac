"""Debezium change events (Kafka Connect's JSON converter, with or without schemas) as rows.

Debezium writes one Kafka record per row change: the key holds the row's
primary key, the value an *envelope* ``{"op", "before", "after", "source",
"ts_ms", ...}``; with ``schemas.enable=true`` each is wrapped as ``{"schema":
..., "payload": ...}``. :func:`decode_change` turns one record into one flat
row, the shape Debezium's own ``ExtractNewRecordState`` transform gives:

- the row's columns at the top level: the ``after`` image of a create
  (``c``), snapshot read (``r``) or update (``u``), the ``before`` image of a
  delete (``d``); values as the converter wrote them (``timestamptz`` as ISO
  text, ``timestamp`` as epoch microseconds, ...);
- metadata in fields that start with ``__`` (they win over a column of the
  same name): ``__op``, ``__deleted`` (true for ``d``), ``__db``, ``__schema``
  (None where the database has none, e.g. MySQL), ``__table``, ``__key``
  (the record key's fields as canonical JSON text, None without a key),
  ``__lsn`` (PostgreSQL: the change's log sequence number, which orders the
  changes of one row), ``__tx_id``, ``__source_ts_ms`` (commit time in the
  database), ``__ts_ms`` (when Debezium processed it) and ``__before`` (the
  before image of an update or delete: every column with ``REPLICA
  IDENTITY FULL``, else the key columns only).

The message's topic becomes ``<db>/<schema>/<table>`` (``<db>/<table>``
without a schema), so that the object store target partitions the lake by
table with ``"partition-by": ["topic-levels"], "topic-levels": ["db", "schema",
"table"]``.

A tombstone (the null value Debezium writes after a delete, for log
compaction) carries nothing the delete before it did not: it gives no row,
as with ``ExtractNewRecordState``'s default ``drop.tombstones``. Anything
else that is not a row change raises :class:`~unsflow.errors.DecodeError`
with the reason (the message goes to the dead letter): invalid JSON, a
heartbeat or schema-change record, truncate (``t``) and logical-decoding
message (``m``) events, an unknown ``op``, a missing image or table.

>>> value = b'{"op": "u", "before": {"id": 7, "status": "planned"},'
>>> value += b' "after": {"id": 7, "status": "running"}, "ts_ms": 1700000000100,'
>>> value += b' "source": {"db": "line", "schema": "public", "table": "work_orders",'
>>> value += b' "lsn": 26728720, "txId": 747, "ts_ms": 1700000000000}}'
>>> row = change_row(value, b'{"id": 7}')
>>> row["status"], row["__op"], row["__key"], row["__lsn"], row["__before"]["status"]
('running', 'u', '{"id":7}', 26728720, 'planned')
>>> change_topic(row)
'line/public/work_orders'
>>> change_row(b"", b'{"id": 7}') is None  # the tombstone after a delete
True
"""

from __future__ import annotations

from typing import Any

import orjson

from unsflow.errors import DecodeError
from unsflow.message import Failure, Message

__all__ = ["change_row", "change_topic", "decode_changes"]

# What each op's row is made of.
_IMAGE = {"c": "after", "r": "after", "u": "after", "d": "before"}
_NOT_ROWS = {
    "t": "a truncate event (no row to write; Debezium skips truncates unless "
         "skipped.operations leaves them out)",
    "m": "a logical decoding message (pg_logical_emit_message), not a row change",
}
KEY_HEADER = "kafka.key"  # set by the Kafka source (sources/kafka.py)


def _unwrap(value: Any) -> Any:
    """The payload of a ``{"schema", "payload"}`` wrapper (schemas.enable=true), else the value."""
    if isinstance(value, dict) and "payload" in value and "schema" in value and len(value) == 2:
        return value["payload"]
    return value


def _loads(data: bytes, what: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as uexc:
            raise DecodeError(f"the {what} is not valid UTF-8 (byte {uexc.start})") from None
        raise DecodeError(f"the {what} is not valid JSON: {exc}") from None


def _kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


def change_row(value: bytes, key: bytes | None = None) -> dict[str, Any] | None:
    """One Debezium record (value and key bytes) as a row; None for a tombstone.

    Raises DecodeError naming what is wrong when the record is not a row change.
    """
    if not value:
        return None  # tombstone
    envelope = _unwrap(_loads(value, "value"))
    if not isinstance(envelope, dict):
        raise DecodeError(f"not a Debezium change event: the value is {_kind(envelope)}, "
                          "expected an object with 'op', 'before', 'after' and 'source'")
    op = envelope.get("op")
    if op is None:
        keys = ", ".join(sorted(envelope)[:8]) or "none"
        raise DecodeError(f"not a Debezium change event: no 'op' field (its fields: {keys}); "
                          "a heartbeat or schema change topic in the subscription?")
    if op in _NOT_ROWS:
        raise DecodeError(f"op {op!r}: {_NOT_ROWS[op]}")
    image_name = _IMAGE.get(op) if isinstance(op, str) else None
    if image_name is None:
        raise DecodeError(f"unknown Debezium op {op!r} (expected c, r, u or d)")
    image = envelope.get(image_name)
    if not isinstance(image, dict):
        raise DecodeError(f"op {op!r} without {'an' if image_name == 'after' else 'a'} "
                          f"{image_name!r} image (found {_kind(image)})")
    source = envelope.get("source")
    table = source.get("table") if isinstance(source, dict) else None
    if not isinstance(table, str) or not table:
        raise DecodeError(f"op {op!r} without source.table: cannot tell which table changed")
    assert isinstance(source, dict)
    key_text = None
    if key:
        key_fields = _unwrap(_loads(key, "key"))
        if key_fields is not None:
            key_text = orjson.dumps(key_fields, option=orjson.OPT_SORT_KEYS).decode()
    before = envelope.get("before")
    row = dict(image)
    row.update({
        "__op": op,
        "__deleted": op == "d",
        "__db": source.get("db"),
        "__schema": source.get("schema"),
        "__table": table,
        "__key": key_text,
        "__lsn": source.get("lsn"),
        "__tx_id": source.get("txId"),
        "__source_ts_ms": source.get("ts_ms"),
        "__ts_ms": envelope.get("ts_ms"),
        "__before": before if isinstance(before, dict) else None,
    })
    return row


def change_topic(row: dict[str, Any]) -> str:
    """``<db>/<schema>/<table>`` of a row from :func:`change_row` (``<db>/<table>`` without schema)."""
    levels = [row.get("__db"), row.get("__schema"), row["__table"]]
    return "/".join(str(level) for level in levels if level)


def decode_changes(batch: list[Message], stage: str) -> tuple[list[Message], list[Failure]]:
    """Each message's Debezium record as a row message; tombstones give none.

    The key comes from the ``kafka.key`` header that the Kafka source sets.
    """
    outputs: list[Message] = []
    failures: list[Failure] = []
    for msg in batch:
        key = (msg.headers or {}).get(KEY_HEADER)
        try:
            row = change_row(msg.payload, key if isinstance(key, bytes) else None)
        except DecodeError as exc:
            failures.append(Failure(msg, str(exc), stage))
            continue
        if row is not None:
            outputs.append(msg.derive(record=row, topic=change_topic(row)))
    return outputs, failures
