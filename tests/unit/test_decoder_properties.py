"""Property-based tests (hypothesis) of what bad input can do to the decoders and the lake.

The contract under test: any payload either decodes or becomes a failure with
a reason; nothing raises out of a decoder, nothing disappears, and whatever
is written to Parquet reads back as one valid table.
"""

from __future__ import annotations

import asyncio
import csv
import io
import math
import tempfile
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from unsflow.codecs import coerce_scalar, decode_csv, decode_json, ensure_records
from unsflow.components import Context
from unsflow.errors import DecodeError
from unsflow.lake import open_lake
from unsflow.message import Message
from unsflow.targets.object_store import ObjectStoreTarget

COLUMNS = ["machineId", "deviceId", "value", "epochMillis"]

json_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
# What a processor may leave in a record: JSON values plus NaN, infinities and
# integers beyond int64 (a Python processor computing a ratio or a sum).
record_values = st.recursive(
    json_scalars | st.floats() | st.integers(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
records = st.dictionaries(st.text(min_size=1, max_size=10), record_values, min_size=1, max_size=6)

# Payloads the way a broker hands them over: anything, with some near misses of JSON.
payloads = st.one_of(
    st.binary(max_size=200),
    json_values.map(orjson.dumps),
    json_values.map(lambda v: orjson.dumps(v)[:-1]),  # truncated JSON
    st.text(max_size=50).map(lambda t: t.encode("utf-8")),
    st.integers(1, 3000).map(lambda depth: b"[" * depth + b"]" * depth),  # deep nesting
    st.just(b""),
    st.sampled_from([b"NaN", b'{"v": NaN}', b'{"v": Infinity}', b"\xff\xfe", b"\x00", b"{}"]),
)


@given(payloads)
def test_decode_json_returns_a_value_or_raises_decode_error_with_a_reason(payload: bytes) -> None:
    try:
        decode_json(payload)
    except DecodeError as exc:
        assert str(exc), "a decode error must say why"


@given(json_values)
def test_decode_json_round_trips_json(value: Any) -> None:
    assert decode_json(orjson.dumps(value)) == value


@given(st.sampled_from([b"NaN", b'{"v": NaN}', b"[Infinity]", b'{"v": -Infinity}']))
def test_decode_json_rejects_nan_and_infinity(payload: bytes) -> None:
    try:
        decode_json(payload)
    except DecodeError as exc:
        assert "not valid JSON" in str(exc)
    else:
        raise AssertionError(f"{payload!r} decoded; JSON has no NaN or Infinity")


@given(payloads)
@example(b'"a"b\r"')  # csv raises its own Error for this one; found by hypothesis
def test_decode_csv_gives_the_configured_columns_or_a_reason(payload: bytes) -> None:
    try:
        record = decode_csv(payload, COLUMNS)
    except DecodeError as exc:
        assert str(exc)
    else:
        assert list(record) == COLUMNS


@given(st.lists(st.text(alphabet=st.characters(blacklist_characters="\x00\r\n",
                                                blacklist_categories=("Cs",)), max_size=12),
                min_size=4, max_size=4))
def test_decode_csv_round_trips_a_written_line(cells: list[str]) -> None:
    if all(not c.strip() for c in cells) and not any(cells):
        cells = [*cells[:3], "x"]  # an all-empty line is no line at all
    line = io.StringIO()
    csv.writer(line).writerow(cells)
    record = decode_csv(line.getvalue().encode("utf-8"), COLUMNS)
    for name, cell in zip(COLUMNS, cells):
        expected = coerce_scalar(cell)
        got = record[name]
        assert got == expected or (isinstance(got, str) and got.strip() == cell.strip()), (name, cell, got)


@given(st.lists(payloads, min_size=1, max_size=20), st.sampled_from(["single", "batch"]))
def test_ensure_records_accounts_for_every_message_once(batch_payloads: list[bytes], event_type: str) -> None:
    batch = [Message(topic="a/b", payload=p) for p in batch_payloads]
    good, failures = ensure_records(batch, event_type, "target:t")
    seen = [id(m) for m, _ in good] + [id(f.message) for f in failures]
    assert sorted(seen) == sorted(id(m) for m in batch), "a message was lost or counted twice"
    for _, rows in good:
        assert isinstance(rows, list) and all(isinstance(r, dict) for r in rows)
    for f in failures:
        assert f.error and f.stage == "target:t"


def _write_lake(root: Path, batch: list[Message]) -> list[Any]:
    cfg = ObjectStoreTarget.config_class.model_validate(
        {"type": "s3", "local-path": str(root), "batching": {"max-age": 0.01}})
    target = ObjectStoreTarget("lake", cfg, Context(env={}))

    async def run() -> list[Any]:
        await target.start()
        try:
            return await target.write(batch)
        finally:
            await target.stop()

    return asyncio.run(run())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(records | payloads, min_size=1, max_size=12))
def test_whatever_a_batch_holds_the_lake_stays_one_valid_table(items: list[Any]) -> None:
    batch = []
    for item in items:
        m = Message(topic="plant/line1/press/vibration", payload=b"x", received_at=1767268800.5)
        if isinstance(item, bytes):
            m.payload = item
        else:
            m.record = item
        batch.append(m)
    with tempfile.TemporaryDirectory() as tmp:
        failures = _write_lake(Path(tmp), batch)
        failed = {id(f.message) for f in failures}
        assert all(f.error for f in failures)
        expected_rows = 0
        for m in batch:
            if id(m) in failed:
                continue
            good, bad = ensure_records([m], "single", "t")
            assert not bad, "a message the target did not fail must decode"
            expected_rows += sum(len(rows) for _, rows in good)
        files = list(Path(tmp).rglob("*.parquet"))
        if expected_rows == 0:
            assert not files
            return
        table = open_lake(tmp).to_table()
        assert table.num_rows == expected_rows
        assert set(table.column("_topic").to_pylist()) == {"plant/line1/press/vibration"}
        # Non-finite floats are kept (as floats or their text), never turned into something else.
        for m in batch:
            if id(m) in failed or not isinstance(m.record, dict):
                continue
            for name, value in m.record.items():
                if isinstance(value, float) and math.isnan(value) and name in table.column_names:
                    column = table.column(name).to_pylist()
                    assert any((isinstance(v, float) and math.isnan(v)) or v == "NaN" for v in column)


# Records with the same fields (the usual stream) or different ones; values of every kind.
record_batches = st.one_of(
    st.lists(records, min_size=1, max_size=12),
    st.lists(st.sampled_from(["a", "b", "_topic", "date"]), min_size=1, max_size=3, unique=True)
    .flatmap(lambda keys: st.lists(st.fixed_dictionaries({k: record_values for k in keys}),
                                   min_size=1, max_size=12)),
)


@given(record_batches)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_columnar_parquet_path_writes_what_the_row_path_writes(batch: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from unsflow.lake.parquet import parquet_bytes, records_parquet
    from unsflow.lake.rows import parquet_rows

    reserved = frozenset({"_topic", "_received_at", "date", "hour"})
    messages = [Message(f"a/{i % 3}", b"", received_at=1_700_000_000.0 + i * 0.3337, record=r)
                for i, r in enumerate(batch)]
    try:
        rows = [row for m in messages for row in parquet_rows(m, [m.record], reserved)]
        expected = pq.read_table(pa.BufferReader(parquet_bytes(rows, "zstd")))
    except (TypeError, ValueError, OverflowError, pa.ArrowException):
        expected = None
    try:
        data = records_parquet(messages, "zstd", reserved)
    except (TypeError, ValueError, OverflowError, pa.ArrowException):
        assert expected is None, "the columnar path failed where the row path did not"
        return
    if data is None:  # a reserved field name: left to the row path, which renames it
        assert any(not reserved.isdisjoint(r) for r in batch)
        return
    assert expected is not None
    got = pq.read_table(pa.BufferReader(data))
    assert got.schema == expected.schema
    assert _comparable(got) == _comparable(expected)  # NaN != NaN: compared by name


def _comparable(table: Any) -> list[dict[str, Any]]:
    return [{k: "NaN" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
            for row in table.to_pylist()]
