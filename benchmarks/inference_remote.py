"""Inference throughput and latency: in-process (OnnxModel) and remote (`unsflow serve` over HTTP).

Method (one run prints one JSON document):

1. A model like the one `unsflow train` picks (``random-forest``: 100 trees,
   min_samples_leaf 2; ``--model tree`` for the demo's depth-2 tree), fitted
   on synthetic vibration windows (a walk in 10..18, one in ten with a x2.5
   spike as the newest value), exported to ONNX with ZipMap off and saved to
   a temporary ModelStore.
2. In-process: ``OnnxModel.predict`` on one thread, batches of 1 and 64 rows,
   for ``--seconds``; latency is one ``predict`` call.
3. Remote: ``unsflow serve`` as a subprocess on a free port; an httpx
   AsyncClient with ``C`` concurrent clients (each sends its next request as
   soon as the previous answer arrived, keep-alive connections) for
   ``--seconds`` per case: OIP v2 (``/v2/models/NAME/infer``, ``[n, 5]``
   FP32) and plain REST (``/api/v1/NAME``: one record with ``window``, or
   ``instances`` for 64 rows), batch 1 and 64, C in ``--clients``. Latency is
   request sent to answer parsed, measured by the client; every answer is
   checked (status 200, one label per row). ``server_cpu_ms_per_request``
   is the server process's CPU time (user + system, /proc) per request, a
   figure that depends less on what else the machine runs.

The client runs on the same machine as the server, so both share its cores
(``cpus`` in the output); a client on another machine would leave the
server more.

Run: python benchmarks/inference_remote.py [--seconds 5] [--clients 1 8] [--model forest]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO / "src"))

import numpy as np  # noqa: E402
from common import free_port, peak_rss_mib  # noqa: E402

from unsflow.ml.store import ModelStore, OnnxModel, default_metadata  # noqa: E402

WINDOW = 5
NAME = "vibration-anomaly"


def windows(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    start = rng.uniform(10, 18, size=(n, 1))
    x = np.clip(np.concatenate(
        [start, start + np.cumsum(rng.uniform(-1, 1, size=(n, WINDOW - 1)), axis=1)], axis=1),
        10, 18)
    y = (rng.random(n) < 0.1).astype(np.int64)
    x[y == 1, -1] *= 2.5
    return x.astype(np.float32), y


def make_model(store: ModelStore, kind: str) -> None:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.tree import DecisionTreeClassifier

    x, y = windows(5000)
    clf = (RandomForestClassifier(n_estimators=100, min_samples_leaf=2, n_jobs=1, random_state=0)
           if kind == "forest" else DecisionTreeClassifier(max_depth=2, random_state=0))
    clf.fit(x, y)
    onx = to_onnx(clf, initial_types=[("predict", FloatTensorType([None, WINDOW]))],
                  options={id(clf): {"zipmap": False}}, target_opset=17)
    store.save(NAME, onx.SerializeToString(),
               {"name": NAME, **default_metadata(WINDOW, {"benchmark": kind})})


def percentiles(latencies: list[float]) -> dict[str, float]:
    ms = np.asarray(latencies) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def in_process(store: ModelStore, batch: int, seconds: float) -> dict[str, Any]:
    model = OnnxModel.from_artifact(store.read(NAME), threads=1)
    rows = windows(batch, seed=1)[0]
    model.predict(rows)
    latencies = []
    start = time.perf_counter()
    while (now := time.perf_counter()) - start < seconds:
        model.predict(rows)
        latencies.append(time.perf_counter() - now)
    elapsed = time.perf_counter() - start
    return {"path": "in-process", "batch": batch, "calls": len(latencies),
            "calls_per_s": round(len(latencies) / elapsed, 1),
            "rows_per_s": round(len(latencies) * batch / elapsed, 1), **percentiles(latencies)}


def request_body(protocol: str, batch: int) -> tuple[str, bytes]:
    rows = windows(batch, seed=2)[0].round(3).tolist()
    if protocol == "v2":
        body = {"inputs": [{"name": "predict", "shape": [batch, WINDOW], "datatype": "FP32",
                            "data": [v for row in rows for v in row]}]}
        return f"/v2/models/{NAME}/infer", json.dumps(body).encode()
    if batch == 1:
        record = {"machine": "press-1", "sensor": "vibration", "value": rows[0][-1],
                  "timestamp": 1_763_000_000_000, "window": rows[0]}
        return f"/api/v1/{NAME}", json.dumps(record).encode()
    return f"/api/v1/{NAME}", json.dumps({"instances": rows}).encode()


def labels_in(protocol: str, answer: dict[str, Any]) -> int:
    if protocol == "v2":
        return len(answer["outputs"][0]["data"])
    return len(answer["predictions"]) if "predictions" in answer else int("label" in answer)


async def remote(base: str, protocol: str, batch: int, clients: int,
                 seconds: float) -> dict[str, Any]:
    import httpx

    path, body = request_body(protocol, batch)
    latencies: list[float] = []
    errors = 0
    async with httpx.AsyncClient(base_url=base, trust_env=False, timeout=30,
                                 headers={"content-type": "application/json"},
                                 limits=httpx.Limits(max_connections=clients)) as http:
        for _ in range(3):  # warm the connections and the model
            await http.post(path, content=body)
        deadline = time.perf_counter() + seconds

        async def client() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                r = await http.post(path, content=body)
                ok = r.status_code == 200 and labels_in(protocol, r.json()) == batch
                latencies.append(time.perf_counter() - t)
                errors += not ok

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - start
    return {"path": "remote", "protocol": protocol, "batch": batch, "clients": clients,
            "requests": len(latencies), "errors": errors,
            "requests_per_s": round(len(latencies) / elapsed, 1),
            "rows_per_s": round(len(latencies) * batch / elapsed, 1), **percentiles(latencies)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_serve(store_dir: str, port: int, workers: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "unsflow.cli", "--log-level", "warning", "serve", "--store",
         store_dir, "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready",
                         trust_env=False).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"unsflow serve exited: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("unsflow serve not ready within 60 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="Seconds per case.")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--model", choices=["forest", "tree"], default="forest")
    parser.add_argument("--workers", type=int, default=2, help="unsflow serve --workers.")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="unsflow-bench-infer-") as tmp:
        store = ModelStore(tmp)
        make_model(store, args.model)
        results: dict[str, Any] = {
            "benchmark": "inference_remote", "model": args.model, "cpus": os.cpu_count(),
            "seconds_per_case": args.seconds, "serve_workers": args.workers, "cases": []}
        for batch in args.batches:
            results["cases"].append(in_process(store, batch, args.seconds))
        port = free_port()
        proc = start_serve(tmp, port, args.workers)
        try:
            for protocol in ("v2", "rest"):
                for batch in args.batches:
                    for clients in args.clients:
                        cpu = cpu_seconds(proc.pid)
                        case = asyncio.run(remote(f"http://127.0.0.1:{port}", protocol, batch,
                                                  clients, args.seconds))
                        # CPU the server spent per request: less sensitive than wall-clock
                        # figures to what else runs on the machine (the client among them).
                        case["server_cpu_ms_per_request"] = round(
                            (cpu_seconds(proc.pid) - cpu) / max(case["requests"], 1) * 1000, 3)
                        results["cases"].append(case)
            results["serve_peak_rss_mib"] = round(peak_rss_mib(proc.pid), 1)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
