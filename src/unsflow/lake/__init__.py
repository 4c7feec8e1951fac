"""The lake: Parquet objects in a directory or an object store, written and read back.

Shared by the ``s3`` target (:mod:`unsflow.targets.object_store`), the model
store (:mod:`unsflow.ml.store`), training (:mod:`unsflow.ml.features`) and the
spool (:mod:`unsflow.engine.spool`, for its durable writes):

- :mod:`~unsflow.lake.store`: the store factory (:func:`build_store`: local
  directory, S3/MinIO, GCS, Azure through obstore) and :class:`ObjectWriter`
  (whole, durable objects);
- :mod:`~unsflow.lake.durable`: fsync helpers and whole-file replacement on
  local disk;
- :mod:`~unsflow.lake.rows`: records -> rows with ``_topic`` and
  ``_received_at``; :mod:`~unsflow.lake.parquet`: rows -> Arrow -> Parquet;
- :mod:`~unsflow.lake.layout`: Hive partitions and object names;
- :mod:`~unsflow.lake.reader`: :func:`open_lake`, every object under a root
  as one table.

pyarrow and obstore (``pip install 'unsflow[lake]'``) are imported when first
needed, not with this package.
"""

from unsflow.lake.durable import fsync_dir, fsync_path, write_file
from unsflow.lake.layout import KAFKA_COORDINATES, Layout, content_digest, unique_name
from unsflow.lake.parquet import encode_parquet, parquet_bytes
from unsflow.lake.reader import open_lake, open_lake_url
from unsflow.lake.rows import (
    METADATA_COLUMNS,
    encode_message,
    json_line,
    parquet_rows,
    with_metadata,
)
from unsflow.lake.store import ObjectWriter, build_store, credential_from_options

__all__ = [
    "KAFKA_COORDINATES",
    "METADATA_COLUMNS",
    "Layout",
    "ObjectWriter",
    "build_store",
    "content_digest",
    "credential_from_options",
    "encode_message",
    "encode_parquet",
    "fsync_dir",
    "fsync_path",
    "json_line",
    "open_lake",
    "open_lake_url",
    "parquet_bytes",
    "parquet_rows",
    "unique_name",
    "with_metadata",
    "write_file",
]
