"""In-process inference: the ``model`` processor's throughput and per-batch latency.

Method (one run prints one JSON document):

1. ``unsflow train`` (the library call) on the MANUela recording
   (/work/shared/data/manuela-vibration.csv written as a Red Hat style lake)
   gives the model: the one chosen by F1, as ``unsflow train`` stores it.
2. For each batch size (1, 64, 1024 by default): a ``model`` processor with
   ``batch-size`` equal to it and onnxruntime limited to ``--threads`` intra-op
   threads; batches of messages whose records hold a window of 5 readings,
   as the ``window`` processor emits them. Each ``process()`` call is timed
   (validation, the worker thread hop, one onnxruntime call, the output
   records): p50 and p99 per batch, and rows per second over the whole run.
3. For reference, the bare ``OnnxModel.predict`` of the same rows (no
   records, no thread hop).

Run: python benchmarks/inference_local.py [--seconds 5] [--batch-sizes 1 64 1024] [--threads 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))

import numpy as np


def _percentiles(samples: list[float]) -> dict[str, float]:
    a = np.array(samples) * 1000
    return {"p50-ms": round(float(np.percentile(a, 50)), 4),
            "p99-ms": round(float(np.percentile(a, 99)), 4)}


async def _run_processor(store: str, name: str, size: int, seconds: float,
                         threads: int) -> dict[str, object]:
    from unsflow.components import Context
    from unsflow.message import Message
    from unsflow.processors.model import ModelProcessor, ModelProcessorConfig

    cfg = ModelProcessorConfig.model_validate({
        "type": "model", "store": store, "model": name, "batch-size": size,
        "poll-interval": 0, "threads": threads})
    proc = ModelProcessor("bench", cfg, Context(env={}))
    await proc.start()
    rng = np.random.default_rng(0)
    values = rng.uniform(10, 18, size=(size, 5)).round(3).tolist()
    batch = [Message(topic="iot-sensor/sw/vibration", payload=b"",
                     record={"machineId": "m", "deviceId": "pump-1", "value": v[-1],
                             "epochMillis": 1_700_000_000_000 + i, "window": v})
             for i, v in enumerate(values)]
    latencies: list[float] = []
    for _ in range(3):  # warm-up
        await proc.process(batch)
    rows = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        t0 = time.perf_counter()
        outputs, failures = await proc.process(batch)
        latencies.append(time.perf_counter() - t0)
        assert len(outputs) == size and not failures
        rows += size
    elapsed = time.perf_counter() - started
    await proc.stop()
    return {"batch-size": size, "batches": len(latencies), "rows": rows,
            "rows-per-second": round(rows / elapsed), **_percentiles(latencies)}


def _run_bare(store: str, name: str, size: int, seconds: float, threads: int) -> dict[str, object]:
    from unsflow.ml.store import ModelStore, OnnxModel

    model = OnnxModel.from_artifact(ModelStore(store).read(name), threads=threads)
    x = np.random.default_rng(0).uniform(10, 18, size=(size, 5)).astype(np.float32)
    for _ in range(3):
        model.predict(x)
    latencies = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        t0 = time.perf_counter()
        model.predict(x)
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    return {"batch-size": size, "rows-per-second": round(len(latencies) * size / elapsed),
            **_percentiles(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per batch size")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64, 1024])
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    args = parser.parse_args()

    from tests.ml_data import MANUELA_CSV, manuela_lake
    from unsflow.ml.train import TrainOptions, train

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        result = train(TrainOptions(lake=str(manuela_lake(root / "lake")),
                                    store=str(root / "store"), name="vib",
                                    ground_truth=(str(MANUELA_CSV),)))
        store = str(root / "store")
        processor = [asyncio.run(_run_processor(store, "vib", n, args.seconds, args.threads))
                     for n in args.batch_sizes]
        bare = [_run_bare(store, "vib", n, args.seconds / 2, args.threads)
                for n in args.batch_sizes]
    print(json.dumps({
        "benchmark": "inference_local", "model": result.model, "window": 5,
        "onnxruntime-threads": args.threads, "cpus": os.cpu_count(),
        "python": platform.python_version(), "model-processor": processor,
        "onnx-predict-only": bare}, indent=2))


if __name__ == "__main__":
    main()
