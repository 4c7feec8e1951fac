"""``unsflow train``: an anomaly model from the data lake, scored, exported to ONNX, stored.

Steps: read the readings (:func:`~unsflow.ml.features.read_lake`), label them
from the ground truth, cut them by time into a training and a test period
(windows spanning the cut are dropped), choose a model by F1 on the last
quarter of the training period, fit it on the whole training period, score it
and the demo's baseline (a depth-2 decision tree on the raw window) on the
test period, export it to ONNX with ``predict`` as input (the raw window of
``size`` values, oldest first: the request the demo sends), check that
onnxruntime agrees with scikit-learn on every test window, and save
``model.onnx``, ``metrics.json`` and ``metadata.json`` as a new version in the
model store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from unsflow._deps import require
from unsflow.errors import TrainingDataError
from unsflow.ml.evaluate import scores
from unsflow.ml.features import (
    LakeSpec,
    Windows,
    load_ground_truth,
    read_lake,
    split_by_time,
    windows_of,
)
from unsflow.ml.store import ModelArtifact, ModelStore, OnnxModel, default_metadata

__all__ = ["BASELINE", "CANDIDATES", "TrainOptions", "TrainResult", "train"]

log = logging.getLogger(__name__)

BASELINE = "demo-tree"


def _tree(**kw: Any) -> Any:
    from sklearn.tree import DecisionTreeClassifier
    return DecisionTreeClassifier(**kw)


def _forest(**kw: Any) -> Any:
    from sklearn.ensemble import RandomForestClassifier
    return RandomForestClassifier(**kw)


def _boosting(**kw: Any) -> Any:
    from sklearn.ensemble import GradientBoostingClassifier
    return GradientBoostingClassifier(**kw)


def _extra(**kw: Any) -> Any:
    from sklearn.ensemble import ExtraTreesClassifier
    return ExtraTreesClassifier(**kw)


# name -> (factory, parameters). The baseline is the Red Hat demo's model.
CANDIDATES: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
    BASELINE: (_tree, {"max_depth": 2, "random_state": 0}),
    "random-forest": (_forest, {"n_estimators": 100, "min_samples_leaf": 2, "n_jobs": 1,
                                "random_state": 0}),
    "extra-trees": (_extra, {"n_estimators": 200, "min_samples_leaf": 2, "n_jobs": 1,
                             "random_state": 0}),
    "gradient-boosting": (_boosting, {"n_estimators": 150, "max_depth": 3,
                                      "learning_rate": 0.1, "random_state": 0}),
}


@dataclass(frozen=True)
class TrainOptions:
    """What ``unsflow train`` reads, how it learns and where it writes."""

    lake: str
    store: str
    name: str = "vibration-anomaly"
    ground_truth: tuple[str, ...] = ()
    lake_options: dict[str, str] = field(default_factory=dict)
    store_options: dict[str, str] = field(default_factory=dict)
    spec: LakeSpec = field(default_factory=LakeSpec)
    window: int = 5
    train_fraction: float = 0.7
    candidates: tuple[str, ...] = ("random-forest", "extra-trees", "gradient-boosting")


@dataclass(frozen=True)
class TrainResult:
    """The stored version and what went into its metrics file."""

    name: str
    version: int
    model: str
    metrics: dict[str, Any]


def _require_sklearn() -> None:
    for module in ("sklearn", "skl2onnx", "onnxruntime"):
        require(module, "train")


def _fit(kind: str, windows: Windows) -> Any:
    factory, params = CANDIDATES[kind]
    return factory(**params).fit(windows.x, windows.y)


def _choose(train: Windows, candidates: Sequence[str]) -> tuple[str, dict[str, float]]:
    """The candidate with the best F1 on the last quarter (by time) of the training windows."""
    from sklearn.metrics import f1_score

    cut = np.quantile(train.times, 0.75)
    fit, check = train.take(train.times < cut), train.take(train.first_times >= cut)
    if len(set(fit.y.tolist())) < 2 or check.y.sum() == 0:
        log.info("too few anomalies to compare models on a validation period; taking %s",
                 candidates[0])
        return candidates[0], {}
    found = {}
    for kind in candidates:
        predicted = _fit(kind, fit).predict(check.x)
        found[kind] = round(float(f1_score(check.y, predicted, zero_division=0)), 4)
    best = max(candidates, key=lambda k: found[k])  # first of equals: the order is a preference
    return best, found


def to_onnx(clf: Any, window: int) -> bytes:
    """``clf`` as ONNX: input ``predict`` FP32 [n, window]; outputs ``label``, ``probabilities``."""
    from skl2onnx import to_onnx as convert
    from skl2onnx.common.data_types import FloatTensorType

    model = convert(clf, initial_types=[("predict", FloatTensorType([None, window]))],
                    options={id(clf): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
    return bytes(model.SerializeToString())


def train(opts: TrainOptions) -> TrainResult:
    """Run ``unsflow train`` (module docstring) and return the stored version."""
    _require_sklearn()
    started = time.monotonic()
    readings, lake_info = read_lake(opts.lake, opts.spec, opts.lake_options)
    truth = load_ground_truth(opts.ground_truth)
    anomalous = truth.apply(readings) if len(truth) else 0
    labelled = int(sum(int(r.labels.sum()) for r in readings))
    if labelled == 0:
        raise TrainingDataError(
            f"no anomalous reading in {opts.lake}"
            + (f" matched the ground truth ({', '.join(truth.sources)}: {len(truth)} entries)"
               if truth.sources else " and no ground truth given (--ground-truth)"))
    windows = windows_of(readings, opts.window)
    train_w, test_w, cut = split_by_time(windows, readings, opts.train_fraction)
    if train_w.y.sum() == 0 or len(set(train_w.y.tolist())) < 2:
        raise TrainingDataError(f"the training period (before {_iso(cut)}) holds no anomaly "
                                "and no normal window both; lower --train-fraction or add data")
    if len(test_w) == 0:
        raise TrainingDataError("the test period is empty; raise --train-fraction's complement")
    unknown = [c for c in opts.candidates if c not in CANDIDATES]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; known: {sorted(CANDIDATES)}")
    kind, validation = _choose(train_w, list(opts.candidates))
    clf = _fit(kind, train_w)
    baseline = _fit(BASELINE, train_w)
    onnx_bytes = to_onnx(clf, opts.window)
    runtime = OnnxModel.from_artifact(ModelArtifact(
        opts.name, 0, onnx_bytes, default_metadata(opts.window), None, "candidate"))
    onnx_labels = runtime.predict(test_w.x)["label"]
    mismatches = int(np.sum(onnx_labels != clf.predict(test_w.x)))
    ours = scores(test_w, readings, onnx_labels)  # the ONNX model's answers are what is served
    theirs = scores(test_w, readings, baseline.predict(test_w.x))
    metrics = {
        "model": kind,
        "precision": ours["precision"], "recall": ours["recall"], "f1": ours["f1"],
        "detection-delay-readings": ours["detection-delay"].get("mean-readings"),
        "detection-delay-seconds": ours["detection-delay"].get("mean-seconds"),
        "windows": len(windows), "train-windows": len(train_w), "test-windows": len(test_w),
        "test": ours,
        "baseline": {"model": f"{BASELINE}: DecisionTreeClassifier(max_depth=2) on raw windows "
                              f"of {opts.window}",
                     "precision": theirs["precision"], "recall": theirs["recall"],
                     "f1": theirs["f1"],
                     "detection-delay-readings": theirs["detection-delay"].get("mean-readings"),
                     "detection-delay-seconds": theirs["detection-delay"].get("mean-seconds"),
                     "test": theirs},
        "validation-f1": validation,
        "onnx-sklearn-mismatches": mismatches,
        "split": {"by": "time", "cut": cut, "cut-iso": _iso(cut),
                  "train-fraction": opts.train_fraction,
                  "rule": "train: windows ending before the cut; test: windows starting at "
                          "or after it"},
    }
    factory_params = CANDIDATES[kind][1]
    metadata = default_metadata(opts.window, {
        **lake_info, "ground-truth": list(truth.sources), "anomalous-readings": labelled,
        "ground-truth-matches": anomalous, "model": kind, "parameters": factory_params,
        "window-label": "label of the newest reading", "train-windows": len(train_w),
        "test-windows": len(test_w), "split-cut": _iso(cut),
        "seconds": round(time.monotonic() - started, 2),
    })
    version = ModelStore(opts.store, opts.store_options or None).save(
        opts.name, onnx_bytes, metadata, metrics)
    return TrainResult(opts.name, version, kind, metrics)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")

