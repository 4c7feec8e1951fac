"""Object store target: what lands in the lake, read back with pyarrow and DuckDB."""

from __future__ import annotations

import asyncio
import math
import re
import socket
import subprocess
import time
import sys
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from unsflow.components import Context
from unsflow.config.loading import parse_config
from unsflow.errors import ConfigError, NotConnected, TransientError
from unsflow.message import Message
from unsflow.lake import open_lake
from unsflow.targets.object_store import ObjectStoreTarget

T0 = 1767268800.5  # 2026-01-01T12:00:00.500Z
T0_MS = 1767268800500


def msg(payload: bytes, topic: str = "com1/plant1/area1/pump-1/Message1", at: float = T0,
        record: Any = None) -> Message:
    m = Message(topic=topic, payload=payload, received_at=at)
    if record is not None:
        m.record = record  # decoded upstream, as a processor leaves it
    return m


def target(root: Path, context: Context | None = None, **keys: Any) -> ObjectStoreTarget:
    config = {"type": "s3", "local-path": str(root), "batching": {"max-age": 0.05}} | keys
    cfg = ObjectStoreTarget.config_class.model_validate(config)
    return ObjectStoreTarget("lake", cfg, context or Context(env={}))


async def write_all(root: Path, *batches: list[Message], **keys: Any) -> list[list[Any]]:
    t = target(root, **keys)
    await t.start()
    try:
        return [await t.write(batch) for batch in batches]
    finally:
        await t.stop()


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def duck(sql: str) -> list[dict[str, Any]]:
    con = duckdb.connect()
    try:
        cur = con.execute(sql)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]
    finally:
        con.close()


def duck_lake(root: Path, order: str = "_topic") -> list[dict[str, Any]]:
    # epoch_ms: fetching TIMESTAMPTZ into Python would need pytz.
    return duck(
        f"SELECT * EXCLUDE (_received_at), epoch_ms(_received_at) AS received_ms "
        f"FROM read_parquet('{root}/**/*.parquet', hive_partitioning = true, "
        f"union_by_name = true) ORDER BY {order}")


