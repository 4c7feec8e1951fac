"""Config reload under load: how long reading pauses per reload, and that nothing is lost.

Method (one run prints one JSON document):

1. A broker of its own (``scripts/services.sh`` in a temporary directory, free
   ports) and ``unsflow run`` on a config file like
   examples/local-datalake.json (persistent session, local Parquet).
2. A publisher sends N numbered QoS 1 messages at about ``--rate`` messages
   per second, waiting for every PUBACK.
3. Meanwhile the config file is rewritten every ``--every`` seconds, each
   time with a different ``batching.max-age`` of the target, so that every
   reload drains the in-flight batches, stops the target (flush) and starts
   a new one; the MQTT connection stays.
4. Reported: the pause of each reload (from the "config reloaded ... reading
   paused X s" log line: from the moment the sources stop being read until
   they are read again), the rows found in Parquet, distinct sequence
   numbers (must equal N) and duplicates.

Run: python benchmarks/config_reload.py [--messages 100000] [--rate 5000] [--every 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

from benchmarks.common import own_broker, payload  # noqa: E402

from unsflow.testing import publish  # noqa: E402

TOPIC = "bench/site1/line1/press/vibration"


def config(broker: dict, lake: Path, workdir: Path, max_age: float) -> dict:
    return {
        "mqtt-broker": {"host": broker["host"], "port": broker["port"],
                        "client-id": f"bench-reload-{os.getpid()}", "clean-start": False},
        "targets": {"lake": {"type": "s3", "local-path": str(lake), "format": "parquet",
                             "batching": {"max-records": 50000, "max-age": max_age}}},
        "subscriptions": {"bench/#": {"qos": 1, "target": "lake"}},
        "dead-letter": {"path": str(workdir / "dead.jsonl")},
        "http": {"port": 0},
        "reload": {"interval": 0.5},
    }


def seqs(lake: Path) -> list[int]:
    import pyarrow.parquet as pq

    out: list[int] = []
    for f in lake.rglob("*.parquet"):
        out += pq.read_table(f, columns=["seq"]).column("seq").to_pylist()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=5000.0)
    parser.add_argument("--every", type=float, default=3.0)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="unsflow-bench-reload-"))
    lake = workdir / "lake"
    path = workdir / "pipeline.json"
    lines: list[str] = []
    broker_context = own_broker()
    try:
        own = broker_context.__enter__()
        broker = {"host": own.host, "port": own.port}
        path.write_text(json.dumps(config(broker, lake, workdir, 1.0)))
        proc = subprocess.Popen([sys.executable, "-m", "unsflow.cli", "run", str(path)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        reader = threading.Thread(target=lambda: lines.extend(proc.stderr or []), daemon=True)
        reader.start()
        while not any("subscribed:" in line for line in lines):
            time.sleep(0.05)
        chunk = 500

        def paced():
            t0 = time.perf_counter()
            for seq in range(args.messages):
                if seq % chunk == 0:
                    time.sleep(max(0.0, t0 + seq / args.rate - time.perf_counter()))
                yield TOPIC, payload(seq)

        done = threading.Event()
        publisher = threading.Thread(target=lambda: (publish(
            broker["host"], broker["port"], paced(), qos=1, timeout=600), done.set()))
        began = time.perf_counter()
        publisher.start()
        reloads = 0
        while not done.wait(args.every):
            reloads += 1
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(config(broker, lake, workdir, 1.0 - 0.05 * (reloads % 10))))
            os.replace(tmp, path)
        publish_seconds = time.perf_counter() - began
        publisher.join()
        deadline = time.perf_counter() + 120
        found = seqs(lake)
        while len(set(found)) < args.messages and time.perf_counter() < deadline:
            time.sleep(0.5)
            found = seqs(lake)
        proc.terminate()
        proc.wait(60)
    finally:
        broker_context.__exit__(None, None, None)
        shutil.rmtree(workdir, ignore_errors=True)
    pauses = [float(m.group(1)) for line in lines
              if (m := re.search(r"config reloaded .*reading paused ([0-9.]+)s", line))]
    print(json.dumps({
        "benchmark": "config_reload", "messages": args.messages, "rate_target": args.rate,
        "publish_seconds": round(publish_seconds, 1), "reloads_written": reloads,
        "reloads_applied": len(pauses),
        "pause_seconds": {"min": min(pauses, default=None), "median":
                          statistics.median(pauses) if pauses else None,
                          "max": max(pauses, default=None)},
        "rows": len(found), "distinct": len(set(found)),
        "lost": args.messages - len(set(found) & set(range(args.messages))),
        "duplicates": len(found) - len(set(found)), "cpus": os.cpu_count(),
    }, indent=2))


if __name__ == "__main__":
    main()
