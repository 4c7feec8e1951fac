"""OPC UA -> Parquet: values per second from 1,000 and 10,000 monitored items.

Method (one run prints one JSON document):

1. An OPC UA server of its own (the project's test server, Eclipse Milo, started by
   ``scripts/services.sh`` in a temporary directory on a free port) with the largest
   item count of the run under ``Bench/``, every variable changed every ``--update-ms``
   (so the server offers items x 1000 / update-ms values per second).
2. For each item count: a pipeline in this process (the opcua source monitoring
   ``Bench/V0..`` with sampling at half the update interval and a queue of 10, publishing
   every 100 ms; the s3 target on a local directory, typed value columns, flush at
   50,000 rows, every object fsynced). After a warm-up of ``--warmup`` seconds (the
   items are created, the first values are in), the clock runs for ``--seconds``:
   values received by the source, and rows the lake acknowledged, per second.
   ``offered`` is what the server's update rate allows; the server's own sampling on
   two cores shared with unsflow caps it too (``cpu_percent`` is unsflow's process,
   ``server_cpu_percent`` the JVM's; 200 is both cores).

Run: python benchmarks/opcua_to_parquet.py [--items 1000 10000] [--update-ms 100]
     [--seconds 20] [--warmup 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from unsflow.components import Context
from unsflow.config.loading import parse_config
from unsflow.engine.pipeline import Pipeline

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import free_port


def services(command: str, env: dict[str, str]) -> dict[str, Any]:
    result = subprocess.run(["bash", str(REPO / "scripts" / "services.sh"), command, "opcua"],
                            env=env, capture_output=True, text=True, timeout=900, check=False)
    if result.returncode:
        raise SystemExit(f"services.sh {command} opcua failed:\n{result.stderr}")
    if command != "up":
        return {}
    return json.loads((Path(env["UNSFLOW_SERVICES_DIR"]) / "opcua" / "info.json").read_text())


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def server_cpu_seconds(pid: int) -> float:
    """utime + stime of the server's JVM (its share of the two cores matters here)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(endpoint: str, server_pid: int, items: int, update_ms: int, seconds: float,
              warmup: float, workdir: Path) -> dict[str, Any]:
    lake = workdir / f"lake-{items}"
    cfg = parse_config({
        "sources": {"plc": {
            "type": "opcua", "endpoint": endpoint, "target": "lake",
            "publishing-interval": 100, "sampling-interval": update_ms / 2, "queue-size": 10,
            "value-columns": "typed", "topic": "bench/{browse_name}",
            "nodes": [{"node-id": f"ns=2;s=Bench/V{i}"} for i in range(items)]}},
        "targets": {"lake": {"type": "s3", "local-path": str(lake),
                             "batching": {"max-records": 50000, "max-age": 1.0}}},
        "dead-letter": {"path": str(workdir / "dead.jsonl")},
        "spool": {"path": str(workdir / "spool")},
        "http": {"port": 0},
    }, env={})
    pipeline = Pipeline(cfg, Context(env={}))
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    source = pipeline.sources[0]
    started = time.monotonic()
    while not (source.ready and source.subscribed == items and source.received >= items):
        if time.monotonic() - started > 120 or task.done():
            stop.set()
            await asyncio.gather(task, return_exceptions=True)
            raise SystemExit(f"{items} items: not monitoring after 120 s "
                             f"(subscribed {source.subscribed}, bad {len(source.bad_nodes)})")
        await asyncio.sleep(0.1)
    setup = time.monotonic() - started
    await asyncio.sleep(warmup)
    r0, a0, c0, t0 = source.received, pipeline.paths["lake"].stats.accepted, cpu_seconds(), \
        time.monotonic()
    s0 = server_cpu_seconds(server_pid)
    await asyncio.sleep(seconds)
    r1, a1, c1, t1 = source.received, pipeline.paths["lake"].stats.accepted, cpu_seconds(), \
        time.monotonic()
    s1 = server_cpu_seconds(server_pid)
    stop.set()
    await task
    elapsed = t1 - t0
    return {"items": items, "offered_values_per_s": round(items * 1000 / update_ms),
            "received_values_per_s": round((r1 - r0) / elapsed),
            "lake_rows_per_s": round((a1 - a0) / elapsed),
            "cpu_percent": round(100 * (c1 - c0) / elapsed),
            "server_cpu_percent": round(100 * (s1 - s0) / elapsed),
            "setup_seconds": round(setup, 1), "measured_seconds": round(elapsed, 1),
            "reconnects": source.reconnects, "backpressure_pauses": source.pauses}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--update-ms", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=8.0)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="unsflow-bench-opcua-"))
    env = {**os.environ, "UNSFLOW_SERVICES_DIR": str(workdir / "services"),
           "UNSFLOW_OPCUA_PORT": str(free_port()),
           "UNSFLOW_OPCUA_BENCH_NODES": str(max(args.items)),
           "UNSFLOW_OPCUA_UPDATE_MS": str(args.update_ms)}
    results = []
    try:
        info = services("up", env)
        pid = int((Path(env["UNSFLOW_SERVICES_DIR"]) / "opcua" / "opcua.pid").read_text())
        for items in args.items:
            results.append(await run(info["endpoint"], pid, items, args.update_ms, args.seconds,
                                     args.warmup, workdir))
    finally:
        services("down", env)
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps({"benchmark": "opcua_to_parquet", "server": "Eclipse Milo 0.6 (test "
                      "server)", "python": platform.python_version(), "cpus": os.cpu_count(),
                      "update_ms": args.update_ms, "results": results}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
