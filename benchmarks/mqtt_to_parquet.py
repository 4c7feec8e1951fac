"""MQTT -> local Parquet: unsflow's end-to-end rate against the broker's raw rate.

Method (one run prints one JSON document):

1. A broker of its own, started by ``scripts/services.sh`` in a temporary
   directory on free ports (so nothing else shares it), with
   ``queue_qos0_messages`` on so that QoS 0 can be queued too.
2. For each QoS: a persistent session is created for the consumer, N
   messages (~80-byte JSON) are published into it while the consumer is
   offline, then the consumer connects and drains the backlog. This measures
   how fast the consumer takes messages, not how fast a publisher can send.
3. Raw: ``mosquitto_sub -q QOS -C N`` (C client, output to /dev/null); the
   clock runs from its start to its exit.
4. unsflow: ``unsflow run`` on a config like examples/local-datalake.json;
   the clock runs from its "connected to" log line (CONNACK; a persistent
   session's backlog flows right after it, before the SUBACK) until N rows
   are in Parquet (read from the files' footers), i.e. durably written. Peak
   memory is the process's VmHWM.

Run: python benchmarks/mqtt_to_parquet.py [--messages 200000] [--qos 0 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO / "src"))

from common import free_port, payload, peak_rss_mib  # noqa: E402

from unsflow.testing import publish  # noqa: E402

TOPIC = "bench/site1/line1/press/vibration"


def start_broker(workdir: Path) -> dict:
    env = {**os.environ, "UNSFLOW_SERVICES_DIR": str(workdir / "services"),
           "UNSFLOW_MQTT_PORT": str(free_port()), "UNSFLOW_MQTTS_PORT": str(free_port()),
           "UNSFLOW_MQTT_EXTRA_CONF": "queue_qos0_messages true"}
    subprocess.run(["bash", str(REPO / "scripts" / "services.sh"), "up", "mosquitto"],
                   env=env, check=True, capture_output=True, text=True)
    return json.loads((workdir / "services" / "mosquitto" / "info.json").read_text())


def stop_broker(workdir: Path) -> None:
    env = {**os.environ, "UNSFLOW_SERVICES_DIR": str(workdir / "services")}
    subprocess.run(["bash", str(REPO / "scripts" / "services.sh"), "down", "mosquitto"],
                   env=env, check=False, capture_output=True)


def preload(broker: dict, client_id: str, qos: int, n: int, topic_filter: str) -> float:
    """Create a persistent session for ``client_id`` and queue ``n`` messages in it."""
    subprocess.run(["mosquitto_sub", "-h", broker["host"], "-p", str(broker["port"]), "-c",
                    "-i", client_id, "-q", str(qos), "-t", topic_filter, "-E"], check=True)
    t0 = time.perf_counter()
    # Published at QoS 1 so that every message is in the broker before the clock starts.
    publish(broker["host"], broker["port"], ((TOPIC, payload(i)) for i in range(n)), qos=1,
            timeout=600)
    return n / (time.perf_counter() - t0)


def raw_rate(broker: dict, qos: int, n: int) -> float:
    cid = f"bench-raw-q{qos}-{os.getpid()}"
    preload(broker, cid, qos, n, "bench/#")
    t0 = time.perf_counter()
    subprocess.run(["mosquitto_sub", "-h", broker["host"], "-p", str(broker["port"]), "-c",
                    "-i", cid, "-q", str(qos), "-t", "bench/#", "-C", str(n)],
                   stdout=subprocess.DEVNULL, check=True, timeout=600)
    return n / (time.perf_counter() - t0)


def count_rows(root: Path) -> int:
    import pyarrow.parquet as pq

    total = 0
    for f in root.rglob("*.parquet"):
        try:
            total += pq.read_metadata(f).num_rows
        except OSError:
            pass
    return total


def unsflow_rate(broker: dict, qos: int, n: int, workdir: Path) -> dict:
    cid = f"bench-unsflow-q{qos}-{os.getpid()}"
    lake = workdir / f"lake-q{qos}"
    config = {
        "mqtt-broker": {"host": broker["host"], "port": broker["port"], "client-id": cid,
                        "clean-start": False, "receive-maximum": 10000},
        "targets": {"lake": {"type": "s3", "local-path": str(lake), "format": "parquet",
                             "batching": {"max-records": 50000, "max-age": 0.5}}},
        "subscriptions": {"bench/#": {"qos": qos, "target": "lake"}},
        "dead-letter": {"path": str(workdir / "dead.jsonl")},
    }
    path = workdir / f"bench-q{qos}.json"
    path.write_text(json.dumps(config))
    preload(broker, cid, qos, n, "bench/#")
    proc = subprocess.Popen([sys.executable, "-m", "unsflow.cli", "run", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "connected to" in line:
                break
        t0 = time.perf_counter()
        rows = 0
        while rows < n and time.perf_counter() - t0 < 600:
            time.sleep(0.05)
            rows = count_rows(lake)
        elapsed = time.perf_counter() - t0
        peak = peak_rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(60)
    return {"msgs_per_s": round(n / elapsed), "rows": rows, "peak_rss_mib": round(peak, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--qos", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    if not shutil.which("mosquitto_sub"):
        sys.exit("mosquitto_sub not found: run scripts/services.sh up mosquitto first")
    workdir = Path(tempfile.mkdtemp(prefix="unsflow-bench-"))
    results: dict = {"benchmark": "mqtt_to_parquet", "messages": args.messages,
                     "payload_bytes": len(payload(123456)), "cpus": os.cpu_count(), "runs": []}
    try:
        broker = start_broker(workdir)
        for qos in args.qos:
            raw = raw_rate(broker, qos, args.messages)
            ours = unsflow_rate(broker, qos, args.messages, workdir)
            results["runs"].append({
                "qos": qos, "raw_mosquitto_sub_msgs_per_s": round(raw),
                "unsflow_msgs_per_s": ours["msgs_per_s"],
                "ratio": round(ours["msgs_per_s"] / raw, 3),
                "unsflow_rows_written": ours["rows"],
                "unsflow_peak_rss_mib": ours["peak_rss_mib"],
            })
    finally:
        stop_broker(workdir)
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
