"""unsflow train with the lake and the model store on MinIO; the model processor loads from there."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import AwsEndpoint
from tests.ml_data import MANUELA_CSV, manuela_lake
from unsflow.components import Context
from unsflow.message import Message
from unsflow.ml.train import TrainOptions, train
from unsflow.processors.model import ModelProcessor, ModelProcessorConfig

pytestmark = pytest.mark.integration


async def test_train_on_minio_and_serve_in_process(minio: AwsEndpoint, s3_bucket: str,
                                                   tmp_path: Path) -> None:
    lake = manuela_lake(tmp_path / "lake")
    s3 = minio.client("s3")
    s3.upload_file(str(lake / "part-0.parquet"), s3_bucket,
                   "uns/date=2020-04-23/hour=11/part-0.parquet")
    keys = {"endpoint": minio.endpoint, "region": minio.region,
            "access-key-id": minio.access_key, "secret-access-key": minio.secret_key}
    result = train(TrainOptions(
        lake=f"s3://{s3_bucket}/uns", lake_options=keys, store=f"s3://{s3_bucket}/models",
        store_options={**keys, "allow-http": "true"}, name="vib",
        ground_truth=(str(MANUELA_CSV),), candidates=("random-forest",)))
    assert result.version == 1 and result.metrics["f1"] >= result.metrics["baseline"]["f1"]
    stored = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket,
                                                         Prefix="models/")["Contents"])
    assert stored == ["models/vib/1/metadata.json", "models/vib/1/metrics.json",
                      "models/vib/1/model.onnx"]

    cfg = ModelProcessorConfig.model_validate({
        "type": "model", "store": f"s3://{s3_bucket}/models", "model": "vib",
        "store-options": {"endpoint": minio.endpoint, "region": minio.region,
                          "allow-http": "true"},
        "credential": {"secret-name": "minio-models"}})
    env = {"MINIO_MODELS_USERNAME": minio.access_key, "MINIO_MODELS_PASSWORD": minio.secret_key}
    proc = ModelProcessor("anomaly", cfg, Context(env=env))
    await proc.start()
    try:
        outputs, failures = await proc.process([
            Message(topic="t", payload=b"", record={"window": [14.7, 16.4, 17.4, 18.8, 43.3]}),
            Message(topic="t", payload=b"", record={"window": [14.7, 16.4, 17.4, 18.8, 16.2]})])
    finally:
        await proc.stop()
    assert failures == []
    assert [o.record["inference"] for o in outputs] == [1, 0]
    assert proc.describe()["version"] == 1
