"""Debezium change events: real envelopes (captured from Debezium 3.6.1 on PostgreSQL 15,
JSON converter with and without schemas) into rows; bad envelopes into failures."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from unsflow.codecs.debezium import change_row, change_topic
from unsflow.components import Context
from unsflow.config.loading import parse_config
from unsflow.errors import ConfigError, DecodeError
from unsflow.message import Message
from unsflow.processors.parse import ParseProcessor, ParseProcessorConfig

# Captured with scripts/services.sh up postgres debezium mm2: an insert, an update and a
# delete (with its tombstone) of work_orders, a snapshot read and a delete of
# quality_results, an insert of maintenance_events. "schemas": read from core after
# MirrorMaker 2 (topic factory.line...), with schemas; else from factory, without.
EVENTS = [json.loads(line) for line in
          (Path(__file__).parent / "data" / "debezium_events.jsonl").read_text().splitlines()]


def kafka_message(event: dict[str, Any]) -> Message:
    value = event["value"].encode() if event["value"] is not None else b""
    key = event["key"].encode() if event["key"] is not None else None
    return Message(topic=event["topic"], payload=value, received_at=time.time(),
                   headers={"kafka.topic": event["topic"], "kafka.partition": 0,
                            "kafka.offset": 0, "kafka.key": key})


async def parse(batch: list[Message]) -> tuple[list[Message], list[Any]]:
    p = ParseProcessor("cdc", ParseProcessorConfig.model_validate(
        {"type": "parse", "format": "debezium"}), Context(env={}))
    await p.start()
    try:
        return await p.process(batch)
    finally:
        await p.stop()


@pytest.mark.parametrize("schemas", [True, False], ids=["with-schemas", "without-schemas"])
async def test_real_envelopes_become_rows_tombstones_none(schemas: bool) -> None:
    events = [e for e in EVENTS if e["schemas"] is schemas]
    outputs, failures = await parse([kafka_message(e) for e in events])
    assert failures == []
    tombstones = [e for e in events if e["value"] is None]
    assert tombstones, "the capture holds tombstones"
    assert len(outputs) == len(events) - len(tombstones)
    for out in outputs:
        row = out.record
        assert out.topic == f"line/public/{row['__table']}"
        assert row["__db"] == "line" and row["__schema"] == "public"
        assert row["__key"] == json.dumps({"id": row["id"]}, separators=(",", ":"))
        assert isinstance(row["__lsn"], int) and isinstance(row["__source_ts_ms"], int)
        assert isinstance(row["__tx_id"], int)
        assert row["__deleted"] is (row["__op"] == "d")
        assert out.headers and out.headers["kafka.topic"].endswith(f".{row['__table']}")
    orders = [o.record for o in outputs if o.record["__table"] == "work_orders"]
    assert [r["__op"] for r in orders] == ["c", "u", "d"]
    created, updated, deleted = orders
    assert created["__before"] is None and created["status"] == "planned"
    assert updated["status"] in ("running", "done") and updated["revision"] == 2
    assert updated["__before"]["status"] == "planned" and updated["__before"]["revision"] == 1
    # a delete's row is its before image (REPLICA IDENTITY FULL: every column)
    assert deleted["status"] == updated["status"] and deleted["product"] == created["product"]
    assert created["__lsn"] < updated["__lsn"] < deleted["__lsn"]


def test_snapshot_reads_and_other_tables() -> None:
    rows = [change_row(e["value"].encode(), e["key"].encode()) for e in EVENTS
            if e["value"] is not None and not e["schemas"]]
    ops = {(r["__table"], r["__op"]) for r in rows if r}
    assert ("quality_results", "r") in ops  # the initial snapshot of an existing row
    assert ("maintenance_events", "c") in ops
    event = next(r for r in rows if r and r["__table"] == "maintenance_events")
    assert event["notes"] is None and event["duration_s"] == 300  # null columns stay null


def test_with_and_without_schemas_give_the_same_row() -> None:
    plain = {"op": "c", "before": None, "after": {"id": 3, "v": 1.5}, "ts_ms": 2,
             "source": {"db": "d", "schema": "s", "table": "t", "lsn": 9, "txId": 1, "ts_ms": 1}}
    wrapped = {"schema": {"type": "struct", "fields": []}, "payload": plain}
    key = {"schema": {"type": "struct"}, "payload": {"id": 3}}
    a = change_row(json.dumps(plain).encode(), b'{"id": 3}')
    b = change_row(json.dumps(wrapped).encode(), json.dumps(key).encode())
    assert a == b and a is not None and a["v"] == 1.5 and a["__key"] == '{"id":3}'


def test_composite_key_is_canonical_and_no_key_is_none() -> None:
    value = json.dumps({"op": "c", "after": {"a": 1, "b": 2},
                        "source": {"db": "d", "table": "t"}}).encode()
    row = change_row(value, b'{"b": 2, "a": 1}')
    assert row is not None and row["__key"] == '{"a":1,"b":2}'
    row = change_row(value, None)
    assert row is not None and row["__key"] is None
    assert row["__schema"] is None and change_topic(row) == "d/t"  # MySQL: no schema level


def test_metadata_wins_over_a_column_of_the_same_name() -> None:
    value = json.dumps({"op": "c", "after": {"id": 1, "__op": "mine"},
                        "source": {"db": "d", "schema": "s", "table": "t"}}).encode()
    row = change_row(value)
    assert row is not None and row["__op"] == "c"


@pytest.mark.parametrize(("value", "reason"), [
    (b"\xff\xfe", "not valid UTF-8"),
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "the value is an array"),
    (b'{"ts_ms": 1700000000000}', "no 'op' field (its fields: ts_ms); a heartbeat"),
    (b'{"op": "x", "source": {"table": "t"}}', "unknown Debezium op 'x'"),
    (b'{"op": "t", "source": {"table": "t"}}', "truncate"),
    (b'{"op": "m", "message": {}}', "logical decoding message"),
    (b'{"op": "c", "after": null, "source": {"table": "t"}}', "op 'c' without an 'after' image"),
    (b'{"op": "d", "before": null, "source": {"table": "t"}}', "op 'd' without a 'before' image"),
    (b'{"op": "u", "after": {"id": 1}, "source": {}}', "without source.table"),
    (b'{"schema": {}, "payload": {"op": "c", "after": {"id": 1}}}', "without source.table"),
])
def test_bad_envelopes_say_why(value: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=None) as info:
        change_row(value, b'{"id": 1}')
    assert reason in str(info.value)


def test_a_key_that_is_not_json_is_an_error() -> None:
    value = b'{"op": "c", "after": {"id": 1}, "source": {"table": "t"}}'
    with pytest.raises(DecodeError, match="the key is not valid JSON"):
        change_row(value, b"id=1")


async def test_bad_envelopes_go_to_failures_the_rest_goes_on() -> None:
    good = kafka_message(next(e for e in EVENTS if e["value"] and not e["schemas"]))
    bad = Message("line.public.x", b'{"ts_ms": 1}', headers={"kafka.key": None})
    tombstone = Message("line.public.x", b"", headers={"kafka.key": b'{"id": 1}'})
    outputs, failures = await parse([bad, good, tombstone])
    assert len(outputs) == 1 and outputs[0].record["__table"]
    assert [f.message for f in failures] == [bad]
    assert "no 'op' field" in failures[0].error and failures[0].stage == "processor:cdc"


async def test_large_batches_decode_in_a_thread_same_result() -> None:
    events = [e for e in EVENTS if not e["schemas"]] * 100  # over the thread threshold
    outputs, failures = await parse([kafka_message(e) for e in events])
    assert failures == [] and len(outputs) == 100 * sum(1 for e in EVENTS
                                                        if not e["schemas"] and e["value"])


def test_config_debezium_takes_no_columns() -> None:
    with pytest.raises(ConfigError, match="columns: expected no columns"):
        parse_config({"processors": {"p": {"type": "parse", "format": "debezium",
                                           "columns": ["a"]}},
                      "targets": {"t": {"type": "file", "path": "x.jsonl", "processors": ["p"]}},
                      "subscriptions": {"a/#": {"target": "t"}}})


def test_docstring_examples() -> None:
    import doctest

    import unsflow.codecs.debezium

    result = doctest.testmod(unsflow.codecs.debezium)
    assert result.attempted > 0 and result.failed == 0
