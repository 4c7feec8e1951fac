"""Small ONNX anomaly models for tests, trained here on simulator-like windows.

A window is five readings of a vibration sensor (the simulator's random walk
between 10 and 18 mm/s, oldest first); an anomaly is a window whose newest
reading is a spike (x2.5). The models are saved through the real ModelStore.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from unsflow.ml.store import ModelStore, default_metadata

WINDOW = 5


def windows(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` windows, about one in ten with a spike as the newest value, and their labels."""
    rng = np.random.default_rng(seed)
    start = rng.uniform(10, 18, size=(n, 1))
    steps = rng.uniform(-1, 1, size=(n, WINDOW - 1))
    x = np.clip(np.concatenate([start, start + np.cumsum(steps, axis=1)], axis=1), 10, 18)
    y = (rng.random(n) < 0.1).astype(np.int64)
    x[y == 1, -1] *= 2.5
    return x.astype(np.float32), y


def onnx_classifier(inverted: bool = False, seed: int = 0) -> bytes:
    """A decision tree as ONNX (ZipMap off). ``inverted``: labels swapped, so answers differ."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.tree import DecisionTreeClassifier

    x, y = windows(2000, seed)
    clf = DecisionTreeClassifier(max_depth=3, random_state=seed).fit(x, 1 - y if inverted else y)
    # The contract names the input "predict" (the Red Hat demo's requests do).
    onx = to_onnx(clf, initial_types=[("predict", FloatTensorType([None, WINDOW]))],
                  options={id(clf): {"zipmap": False}}, target_opset=17)
    return onx.SerializeToString()


def save_model(store: ModelStore, name: str = "anomaly", *, inverted: bool = False,
               **training: Any) -> int:
    """Train and save one version; returns it."""
    metadata = {"name": name, **default_metadata(WINDOW, {"rows": 2000, **training})}
    return store.save(name, onnx_classifier(inverted), metadata, {"accuracy": 1.0})
