"""The model store on a local directory: layout, versions, completeness, errors, ONNX round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from unsflow.errors import ModelCorrupt, ModelNotFound, ModelStoreError
from unsflow.ml.store import ModelStore, OnnxModel, default_metadata


def tiny_onnx(window: int = 5) -> bytes:
    """A depth-2 tree that says 1 when the newest value is above 10, exported like train does."""
    from skl2onnx import to_onnx
    from sklearn.tree import DecisionTreeClassifier

    rng = np.random.default_rng(1)
    x = rng.uniform(0, 20, size=(400, window)).astype(np.float32)
    y = (x[:, -1] > 10).astype(np.int64)
    clf = DecisionTreeClassifier(max_depth=2, random_state=0).fit(x, y)
    from skl2onnx.common.data_types import FloatTensorType
    onx = to_onnx(clf, initial_types=[("predict", FloatTensorType([None, window]))],
                  options={id(clf): {"zipmap": False}}, target_opset=17)
    return onx.SerializeToString()


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    return tiny_onnx()


def test_save_read_versions_layout(tmp_path: Path, model_bytes: bytes) -> None:
    store = ModelStore(str(tmp_path))
    assert store.versions("vib") == [] and store.latest("vib") is None
    v1 = store.save("vib", model_bytes, default_metadata(5, {"rows": 10}), {"f1": 0.5})
    v2 = store.save("vib", model_bytes, default_metadata(5, {"rows": 20}))
    assert (v1, v2) == (1, 2)
    assert store.versions("vib") == [1, 2] and store.latest("vib") == 2
    assert sorted(p.name for p in (tmp_path / "vib" / "1").iterdir()) == \
        ["metadata.json", "metrics.json", "model.onnx"]
    assert not (tmp_path / "vib" / "2" / "metrics.json").exists()
    meta = json.loads((tmp_path / "vib" / "1" / "metadata.json").read_text())
    assert meta["name"] == "vib" and meta["version"] == 1 and meta["created"].endswith("Z")
    assert meta["inputs"] == [{"name": "predict", "datatype": "FP32", "shape": [-1, 5]}]
    latest = store.read("vib")
    assert latest.version == 2 and latest.metadata["training"] == {"rows": 20}
    assert latest.metrics is None and latest.model == model_bytes
    first = store.read("vib", 1)
    assert first.metrics == {"f1": 0.5}
    # no temp files left behind
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]


def test_incomplete_version_is_invisible_and_skipped(tmp_path: Path, model_bytes: bytes) -> None:
    store = ModelStore(f"file://{tmp_path}")
    store.save("vib", model_bytes, default_metadata(5))
    half = tmp_path / "vib" / "2"
    half.mkdir()
    (half / "model.onnx").write_bytes(b"half")  # a writer that died before metadata.json
    (tmp_path / "vib" / "notaversion").mkdir()
    (tmp_path / "vib" / "007").mkdir()
    assert store.versions("vib") == [1] and store.read("vib").version == 1
    with pytest.raises(ModelNotFound, match=r"model 'vib' version 2: no such complete version "
                                            r"\(complete versions: \[1\]\)"):
        store.read("vib", 2)
    # the next save does not reuse the half-written directory
    assert store.save("vib", model_bytes, default_metadata(5)) == 3


def test_missing_model_names_store_and_model(tmp_path: Path) -> None:
    store = ModelStore(str(tmp_path))
    with pytest.raises(ModelNotFound, match=rf"model store {tmp_path} has no complete version "
                                            r"of model 'nope'"):
        store.read("nope")
    with pytest.raises(ModelNotFound, match=r"model 'nope' version 4"):
        store.read("nope", 4)


def test_corrupt_artifacts(tmp_path: Path, model_bytes: bytes) -> None:
    store = ModelStore(str(tmp_path))
    store.save("vib", model_bytes, default_metadata(5))
    (tmp_path / "vib" / "1" / "metadata.json").write_text("{not json")
    with pytest.raises(ModelCorrupt, match=r"model 'vib' version 1: metadata.json is not JSON"):
        store.read("vib")
    store.save("vib", b"this is not onnx", default_metadata(5))
    artifact = store.read("vib", 2)
    with pytest.raises(ModelCorrupt, match=r"version 2: model.onnx cannot be loaded by "
                                           r"onnxruntime"):
        OnnxModel.from_artifact(artifact)
    store.save("vib", model_bytes, default_metadata(5))
    (tmp_path / "vib" / "3" / "model.onnx").unlink()
    with pytest.raises(ModelCorrupt, match=r"version 3: metadata.json exists but model.onnx "
                                           r"is missing"):
        store.read("vib", 3)


def test_bad_names_urls_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="model name '../x'"):
        ModelStore(str(tmp_path)).versions("../x")
    with pytest.raises(ValueError, match="scheme 'ftp'"):
        ModelStore("ftp://host/models")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['colour'\]"):
        ModelStore("s3://bucket/models", {"colour": "red"})
    with pytest.raises(ValueError, match="options apply to object stores only"):
        ModelStore(str(tmp_path), {"region": "eu-west-1"})


def test_unwritable_store_is_a_store_error(tmp_path: Path, model_bytes: bytes) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ModelStoreError, match="cannot create a version of model 'vib'"):
        ModelStore(str(blocker)).save("vib", model_bytes, default_metadata(5))


def test_onnx_model_predicts_labels_and_probabilities(tmp_path: Path, model_bytes: bytes) -> None:
    store = ModelStore(str(tmp_path))
    store.save("vib", model_bytes, default_metadata(5))
    model = OnnxModel.from_artifact(store.read("vib"))
    assert (model.name, model.version, model.width) == ("vib", 1, 5)
    assert model.inputs == [{"name": "predict", "datatype": "FP32", "shape": [-1, 5]}]
    assert [o["name"] for o in model.outputs] == ["label", "probabilities"]
    out = model.predict(np.array([[1, 1, 1, 1, 15], [1, 1, 1, 1, 2]], dtype=np.float64))
    assert out["label"].tolist() == [1, 0] and out["label"].dtype == np.int64
    assert out["probabilities"].shape == (2, 2) and out["probabilities"].dtype == np.float32
    assert out["probabilities"][0, 1] > 0.9 and out["probabilities"][1, 0] > 0.9
    with pytest.raises(ValueError, match="expected 5 values per row, found 3"):
        model.predict(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="not a finite number"):
        model.predict(np.array([[1, 2, 3, 4, float("nan")]]))
