"""The s3 target against a real MinIO over the S3 API.

Endpoint override with path-style addressing (MinIO on 127.0.0.1 has no
virtual-host names, so every passing write is a path-style one), plain HTTP,
the credential from a secret provider, multipart uploads, deterministic
object names, and a reader's view of the prefix: pyarrow's S3 file system
with Hive partitioning, and DuckDB on top of that. (DuckDB's own s3:// reader
needs the httpfs extension, which DuckDB downloads on first use; this
machine cannot reach extensions.duckdb.org, so DuckDB reads through pyarrow.)
"""

from __future__ import annotations

import base64
import json
import math
import os
from typing import Any

import duckdb
import pytest

from tests.conftest import AwsEndpoint
from unsflow.components import Context
from unsflow.errors import TransientError
from unsflow.lake import open_lake
from unsflow.message import Message
from unsflow.targets.object_store import ObjectStoreTarget

pytestmark = pytest.mark.integration

T0 = 1767268800.5  # 2026-01-01T12:00:00.500Z
MIB = 1024 * 1024


def s3_keys(minio: AwsEndpoint, bucket: str, **keys: Any) -> dict[str, Any]:
    """Target keys for the bucket at MinIO; the credential comes from the env provider."""
    return {"type": "s3", "s3-bucket": bucket, "endpoint": minio.endpoint, "allow-http": True,
            "region": minio.region,
            "credential": {"secret-name": "minio-credential", "provider": "env"},
            "batching": {"max-age": 0.05}} | keys


def context(minio: AwsEndpoint, secret_key: str | None = None) -> Context:
    secret = {"username": minio.access_key, "password": secret_key or minio.secret_key}
    return Context(env={"MINIO_CREDENTIAL": json.dumps(secret)})


async def write_all(config: dict[str, Any], ctx: Context, *batches: list[Message]) -> list[Any]:
    cfg = ObjectStoreTarget.config_class.model_validate(config)
    target = ObjectStoreTarget("lake", cfg, ctx)
    await target.start()
    try:
        return [await target.write(batch) for batch in batches]
    finally:
        await target.stop()


def objects(minio: AwsEndpoint, bucket: str) -> dict[str, dict[str, Any]]:
    """Every object in the bucket: key -> HEAD (ETag, ContentLength)."""
    s3 = minio.client("s3")
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]
    return {k: s3.head_object(Bucket=bucket, Key=k) for k in sorted(keys)}


def reading(seq: int, topic: str = "com1/plant1/area1/pump-1/Message1", at: float = T0,
            headers: dict[str, Any] | None = None) -> Message:
    payload = json.dumps({"seq": seq, "value": 10.5 + seq}).encode()
    return Message(topic=topic, payload=payload, received_at=at + seq / 1000, headers=headers)


@pytest.mark.parametrize("where", ["s3-bucket", "store-url"])
async def test_rows_land_in_minio_and_read_back_as_hive_table(
        minio: AwsEndpoint, s3_bucket: str, where: str) -> None:
    config = s3_keys(minio, s3_bucket, **{"key-prefix": "raw/uns", "object-prefix": "edge",
                                          "partition-by": ["date", "hour", "topic-levels"],
                                          "topic-levels": ["enterprise", "site", "area"]})
    if where == "store-url":
        del config["s3-bucket"]
        config["store-url"] = f"s3://{s3_bucket}"
    first = [reading(i, topic=f"com1/plant1/area{1 + i % 2}/pump-{i}/Message1") for i in range(6)]
    second = [reading(i, topic="com1/plant2/area1/press-1/Message2") for i in range(6, 10)]
    assert await write_all(config, context(minio), first, second) == [[], []]

    keys = list(objects(minio, s3_bucket))
    assert len(keys) == 3  # one object per partition and flush
    assert all(k.startswith("raw/uns/date=2026-01-01/hour=12/enterprise=com1/") for k in keys)
    assert {k.rsplit("/", 1)[0].split("/", 4)[4] for k in keys} == {
        "enterprise=com1/site=plant1/area=area1", "enterprise=com1/site=plant1/area=area2",
        "enterprise=com1/site=plant2/area=area1"}
    assert all(k.rsplit("/", 1)[1].startswith("edge-") and k.endswith(".parquet") for k in keys)

    # pyarrow over S3, Hive partitions as columns.
    dataset = open_lake(f"{s3_bucket}/raw/uns", filesystem=minio.arrow_filesystem())
    rows = sorted(dataset.to_table().to_pylist(), key=lambda r: r["seq"])
    assert [r["seq"] for r in rows] == list(range(10))
    assert [r["value"] for r in rows] == [10.5 + i for i in range(10)]
    assert rows[0]["_topic"] == "com1/plant1/area1/pump-0/Message1"
    assert (rows[1]["site"], rows[1]["area"]) == ("plant1", "area2")
    assert {r["site"] for r in rows[6:]} == {"plant2"}
    assert str(rows[0]["date"]) == "2026-01-01" and rows[0]["hour"] == 12

    # DuckDB: SQL with partition pruning on the same dataset.
    con = duckdb.connect()
    try:
        con.register("lake", dataset)
        counts = con.execute("SELECT site, area, count(*) FROM lake WHERE hour = 12 "
                             "GROUP BY ALL ORDER BY ALL").fetchall()
    finally:
        con.close()
    assert counts == [("plant1", "area1", 3), ("plant1", "area2", 3), ("plant2", "area1", 4)]


