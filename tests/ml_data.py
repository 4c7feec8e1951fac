"""Test data for the ML tests: the MANUela recording as a lake, simulator runs with drift."""

from __future__ import annotations

import csv
import json
from pathlib import Path

MANUELA_CSV = Path("/work/shared/data/manuela-vibration.csv")
MACHINE = "floor-1-line-1-extruder-1"


def manuela_rows() -> list[dict[str, str]]:
    with MANUELA_CSV.open(encoding="utf-8") as f:
        return [{k: v.strip() for k, v in row.items()} for row in csv.DictReader(f)]


def manuela_lake(root: Path) -> Path:
    """The recording as the pipeline writes it from the Red Hat CSV style (parse -> s3)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = manuela_rows()
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({
        "machineId": [MACHINE] * len(rows), "deviceId": [r["id"] for r in rows],
        "value": [float(r["value"]) for r in rows], "epochMillis": [int(r["ts"]) for r in rows],
        "_topic": ["iot-sensor/sw/vibration"] * len(rows)}), root / "part-0.parquet")
    return root


def drift_run(root: Path, machines: int = 8, readings: int = 2000, seed: int = 7,
              slope: float = 0.02, length: int = 300) -> tuple[Path, Path]:
    """A simulator run (uns style) with a spike every 30th reading and one drift per machine.

    Even machines drift early (training period), odd ones late (test period).
    Returns (lake directory, ground-truth JSON lines file).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from unsflow.simulator.config import SensorSpec
    from unsflow.simulator.signals import SensorSignal

    lake = root / "lake"
    lake.mkdir(parents=True, exist_ok=True)
    truth = root / "truth.jsonl"
    cols: dict[str, list] = {"machine": [], "sensor": [], "value": [], "timestamp": [],
                             "_topic": []}
    t0 = 1_700_000_000_000
    with truth.open("w", encoding="utf-8") as out:
        for m in range(machines):
            start = 200 + m * 100 if m % 2 == 0 else 1420 + m * 20
            spec = SensorSpec.model_validate({
                "name": "vibration", "low": 10, "high": 18, "step": 1,
                "failures": [{"mode": "spike", "every": 30},
                             {"mode": "drift", "start": start, "slope": slope, "length": length}]})
            name = f"machine-{m}"
            for r in SensorSignal(spec, seed=seed, key=f"{name}/vibration").take(readings):
                ts = t0 + r.index * 5000 + m * 37
                cols["machine"].append(name)
                cols["sensor"].append("vibration")
                cols["value"].append(r.value)
                cols["timestamp"].append(ts)
                cols["_topic"].append(f"acme/plant1/area1/line1/{name}/vibration")
                if r.anomalies:
                    out.write(json.dumps({"timestamp": ts, "machine": name,
                                          "sensor": "vibration", "index": r.index,
                                          "anomalies": list(r.anomalies), "value": r.value,
                                          "normal": r.normal}) + "\n")
    pq.write_table(pa.table(cols), lake / "part-0.parquet")
    return lake, truth
