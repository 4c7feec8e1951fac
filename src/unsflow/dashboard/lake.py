"""The Data lake page: a local lake's Parquet objects by partition, and a preview of rows.

Only what the ``s3`` target has finished writing is listed: hidden staging
files (``.name``, obstore's ``name#n``) are skipped. Row counts come from each
object's Parquet footer (read once per object and cached by size and
modification time), so listing a lake does not read its data. At most
``MAX_OBJECTS`` objects, the newest, are listed.

A preview reads the first ``limit`` rows of one object, or of one partition
(every object under a directory, Hive partitions as columns) with pyarrow,
and gives the DuckDB query that reads the same thing. Paths are relative to
the lake root and must stay inside it.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unsflow.errors import DashboardError

__all__ = ["Lake", "duckdb_query"]

MAX_OBJECTS = 5000
MAX_PREVIEW = 200


@dataclass(frozen=True)
class _Object:
    path: str  # relative to the root, '/'-separated
    partition: str
    size: int
    mtime: float


def duckdb_query(path: Path, is_dir: bool, limit: int = 10) -> str:
    """The one line that reads ``path`` with DuckDB.

    >>> duckdb_query(Path("/lake/date=2026-01-01"), True)
    "SELECT * FROM read_parquet('/lake/date=2026-01-01/**/*.parquet', hive_partitioning = true, union_by_name = true) LIMIT 10;"
    """
    target = f"{path}/**/*.parquet" if is_dir else str(path)
    target = target.replace("'", "''")
    return (f"SELECT * FROM read_parquet('{target}', hive_partitioning = true, "
            f"union_by_name = true) LIMIT {limit};")


def _plain(value: Any) -> Any:
    """A JSON-safe cell."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(value).decode()
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


class Lake:
    """One local lake root."""

    def __init__(self, root: str) -> None:
        self.root = Path(root)
        self._rows: dict[str, tuple[int, float, int | None]] = {}  # path -> (size, mtime, rows)

    def _objects(self) -> list[_Object]:
        out: list[_Object] = []
        if not self.root.is_dir():
            return out
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if name.startswith(".") or "#" in name or not name.endswith(".parquet"):
                    continue
                full = os.path.join(dirpath, name)
                try:
                    st = os.stat(full)
                except OSError:
                    continue  # removed meanwhile
                rel = os.path.relpath(full, self.root).replace(os.sep, "/")
                partition = rel.rsplit("/", 1)[0] if "/" in rel else ""
                out.append(_Object(rel, partition, st.st_size, st.st_mtime))
        out.sort(key=lambda o: o.mtime, reverse=True)
        return out[:MAX_OBJECTS]

    def _row_count(self, obj: _Object) -> int | None:
        cached = self._rows.get(obj.path)
        if cached and cached[0] == obj.size and cached[1] == obj.mtime:
            return cached[2]
        import pyarrow.parquet as pq

        try:
            rows: int | None = pq.read_metadata(self.root / obj.path).num_rows
        except (OSError, ValueError):
            rows = None  # unreadable (being replaced, or not Parquet after all)
        self._rows[obj.path] = (obj.size, obj.mtime, rows)
        return rows

    def listing(self) -> dict[str, Any]:
        """Partitions (with object and row counts) and their objects, newest first."""
        objects = self._objects()
        seen = {o.path for o in objects}
        for stale in [p for p in self._rows if p not in seen]:
            del self._rows[stale]
        partitions: dict[str, dict[str, Any]] = {}
        for obj in objects:
            rows = self._row_count(obj)
            part = partitions.setdefault(obj.partition, {
                "partition": obj.partition, "objects": 0, "rows": 0, "bytes": 0, "newest": 0.0,
                "items": []})
            part["objects"] += 1
            part["rows"] += rows or 0
            part["bytes"] += obj.size
            part["newest"] = max(part["newest"], obj.mtime)
            part["items"].append({"path": obj.path, "rows": rows, "bytes": obj.size,
                                  "modified": obj.mtime})
        ordered = sorted(partitions.values(), key=lambda p: p["partition"], reverse=True)
        return {"root": str(self.root), "exists": self.root.is_dir(), "partitions": ordered,
                "objects": len(objects), "rows": sum(p["rows"] for p in ordered),
                "query": duckdb_query(self.root, True)}

    def _resolve(self, rel: str) -> Path:
        root = self.root.resolve()
        target = (root / rel).resolve() if rel else root
        if target != root and root not in target.parents:
            raise DashboardError(f"{rel!r} is outside the lake")
        if not target.exists():
            raise DashboardError(f"{rel!r}: no such object or partition in the lake", 404)
        if target.is_file() and not target.name.endswith(".parquet"):
            raise DashboardError(f"{rel!r} is not a Parquet object")
        return target

    def preview(self, rel: str, limit: int = 50) -> dict[str, Any]:
        """The first ``limit`` rows of an object or a partition, and the DuckDB query."""
        limit = max(1, min(int(limit), MAX_PREVIEW))
        target = self._resolve(rel)
        import pyarrow.parquet as pq

        if target.is_file():
            try:
                pf = pq.ParquetFile(target)
                table = next(pf.iter_batches(batch_size=limit), None)
                total = pf.metadata.num_rows
            except (OSError, ValueError) as exc:
                raise DashboardError(f"{rel!r} cannot be read as Parquet: {exc}") from exc
            rows = table.to_pylist() if table is not None else []
            columns = list(pf.schema_arrow.names)
        else:
            from unsflow.lake import open_lake

            try:
                dataset = open_lake(target)  # skips the target's staging files (.name.tmp)
                table = dataset.head(limit)
                total = dataset.count_rows()
            except (OSError, ValueError) as exc:
                raise DashboardError(f"{rel or 'the lake'} cannot be read: {exc}") from exc
            rows = table.to_pylist()
            columns = list(table.column_names)
        return {"path": rel, "kind": "object" if target.is_file() else "partition",
                "columns": columns, "rows": [{k: _plain(v) for k, v in r.items()} for r in rows],
                "total_rows": total, "query": duckdb_query(target, target.is_dir(), limit)}
