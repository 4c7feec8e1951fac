"""Watching a MinIO bucket fill: each new Parquet object read once, when first seen.

What the edge-to-core benchmarks share: the time a row is first seen in the
lake (a listing every ``interval`` seconds finds its object; the object is
durable by then) is its arrival; latency = arrival - a time column of the row.
"""

from __future__ import annotations

import time
from typing import Any


class LakeWatch:
    def __init__(self, minio: dict[str, Any], bucket: str, columns: list[str]) -> None:
        import pyarrow.fs

        self.fs = pyarrow.fs.S3FileSystem(
            endpoint_override=f"{minio['host']}:{minio['port']}", scheme="http",
            region=minio["region"], access_key=minio["access_key"],
            secret_key=minio["secret_key"])
        self.bucket = bucket
        self.columns = columns
        self.seen: set[str] = set()
        self.rows = 0
        # (arrival epoch seconds, column values...) per row
        self.arrivals: list[tuple[float, ...]] = []

    def poll(self) -> int:
        """Read the objects not seen yet; the number of rows they held."""
        import pyarrow.fs
        import pyarrow.parquet as pq

        now = time.time()
        infos = self.fs.get_file_info(pyarrow.fs.FileSelector(self.bucket, recursive=True))
        added = 0
        for info in infos:
            if info.type != pyarrow.fs.FileType.File or not info.path.endswith(".parquet"):
                continue
            if info.path in self.seen:
                continue
            self.seen.add(info.path)
            table = pq.read_table(info.path, filesystem=self.fs, columns=self.columns)
            cols = [table.column(c).to_pylist() for c in self.columns]
            self.arrivals.extend((now, *values) for values in zip(*cols))
            added += table.num_rows
        self.rows += added
        return added

    def wait(self, rows: int, timeout: float, interval: float = 0.2) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll()
            if self.rows >= rows:
                return True
            time.sleep(interval)
        return False


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    s = sorted(values)

    def at(q: float) -> float:
        return round(s[min(len(s) - 1, int(q * len(s)))], 3)

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": round(s[-1], 3)}


def make_bucket(minio: dict[str, Any], name: str) -> str:
    import boto3
    from botocore.config import Config

    s3 = boto3.client("s3", endpoint_url=minio["endpoint"], region_name=minio["region"],
                      aws_access_key_id=minio["access_key"],
                      aws_secret_access_key=minio["secret_key"],
                      config=Config(s3={"addressing_style": "path"}))
    s3.create_bucket(Bucket=name)
    return name
