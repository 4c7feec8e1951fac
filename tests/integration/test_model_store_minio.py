"""The model store on MinIO: the same contract as on a local directory, through obstore."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import AwsEndpoint
from tests.unit.test_model_store import tiny_onnx
from unsflow.errors import ModelCorrupt, ModelNotFound, ModelStoreError
from unsflow.ml.store import ModelStore, OnnxModel, default_metadata

pytestmark = pytest.mark.integration


def options(minio: AwsEndpoint) -> dict[str, str]:
    return {"endpoint": minio.endpoint, "region": minio.region, "allow-http": "true",
            "access-key-id": minio.access_key, "secret-access-key": minio.secret_key}


def test_minio_store_round_trip(minio: AwsEndpoint, s3_bucket: str) -> None:
    store = ModelStore(f"s3://{s3_bucket}/models", options(minio))
    assert store.versions("vib") == []
    model = tiny_onnx()
    assert store.save("vib", model, default_metadata(5), {"f1": 0.9}) == 1
    s3 = minio.client("s3")
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket)["Contents"])
    assert keys == ["models/vib/1/metadata.json", "models/vib/1/metrics.json",
                    "models/vib/1/model.onnx"]
    # a version without metadata.json (a writer that died) is not complete
    s3.put_object(Bucket=s3_bucket, Key="models/vib/2/model.onnx", Body=b"half")
    assert store.versions("vib") == [1] and store.latest("vib") == 1
    assert store.save("vib", model, default_metadata(5)) == 3
    assert store.versions("vib") == [1, 3]
    artifact = store.read("vib", 1)
    assert artifact.metrics == {"f1": 0.9} and artifact.model == model
    out = OnnxModel.from_artifact(store.read("vib")).predict(np.array([[0, 0, 0, 0, 19.0]]))
    assert out["label"].tolist() == [1]
    with pytest.raises(ModelNotFound, match=rf"s3://{s3_bucket}/models.*model 'vib' version 2"):
        store.read("vib", 2)
    s3.put_object(Bucket=s3_bucket, Key="models/vib/3/metadata.json", Body=b"[1, 2]")
    with pytest.raises(ModelCorrupt, match="metadata.json is not a JSON object"):
        store.read("vib")


def test_minio_wrong_credentials_is_a_store_error(minio: AwsEndpoint, s3_bucket: str) -> None:
    opts = {**options(minio), "secret-access-key": "wrong", "retry-timeout": "1"}
    with pytest.raises(ModelStoreError, match=rf"model store s3://{s3_bucket}/models: cannot "
                                              r"list model 'vib'"):
        ModelStore(f"s3://{s3_bucket}/models", opts).versions("vib")
