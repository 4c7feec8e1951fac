"""The lake package: durable local writes, the object writer, layout, the reader's errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from unsflow.errors import LakeError, TransientError
from unsflow.lake import Layout, ObjectWriter, build_store, open_lake_url, write_file
from unsflow.lake.parquet import encode_parquet
from unsflow.lake.rows import parquet_rows
from unsflow.message import Message


def test_write_file_replaces_whole_and_leaves_no_staging_file(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    write_file(target, b"new bytes")
    assert target.read_bytes() == b"new bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_write_file_that_fails_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    with pytest.raises(OSError):
        write_file(target, b"new", staging=tmp_path / "missing-dir" / ".model.onnx.tmp")
    assert target.read_bytes() == b"old"


def test_object_writer_maps_a_failing_file_system_to_a_transient_error(tmp_path: Path) -> None:
    store, root = build_store(local_path=str(tmp_path / "lake"))
    writer = ObjectWriter(store, root, chunk_size=5 * 1024 * 1024, component_id="lake")
    writer.put("date=2026-01-01/part-a.parquet", b"x")
    assert (tmp_path / "lake" / "date=2026-01-01" / "part-a.parquet").read_bytes() == b"x"
    (tmp_path / "lake" / "date=2026-01-02").write_bytes(b"")  # a file where a directory goes
    with pytest.raises(TransientError, match=r"\[lake\] cannot write date=2026-01-02/part-b"):
        writer.put("date=2026-01-02/part-b.parquet", b"y")
    assert sorted(p.name for p in (tmp_path / "lake").rglob("*")) == [
        "date=2026-01-01", "date=2026-01-02", "part-a.parquet"]


def test_a_partition_column_in_a_record_is_renamed_not_overwritten() -> None:
    layout = Layout(["date", "topic-levels"], ["site"])
    reserved = frozenset({"_topic", "_received_at"}) | layout.columns
    msg = Message("acme/line1", b"", received_at=1700000000.0)
    rows = parquet_rows(msg, [{"site": "from-record", "value": [1, 2]}], reserved)
    assert rows == [{"site_": "from-record", "value": "[1,2]", "_topic": "acme/line1",
                     "_received_at": 1700000000000}]
    assert layout.partition(msg) == ("date=2023-11-14", "site=acme")


def test_encode_parquet_returns_the_messages_it_cannot_encode() -> None:
    import io

    import pyarrow.parquet as pq

    good = Message("a/b", b"", received_at=1.0)
    bad = Message("a/c", b"", received_at=1.0)
    rows_good = parquet_rows(good, [{"v": 1}])
    rows_bad = [{"v": 2, "_topic": "a/c", "_received_at": "not a time"}]
    data, failures = encode_parquet([(good, rows_good), (bad, rows_bad)], "zstd", "target:lake")
    assert [f.message for f in failures] == [bad]
    assert "cannot be written as Parquet" in failures[0].error
    assert pq.read_table(io.BytesIO(data)).column("v").to_pylist() == [1]


def test_open_lake_url_names_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(LakeError, match="no such directory"):
        open_lake_url(str(tmp_path / "nope"))
    with pytest.raises(LakeError, match="only a directory or s3://"):
        open_lake_url("gs://bucket/lake")