async def test_a_wrong_secret_key_is_a_transient_error_naming_the_object(
        minio: AwsEndpoint, s3_bucket: str) -> None:
    config = s3_keys(minio, s3_bucket, **{"retry-timeout": 1})
    with pytest.raises(TransientError) as info:
        await write_all(config, context(minio, secret_key="not-the-secret-key"), [reading(1)])
    text = str(info.value)
    assert "cannot put" in text and ".parquet" in text and "[lake]" in text
    assert "not-the-secret-key" not in text
    assert objects(minio, s3_bucket) == {}


async def test_a_large_object_goes_up_as_one_complete_multipart_upload(
        minio: AwsEndpoint, s3_bucket: str) -> None:
    # ~14 MB of incompressible text: three parts of 6 MiB with this chunk size.
    blobs = [base64.b64encode(os.urandom(6000)).decode() for _ in range(1750)]
    batch = [Message(topic="big/blob", payload=json.dumps({"seq": i, "blob": b}).encode(),
                     received_at=T0) for i, b in enumerate(blobs)]
    config = s3_keys(minio, s3_bucket, compression="none", **{
        "multipart-chunk-size": 6 * MIB,
        "batching": {"max-records": 100000, "max-bytes": 1 << 30, "max-age": 0.05}})
    assert await write_all(config, context(minio), batch) == [[]]

    [head] = objects(minio, s3_bucket).values()
    size = head["ContentLength"]
    assert size > 12 * MIB
    # S3 (and MinIO) mark a multipart object's ETag with "-<number of parts>".
    assert head["ETag"].strip('"').endswith(f"-{math.ceil(size / (6 * MIB))}"), head["ETag"]
    assert minio.client("s3").list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    rows = open_lake(s3_bucket, filesystem=minio.arrow_filesystem()).to_table().to_pylist()
    assert len(rows) == 1750
    assert {r["seq"]: r["blob"] for r in rows} == dict(enumerate(blobs))


async def test_a_small_object_is_a_single_put(minio: AwsEndpoint, s3_bucket: str) -> None:
    assert await write_all(s3_keys(minio, s3_bucket), context(minio), [reading(1)]) == [[]]
    [head] = objects(minio, s3_bucket).values()
    assert "-" not in head["ETag"].strip('"')


async def test_deterministic_names_a_replayed_batch_overwrites_its_object(
        minio: AwsEndpoint, s3_bucket: str) -> None:
    config = s3_keys(minio, s3_bucket, **{"object-names": "deterministic"})
    batch = [reading(i) for i in range(5)]
    # The same batch twice (an engine retry, a spool replay), then another batch.
    assert await write_all(config, context(minio), batch) == [[]]
    first = objects(minio, s3_bucket)
    assert await write_all(config, context(minio), batch) == [[]]
    assert objects(minio, s3_bucket).keys() == first.keys()
    assert len(first) == 1
    [key] = first
    assert key.startswith("date=2026-01-01/hour=12/part-") and len(key.rsplit("/", 1)[1]) == len(
        "part-") + 32 + len(".parquet")
    rows = open_lake(s3_bucket, filesystem=minio.arrow_filesystem()).to_table().to_pylist()
    assert sorted(r["seq"] for r in rows) == [0, 1, 2, 3, 4]

    await write_all(config, context(minio), [reading(i) for i in range(5, 8)])
    assert len(objects(minio, s3_bucket)) == 2


async def test_deterministic_names_kafka_records_replayed_later_overwrite(
        minio: AwsEndpoint, s3_bucket: str) -> None:
    """A Kafka record is the same record on replay, whenever it is consumed again."""
    config = s3_keys(minio, s3_bucket, **{"object-names": "deterministic"})

    def batch(at: float) -> list[Message]:
        return [reading(i, at=at, headers={"kafka.topic": "uns", "kafka.partition": 0,
                                           "kafka.offset": 100 + i}) for i in range(4)]

    await write_all(config, context(minio), batch(T0))
    await write_all(config, context(minio), batch(T0 + 60))  # consumed again a minute later
    assert len(objects(minio, s3_bucket)) == 1


async def test_unique_names_a_replayed_batch_adds_an_object(
        minio: AwsEndpoint, s3_bucket: str) -> None:
    batch = [reading(i) for i in range(3)]
    await write_all(s3_keys(minio, s3_bucket), context(minio), batch)
    await write_all(s3_keys(minio, s3_bucket), context(minio), batch)
    assert len(objects(minio, s3_bucket)) == 2
