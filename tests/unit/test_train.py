"""unsflow train: features, time split, metrics, the demo's baseline, the stored artifact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.ml_data import MANUELA_CSV, drift_run, manuela_lake
from unsflow.cli import main
from unsflow.errors import TrainingDataError
from unsflow.ml.evaluate import scores
from unsflow.ml.features import (
    LakeSpec,
    Readings,
    load_ground_truth,
    read_lake,
    split_by_time,
    windows_of,
)
from unsflow.ml.store import ModelStore, OnnxModel
from unsflow.ml.train import TrainOptions, train


def test_train_command_on_the_manuela_recording(tmp_path: Path) -> None:
    lake = manuela_lake(tmp_path / "lake")
    result = CliRunner().invoke(main, [
        "train", "--lake", str(lake), "--store", str(tmp_path / "store"),
        "--ground-truth", str(MANUELA_CSV), "--name", "vib"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed["version"] == 1
    store = ModelStore(str(tmp_path / "store"))
    artifact = store.read("vib")
    m = artifact.metrics
    assert m is not None
    print(f"\nMANUela recording, held-out last 30%: ours ({m['model']}) F1 {m['f1']}, "
          f"demo depth-2 tree F1 {m['baseline']['f1']}")
    assert m["f1"] >= m["baseline"]["f1"] and m["f1"] >= 0.85
    assert m["test"]["positive-windows"] == 25 and m["test-windows"] == 899
    assert m["detection-delay-readings"] == 0.0 and m["onnx-sklearn-mismatches"] == 0
    assert set(m) >= {"precision", "recall", "f1", "detection-delay-seconds", "windows",
                      "baseline", "split"}
    meta = artifact.metadata
    assert meta["inputs"] == [{"name": "predict", "datatype": "FP32", "shape": [-1, 5]}]
    assert [o["name"] for o in meta["outputs"]] == ["label", "probabilities"]
    assert meta["framework"] == "onnx" and meta["window"] == 5 and meta["positive-label"] == 1
    training = meta["training"]
    assert training["style"] == "redhat" and training["readings"] == 3022
    assert training["anomalous-readings"] == 84
    model = OnnxModel.from_artifact(artifact)
    assert model.inputs == meta["inputs"]
    out = model.predict(np.array([[14.7, 16.4, 17.4, 18.8, 43.3], [14.7, 16.4, 17.4, 18.8, 16.2]]))
    assert out["label"].tolist() == [1, 0]


def test_drift_is_caught_better_than_by_the_demo_tree(tmp_path: Path) -> None:
    lake, truth = drift_run(tmp_path)
    result = train(TrainOptions(lake=str(lake), store=str(tmp_path / "store"), name="vib",
                                ground_truth=(str(truth),)))
    m = result.metrics
    ours, theirs = m["test"]["by-kind"], m["baseline"]["test"]["by-kind"]
    print(f"\nsimulator, spikes + drift: ours ({m['model']}) F1 {m['f1']}, drift recall "
          f"{ours['drift']['recall']}; demo tree F1 {m['baseline']['f1']}, drift recall "
          f"{theirs['drift']['recall']}")
    assert m["f1"] > m["baseline"]["f1"]
    assert ours["drift"]["recall"] > theirs["drift"]["recall"]
    assert ours["spike"]["recall"] == 1.0
    drift = ours["drift"]["detection-delay"]
    assert drift["events"] == 4 and drift["events-detected"] == 4
    assert drift["mean-seconds"] == drift["mean-readings"] * 5  # one reading every 5 s


def test_split_by_time_has_no_leakage(tmp_path: Path) -> None:
    lake, truth = drift_run(tmp_path, machines=2, readings=300)
    readings, info = read_lake(str(lake))
    assert info["style"] == "uns" and info["keys"] == 2
    load_ground_truth([str(truth)]).apply(readings)
    windows = windows_of(readings, 5)
    train_w, test_w, cut = split_by_time(windows, readings, 0.7)
    assert train_w.times.max() < cut <= test_w.first_times.min()
    assert len(train_w) + len(test_w) < len(windows)  # windows across the cut are dropped
    assert train_w.y.sum() > 0 and test_w.y.sum() > 0


def test_scores_detection_delay_in_readings_and_seconds() -> None:
    times = np.arange(10, dtype=np.int64) * 5000
    labels = np.array([0, 0, 0, 1, 1, 1, 0, 0, 1, 0], dtype=np.int8)
    kinds = [("drift",) if x else () for x in labels]
    r = Readings(("m", "vibration"), "m", None, "vibration", times,
                 np.arange(10, dtype=float), labels, kinds)
    windows = windows_of([r], 2)  # windows end at readings 1..9
    predicted = np.array([0, 0, 0, 1, 1, 0, 0, 0, 0])  # the first event at its 2nd reading
    s = scores(windows, [r], predicted)
    assert (s["precision"], s["recall"]) == (1.0, 0.5)
    assert s["detection-delay"] == {"events": 2, "events-detected": 1, "mean-readings": 1.0,
                                    "median-readings": 1.0, "max-readings": 1,
                                    "mean-seconds": 5.0, "median-seconds": 5.0}
    assert s["by-kind"]["drift"]["recall"] == 0.5


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(TrainingDataError, match="no such directory"):
        read_lake(str(tmp_path / "nope"))
    lake = manuela_lake(tmp_path / "lake")
    with pytest.raises(TrainingDataError, match="no anomalous reading .* no ground truth given"):
        train(TrainOptions(lake=str(lake), store=str(tmp_path / "s")))
    with pytest.raises(TrainingDataError, match="no readings of sensor 'temperature'"):
        read_lake(str(lake), spec=LakeSpec(sensor="temperature"))
    bad = tmp_path / "truth.csv"
    bad.write_text("when,who\n1,2\n")
    with pytest.raises(TrainingDataError, match=r"a CSV needs a time column \(ts\)"):
        load_ground_truth([str(bad)])
