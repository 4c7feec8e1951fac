"""The demo's first model: trained on a short warm-up of simulated history.

No broker and no pipeline are involved: the simulator's own signal
(:class:`~unsflow.simulator.signals.SensorSignal`, the walk and the spikes the
demo's sensors have) gives ``READINGS`` readings for each of ``MACHINES``
warm-up machines, labelled by the failure modes that changed them. They are
written as one Parquet file with a ``label`` column (which ``unsflow train``
takes as ground truth) and one candidate, the random forest, is trained on
them: a few seconds. Later models are up to the user (``unsflow train`` on the
demo's lake and ground truth); the ``model`` processor and ``unsflow serve``
pick up every new version by themselves.
"""

from __future__ import annotations

import time
from pathlib import Path

from unsflow.demo.files import MODEL, SPIKE_EVERY

__all__ = ["MACHINES", "READINGS", "ensure_model"]

MACHINES = 4
READINGS = 500


def latest_version(store: Path) -> int | None:
    """The latest complete version of the demo's model in ``store``, or None."""
    from unsflow.errors import ModelStoreError
    from unsflow.ml.store import ModelStore

    if not (store / MODEL).is_dir():
        return None
    try:
        return ModelStore(str(store)).latest(MODEL)
    except ModelStoreError:
        return None


def ensure_model(directory: Path) -> tuple[int, float | None]:
    """``(version, seconds spent training)``: an existing version is reused (None seconds)."""
    store = directory / "models"
    found = latest_version(store)
    if found is not None:
        return found, None
    started = time.monotonic()
    import pyarrow as pa
    import pyarrow.parquet as pq

    from unsflow.ml.train import TrainOptions, train
    from unsflow.simulator.config import SensorSpec
    from unsflow.simulator.signals import SensorSignal

    spec = SensorSpec.model_validate({
        "name": "vibration", "unit": "mm/s", "low": 10, "high": 18, "step": 1,
        "failures": [{"mode": "spike", "every": SPIKE_EVERY}]})
    columns: dict[str, list[object]] = {"machine": [], "sensor": [], "value": [],
                                        "timestamp": [], "label": []}
    t0 = 1_700_000_000_000
    for m in range(MACHINES):
        signal = SensorSignal(spec, seed=1000 + m, key=f"warmup-{m}/vibration")
        for i, reading in enumerate(signal.take(READINGS)):
            if reading.value is None:
                continue
            columns["machine"].append(f"warmup-{m}")
            columns["sensor"].append("vibration")
            columns["value"].append(reading.value)
            columns["timestamp"].append(t0 + i * 1000)
            columns["label"].append(1 if reading.anomalies else 0)
    lake = directory / "warmup" / "lake"
    lake.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), lake / "warmup.parquet")
    result = train(TrainOptions(lake=str(lake), store=str(store), name=MODEL,
                                candidates=("random-forest",)))
    return result.version, time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    """``python -m unsflow.demo.warmup DIR``: what the demo runs, in a process of its own."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m unsflow.demo.warmup DEMO_DIR", file=sys.stderr)
        return 2
    version, seconds = ensure_model(Path(args[0]))
    if seconds is None:
        print(f"model {MODEL} version {version} found in the model store; no warm-up needed")
    else:
        print(f"first model: {MODEL} version {version}, trained on a warm-up of simulated "
              f"history ({MACHINES} machines x {READINGS} readings) in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