async def test_rows_read_back_with_pyarrow_and_duckdb(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    batch = [msg(b'{"value": 13.8, "unit": "mm/s", "ok": true}', topic="a/1"),
             msg(b'{"value": 14.1, "unit": "mm/s", "ok": false}', topic="a/2"),
             msg(b'{"value": 15, "unit": "mm/s"}', topic="a/3")]
    assert await write_all(root, batch) == [[]]
    assert len(files(root)) == 1

    table = ds.dataset(root, partitioning="hive").to_table().sort_by("_topic")
    assert set(table.column_names) == {"value", "unit", "ok", "_topic", "_received_at",
                                       "date", "hour"}
    assert table.schema.field("_received_at").type == pa.timestamp("ms", tz="UTC")
    assert table.schema.field("value").type == pa.float64()  # ints and floats
    assert table.column("value").to_pylist() == [13.8, 14.1, 15.0]
    assert table.column("ok").to_pylist() == [True, False, None]

    rows = duck_lake(root)
    assert [(r["_topic"], r["value"], r["unit"], r["ok"]) for r in rows] == [
        ("a/1", 13.8, "mm/s", True), ("a/2", 14.1, "mm/s", False), ("a/3", 15.0, "mm/s", None)]
    assert {r["received_ms"] for r in rows} == {T0_MS}
    assert {(str(r["date"]), r["hour"]) for r in rows} == {("2026-01-01", 12)}


async def test_object_keys_are_hive_style_under_the_prefix(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    await write_all(root, [msg(b'{"a": 1}')], **{"key-prefix": "/plant1/raw/",
                                                  "object-prefix": "sensor"})
    await write_all(root / "flat", [msg(b'{"a": 1}')], format="jsonl")
    (key,) = [f for f in files(root) if not f.startswith("flat")]
    assert re.fullmatch(r"plant1/raw/date=2026-01-01/hour=12/"
                        r"sensor-\d{8}T\d{9}Z-[0-9a-f]{12}\.parquet", key), key
    (flat,) = files(root / "flat")
    assert re.fullmatch(r"date=2026-01-01/hour=12/part-[^/]+\.jsonl", flat), flat


async def test_topic_levels_become_partitions(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    batch = [msg(b'{"v": 1, "site": "from-record"}', topic="com1/plant1/area1/pump/Message1"),
             msg(b'{"v": 2}', topic="com1/plant 2"),
             msg(b'{"v": 3}', topic="com1//area%9")]
    assert await write_all(root, batch, **{"partition-by": ["date", "topic-levels"],
                                           "topic-levels": ["enterprise", "site", "area"]}) == [[]]
    assert len(files(root)) == 3  # one object per partition
    rows = duck_lake(root, order="v")
    assert [(r["enterprise"], r["site"], r["area"], r["v"]) for r in rows] == [
        ("com1", "plant1", "area1", 1), ("com1", "plant 2", "_", 2), ("com1", "_", "area%9", 3)]
    # a record field named like a partition is kept, renamed, not hidden by the partition value
    assert [r["site_"] for r in rows] == ["from-record", None, None]
    table = open_lake(root).to_table().sort_by("v")
    assert table.column("area").to_pylist() == ["area1", "_", "area%9"]


async def test_column_types_are_the_union_of_the_rows(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    batch = [msg(b'{"i": 1, "n": 1, "s": "x", "b": true, "mix": 1, "nested": {"k": [1, 2]}}'),
             msg(b'{"i": 2, "n": 2.5, "mix": "one", "nested": [true], "late": "new field"}'),
             msg(b'{"i": 3, "mix": true, "nothing": null}'),
             msg(b"{}", record={"i": 4, "mix": 1.5, "inf": math.inf, "nan": math.nan})]
    assert await write_all(root, batch) == [[]]
    (name,) = files(root)
    table = pq.read_table(root / name)
    types = {f.name: f.type for f in table.schema}
    assert types == {"i": pa.int64(), "n": pa.float64(), "s": pa.string(), "b": pa.bool_(),
                     "mix": pa.string(), "nested": pa.string(), "late": pa.string(),
                     "nothing": pa.null(), "inf": pa.float64(), "nan": pa.float64(),
                     "_topic": pa.string(), "_received_at": pa.timestamp("ms", tz="UTC")}
    cols = table.to_pydict()
    assert cols["i"] == [1, 2, 3, 4]
    assert cols["n"] == [1.0, 2.5, None, None]
    assert cols["mix"] == ["1", "one", "true", "1.5"]
    assert cols["nested"] == ['{"k":[1,2]}', "[true]", None, None]
    assert cols["late"] == [None, "new field", None, None]
    assert math.isinf(cols["inf"][3]) and math.isnan(cols["nan"][3])
    assert duck(f"SELECT count(*) AS n, sum(i) AS s FROM read_parquet('{root}/**/*.parquet')") \
        == [{"n": 4, "s": 10}]


async def test_a_later_file_with_new_columns_reads_as_one_table(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    first = [msg(b'{"v": 1, "unit": "C"}', topic="t/1")]
    later = [msg(b'{"v": 2.5, "unit": "C", "alarm": true}', topic="t/2", at=T0 + 3600)]
    # max-records 1: each write is its own object
    assert await write_all(root, first, later, batching={"max-records": 1}) == [[], []]
    assert len(files(root)) == 2

    rows = duck_lake(root)
    assert [(r["v"], r["unit"], r["alarm"], r["hour"]) for r in rows] == [
        (1.0, "C", None, 12), (2.5, "C", True, 13)]
    table = open_lake(root).to_table().sort_by("_topic")
    assert table.schema.field("v").type == pa.float64()
    assert table.to_pydict()["alarm"] == [None, True]
    assert table.to_pydict()["v"] == [1.0, 2.5]


async def test_event_type_batch_gives_a_row_per_array_item(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    batch = [msg(b'[{"a": 1}, {"a": 2}, {"a": 3, "b": "x"}]'), msg(b"[]"), msg(b'{"a": 9}')]
    (failures,) = await write_all(root, batch, **{"event-type": "batch"})
    assert [f.message.payload for f in failures] == [b'{"a": 9}']
    assert "array" in failures[0].error and failures[0].stage == "target:lake"
    assert [(r["a"], r["b"]) for r in duck_lake(root, order="a")] == [
        (1, None), (2, None), (3, "x")]


async def test_bad_messages_come_back_as_failures_and_the_rest_is_written(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    batch = [msg(b'{"ok": 1}'), msg(b"\xff\xfe{"), msg(b""),
             msg(b"{}", record={"blob": b"\x00bytes"}),       # JSON cannot encode bytes
             msg(b"{}", record={"text": "\ud800"}),            # Parquet cannot encode it
             msg(b'{"ok": 2}')]
    (failures,) = await write_all(root, batch)
    reasons = {f.message.payload: f.error for f in failures}
    assert len(failures) == 4
    assert "UTF-8" in reasons[b"\xff\xfe{"] and "empty" in reasons[b""]
    errors = sorted(f.error for f in failures if f.message.payload == b"{}")
    assert "blob" in errors[0] and "bytes" in errors[0]
    assert "Parquet" in errors[1]
    assert [r["ok"] for r in duck_lake(root, order="ok")] == [1, 2]


async def test_concurrent_writes_share_one_object(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    t = target(root, batching={"max-records": 10000, "max-age": 0.2})
    await t.start()
    try:
        results = await asyncio.gather(*(t.write([msg(b'{"w": %d}' % i)]) for i in range(3)))
        assert results == [[], [], []]
        assert len(files(root)) == 1
    finally:
        await t.stop()
    assert sorted(r["w"] for r in duck_lake(root)) == [0, 1, 2]


async def test_a_write_returns_only_once_its_object_exists(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    t = target(root, batching={"max-age": 0.3})
    await t.start()
    try:
        pending = asyncio.create_task(t.write([msg(b'{"a": 1}')]))
        await asyncio.sleep(0.1)
        assert not pending.done() and files(root) == []
        assert await asyncio.wait_for(pending, 5) == []
        assert len(files(root)) == 1
    finally:
        await t.stop()


async def test_max_records_flushes_before_max_age(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    t = target(root, batching={"max-records": 2, "max-age": 60})
    await t.start()
    try:
        # Two rows reach max-records: no 60 s wait.
        assert await asyncio.wait_for(t.write([msg(b'{"a": 1}'), msg(b'{"a": 2}')]), 5) == []
        assert len(files(root)) == 1
    finally:
        await t.stop()


async def test_a_burst_and_its_tail_are_written_when_it_ends_a_trickle_waits(
        tmp_path: Path) -> None:
    """max-idle: a burst that fills objects has its tail, however small, written once the
    rows stop; a trickle (a tenth of a limit never waits) still fills objects up to
    max-age, and so does one after a burst has ended."""
    root = tmp_path / "lake"
    t = target(root, batching={"max-records": 100, "max-age": 0.8, "max-idle": 0.05})
    loop = asyncio.get_running_loop()
    await t.start()
    try:
        async def timed(batch: list[Message]) -> float:
            began = loop.time()
            assert await asyncio.wait_for(t.write(batch), 5) == []
            return loop.time() - began

        # A trickle: 5 rows (under a tenth of 100) wait for max-age.
        assert await timed([msg(b'{"a": %d}' % i) for i in range(5)]) >= 0.7
        # A burst: a full object, then a tail of 3 rows, written as soon as rows stop.
        assert await timed([msg(b'{"b": %d}' % i) for i in range(100)]) < 0.5
        assert await timed([msg(b'{"b": %d}' % i) for i in range(100, 103)]) < 0.5
        # The burst has ended: a new trickle waits for max-age again.
        assert await timed([msg(b'{"c": 1}')]) >= 0.7
        assert len(files(root)) == 4
    finally:
        await t.stop()
    rows = duck_lake(root)
    assert sorted(r["b"] for r in rows if r.get("b") is not None) == list(range(103))


async def test_stop_flushes_waiting_writers(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    t = target(root, batching={"max-age": 60})
    await t.start()
    pending = [asyncio.create_task(t.write([msg(b'{"a": %d}' % i)])) for i in range(2)]
    await asyncio.sleep(0.05)
    assert not any(p.done() for p in pending) and files(root) == []
    await asyncio.wait_for(t.stop(), 5)
    assert [p.result() for p in pending] == [[], []]
    assert len(files(root)) == 1
    with pytest.raises(NotConnected):
        await t.write([msg(b'{"a": 3}')])


async def test_no_staging_or_partial_files_are_left(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    batches = [[msg(b'{"a": %d}' % i, at=T0 + i * 1800)] for i in range(4)]
    await write_all(root, *batches, batching={"max-records": 1})
    names = files(root)
    assert len(names) == 4
    assert all(n.endswith(".parquet") and "#" not in n and "/." not in n for n in names), names


async def test_jsonl_format(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    batch = [msg(b'{"a": 1, "nested": {"k": "v"}}'), msg(b'{"a": 2.5}')]
    assert await write_all(root, batch, format="jsonl") == [[]]
    (name,) = files(root)
    lines = [orjson.loads(line) for line in (root / name).read_bytes().splitlines()]
    assert lines == [{"a": 1, "nested": {"k": "v"}, "_topic": batch[0].topic, "_received_at": T0_MS},
                     {"a": 2.5, "_topic": batch[1].topic, "_received_at": T0_MS}]
    gz = tmp_path / "gz"
    await write_all(gz, batch, format="jsonl", compression="gzip")
    (gz_name,) = files(gz)
    assert gz_name.endswith(".jsonl.gz")
    rows = duck(f"SELECT a, hour FROM read_json_auto('{gz}/**/*.jsonl.gz', "
                f"hive_partitioning = true) ORDER BY a")
    assert rows == [{"a": 1.0, "hour": 12}, {"a": 2.5, "hour": 12}]


async def test_a_failing_put_is_transient_and_a_retry_writes(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    t = target(root)
    await t.start()
    try:
        blocker = root / "date=2026-01-01"
        blocker.write_text("a file where the partition directory must go")
        batch = [msg(b'{"a": 1}')]
        with pytest.raises(TransientError) as info:
            await t.write(batch)
        assert info.value.component_id == "lake" and "date=2026-01-01" in str(info.value)
        blocker.unlink()
        assert await t.write(batch) == []
    finally:
        await t.stop()
    assert len(files(root)) == 1 and [r["a"] for r in duck_lake(root)] == [1]


async def test_an_unreachable_s3_endpoint_is_transient() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connections are refused
    context = Context(env={"LAKE_CREDENTIAL": '{"username": "minio", "password": "secret123"}'})
    t = target(Path("unused"), context, **{
        "local-path": None, "s3-bucket": "lake", "region": "us-east-1",
        "endpoint": f"http://127.0.0.1:{port}", "allow-http": True, "retry-timeout": 0.3,
        "credential": {"secret-name": "lake-credential", "provider": "env"}})
    await t.start()
    try:
        with pytest.raises(TransientError, match="cannot put"):
            await asyncio.wait_for(t.write([msg(b'{"a": 1}')]), 20)
    finally:
        await t.stop()


def pipeline(target_keys: dict[str, Any]) -> dict[str, Any]:
    return {"targets": {"lake": {"type": "s3"} | target_keys},
            "subscriptions": {"a/#": {"qos": 1, "target": "lake"}}}


@pytest.mark.parametrize(("keys", "found"), [
    ({"s3-bucket": "b", "local-path": "lake"}, "found s3-bucket and local-path"),
    ({}, "found none"),
])
def test_exactly_one_location_is_required(keys: dict[str, Any], found: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(pipeline(keys), env={})
    (issue,) = info.value.issues
    assert issue.path == "targets.lake"
    assert "s3-bucket, local-path, store-url" in issue.expected and found in issue.expected


@pytest.mark.parametrize(("keys", "text"), [
    ({"local-path": "l", "partition-by": ["topic-levels"]}, "topic-levels"),
    ({"local-path": "l", "endpoint": "http://minio:9000"}, "only apply to s3-bucket"),
    ({"store-url": "ftp://host/x"}, "scheme 'ftp'"),
    ({"local-path": "l", "format": "jsonl", "compression": "zstd"}, "gzip or none"),
    ({"local-path": "l", "partition-by": ["hour", "hour"]}, "once"),
    ({"local-path": "l", "bucket": "x"}, "unknown keys"),
])
def test_config_errors_name_the_problem(keys: dict[str, Any], text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(pipeline(keys), env={})
    assert text in str(info.value)


def test_the_reference_config_loads() -> None:
    reference = {"type": "s3", "event-type": "single", "s3-bucket": "sample-bucket",
                 "region": "us-east-1", "key-prefix": "sample-key",
                 "object-prefix": "sample-obj", "format": "parquet"}
    cfg = parse_config(pipeline(reference), env={}).targets["lake"]
    assert isinstance(cfg, ObjectStoreTarget.config_class)
    assert (cfg.s3_bucket, cfg.key_prefix, cfg.partition_by, cfg.compression) == (
        "sample-bucket", "sample-key", ["date", "hour"], "zstd")


def test_every_key_is_described_in_the_json_schema() -> None:
    schema = ObjectStoreTarget.config_class.model_json_schema(by_alias=True)
    undocumented = [k for k, v in schema["properties"].items() if not v.get("description")]
    assert undocumented == []
    assert {"s3-bucket", "local-path", "store-url", "partition-by", "topic-levels"} <= set(
        schema["properties"])


def test_importing_the_module_loads_neither_pyarrow_nor_obstore() -> None:
    code = ("import sys, unsflow.lake, unsflow.targets.object_store; "
            "print(sorted(m for m in ('pyarrow', 'obstore') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("url, expected", [
    ("az://uns", {"account_name": "acct", "container_name": "uns"}),
    ("s3://uns", {"access_key_id": "acct", "bucket": "uns"}),
])
async def test_credential_maps_to_the_store_kind(url: str, expected: dict[str, str]) -> None:
    import base64
    import json

    key = base64.b64encode(b"k" * 32).decode()
    cfg = ObjectStoreTarget.config_class.model_validate(
        {"type": "s3", "store-url": url, "credential": {"secret-name": "store"}})
    t = ObjectStoreTarget("lake", cfg, Context(env={
        "STORE": json.dumps({"username": "acct", "password": key})}))
    credential = await t.context.resolve_secret(cfg.credential)
    writer = t._open_writer(credential)
    assert {k: writer.store.config.get(k) for k in expected} == expected


def test_open_lake_reads_a_column_that_is_number_in_one_object_and_text_in_another(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    part = tmp_path / "date=2026-11-23" / "hour=10"
    part.mkdir(parents=True)
    pq.write_table(pa.table({"value": [1.5, 2.0], "n": [1, 2]}), part / "a.parquet")
    pq.write_table(pa.table({"value": ["RUNNING"], "n": [3.5]}), part / "b.parquet")
    rows = sorted(open_lake(tmp_path).to_table().to_pylist(), key=lambda r: r["n"])
    assert [r["value"] for r in rows] == ["1.5", "2", "RUNNING"]
    assert [r["n"] for r in rows] == [1.0, 2.0, 3.5]
    assert {r["hour"] for r in rows} == {10}


async def test_an_object_holds_at_most_max_records_rows(tmp_path):
    import pyarrow.parquet as pq

    from unsflow.components import Context
    from unsflow.message import Message
    from unsflow.targets.object_store import ObjectStoreTarget

    cfg = ObjectStoreTarget.config_class.model_validate(
        {"type": "s3", "local-path": str(tmp_path), "batching": {"max-records": 50, "max-age": 5}})
    target = ObjectStoreTarget("lake", cfg, Context(env={}))
    await target.start()
    now = time.time()
    try:
        # 3 writers arrive before the flush runs: 180 rows buffered, one flush.
        batches = [[Message("a/b", b'{"n": %d}' % (i * 60 + j), received_at=now)
                    for j in range(60)] for i in range(3)]
        results = await asyncio.gather(*(target.write(b) for b in batches))
    finally:
        await target.stop()
    assert results == [[], [], []]
    sizes = sorted(pq.read_metadata(f).num_rows for f in tmp_path.rglob("*.parquet"))
    assert sizes == [30, 50, 50, 50]
    rows = [r for f in tmp_path.rglob("*.parquet") for r in pq.read_table(f).column("n").to_pylist()]
    assert sorted(rows) == list(range(180))
