"""Reading the lake back: every Parquet object under a root as one table.

:func:`open_lake` takes a local directory, or a path in a pyarrow file
system (MinIO, S3); :func:`open_lake_url` takes what ``unsflow train
--lake`` does, a directory or ``s3://bucket/prefix`` with store options
(:data:`~unsflow.lake.store.STORE_OPTION_KEYS`). Hive partitions become
columns; the schema is the union of every object's columns with types
promoted, as DuckDB's ``union_by_name`` reads them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from unsflow.errors import LakeError
from unsflow.lake._deps import require

if TYPE_CHECKING:
    import pyarrow.dataset
    import pyarrow.fs

__all__ = ["open_lake", "open_lake_url"]


def open_lake(root: str | os.PathLike[str],
              filesystem: pyarrow.fs.FileSystem | None = None) -> pyarrow.dataset.Dataset:
    """The Parquet objects under ``root`` as one pyarrow dataset.

    ``root`` is a local directory, or with ``filesystem`` a path in it: for
    MinIO or S3, ``"bucket/key-prefix"`` with
    ``pyarrow.fs.S3FileSystem(endpoint_override=..., access_key=..., secret_key=...)``.
    Hive partitions become columns; the schema is the union of every file's
    columns with types promoted (int64 in one file and float64 in another
    read as float64), which ``pyarrow.dataset.dataset`` alone does not do: it
    takes the first file's schema.
    """
    ds = require("pyarrow.dataset")
    fs = require("pyarrow.fs")
    pa = require("pyarrow")
    if filesystem is None:
        filesystem, base = fs.LocalFileSystem(), os.path.abspath(root)
    else:
        base = os.fspath(root).rstrip("/")
    factory = ds.FileSystemDatasetFactory(
        filesystem, fs.FileSelector(base, recursive=True), ds.ParquetFileFormat(),
        ds.FileSystemFactoryOptions(partitioning=ds.HivePartitioning.discover(),
                                    partition_base_dir=base))
    try:
        schema = factory.inspect(promote_options="permissive")
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        # A column that is a number in one object and text in another (a UNS
        # value that is sometimes "RUNNING"): read it as text, as DuckDB's
        # union_by_name does, instead of failing on the whole lake.
        # inspect_schemas() gives the first object's schema and the partitions';
        # every object's footer is needed here.
        first, partitions = factory.inspect_schemas()
        fmt = ds.ParquetFileFormat()
        files = factory.finish(pa.unify_schemas([first, partitions])).files
        schema = _widest_schema([fmt.inspect(f, filesystem) for f in files] + [partitions])
    return factory.finish(schema)


def open_lake_url(url: str, options: Mapping[str, str] | None = None
                  ) -> pyarrow.dataset.Dataset:
    """The lake at ``url``: a directory (or ``file://``) or ``s3://bucket/prefix``.

    ``options`` (S3): ``endpoint`` (``http://host:9000`` for MinIO), ``region``,
    ``access-key-id``, ``secret-access-key``, ``session-token``. Raises
    :class:`~unsflow.errors.LakeError` for a directory that does not exist or
    an unsupported URL.
    """
    options = options or {}
    parts = urlsplit(url)
    if parts.scheme in ("", "file"):
        path = parts.path if parts.scheme == "file" else url
        if not os.path.isdir(path):
            raise LakeError(f"data lake {url}: no such directory")
        return open_lake(path)
    if parts.scheme not in ("s3", "s3a"):
        raise LakeError(f"data lake {url}: only a directory or s3:// URL is supported")
    fs = require("pyarrow.fs")
    endpoint = urlsplit(options.get("endpoint", ""))
    filesystem = fs.S3FileSystem(
        endpoint_override=endpoint.netloc or None, scheme=endpoint.scheme or "https",
        region=options.get("region"), access_key=options.get("access-key-id"),
        secret_key=options.get("secret-access-key"),
        session_token=options.get("session-token"))
    return open_lake(f"{parts.netloc}{parts.path}".rstrip("/"), filesystem=filesystem)


def _widest_schema(schemas: list[Any]) -> Any:
    """One schema for all: same type kept, ints and floats to float64, other mixes to string."""
    pa = require("pyarrow")
    types: dict[str, list[Any]] = {}
    for schema in schemas:
        for fld in schema:
            types.setdefault(fld.name, []).append(fld.type)
    fields = []
    for name, found in types.items():
        kinds = {t for t in found if not pa.types.is_null(t)}
        if not kinds:
            kind = pa.null()
        elif len(kinds) == 1:
            kind = kinds.pop()
        elif all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in kinds):
            kind = pa.float64()
        else:
            kind = pa.string()
        fields.append(pa.field(name, kind))
    return pa.schema(fields)
