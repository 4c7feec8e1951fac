"""Scale-out: MQTT -> local Parquet with 1, 2 and 4 `unsflow run` processes sharing a
subscription; where the curve flattens, and why (cores or broker).

Method (one run prints one JSON document):

1. A Mosquitto of its own (``scripts/services.sh`` in a temporary directory, free
   ports), the project's test settings (``max_inflight_messages 1000``, persistence).
2. For each N: N persistent sessions subscribe ``$share/bench/bench/#`` at QoS 1
   (client ids member-N-0..N-1, group benchN) and go offline; M messages (~70-byte JSON) are
   published at QoS 1 into the group. Mosquitto deals a shared subscription's
   messages round robin over its members, offline ones included, so each
   session holds M/N: a backlog measures how fast the members take messages,
   not how fast a publisher can send.
3. N `unsflow run` processes start together, one config (a shared
   subscription, a Parquet target in each process's working directory, as
   pods with their own volumes), each with its client id in UNSFLOW_CLIENT_ID.
   The clock runs from the first "connected to" line until M rows are in
   Parquet (read from the files' footers), i.e. durably written.
4. CPU seconds of each member and of the broker over the run (utime + stime
   from /proc), and how busy the machine's cores were (/proc/stat), name the
   limit where the curve flattens (less than +15 % for twice the processes):
   ``cores`` when the cores were busy (85 % or more), ``broker`` when the
   broker's one thread was. Each member's window is ``--receive-maximum``
   (unsflow's default, 65535): with acknowledgements after durable writes a
   small window caps each connection at window / commit time, which more
   processes would lift without using more CPU.

Run: python benchmarks/scale_out.py [--messages 200000] [--processes 1 2 4]
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

from common import payload, peak_rss_mib  # noqa: E402
from mqtt_to_parquet import count_rows, start_broker, stop_broker  # noqa: E402

from unsflow.testing import end_session, publish  # noqa: E402

TOPIC = "bench/site1/line1/press/vibration"
TICKS = os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def run(broker: dict, broker_pid: int, processes: int, n: int, workdir: Path,
        receive_maximum: int) -> dict:
    root = workdir / f"n{processes}"
    # A group of its own, and (below) its sessions ended after the run: a session left
    # over from another run would be dealt a share of this one's messages.
    shared = f"$share/bench{processes}/bench/#"
    config = {
        "mqtt-broker": {"host": broker["host"], "port": broker["port"], "clean-start": False,
                        "receive-maximum": receive_maximum, "leave-shared-on-stop": False},
        "targets": {"lake": {"type": "s3", "local-path": "lake", "format": "parquet",
                             "batching": {"max-records": 50000, "max-age": 0.5}}},
        "subscriptions": {shared: {"qos": 1, "target": "lake"}},
        "http": {"port": 0},
        "reload": {"interval": 0},
    }
    root.mkdir(parents=True)
    path = root / "config.json"
    path.write_text(json.dumps(config))
    names = [f"member-{processes}-{i}" for i in range(processes)]
    for name in names:
        subprocess.run(["mosquitto_sub", "-h", broker["host"], "-p", str(broker["port"]), "-c",
                        "-i", name, "-q", "1", "-t", shared, "-E"], check=True)
    publish(broker["host"], broker["port"], ((TOPIC, payload(i)) for i in range(n)), qos=1,
            timeout=900)
    procs = []
    for name in names:
        (root / name).mkdir()
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "unsflow.cli", "run", str(path)], cwd=root / name,
            env={**os.environ, "UNSFLOW_CLIENT_ID": name},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    try:
        assert procs[0].stderr is not None
        for line in procs[0].stderr:
            if "connected to" in line:
                break
        t0 = time.perf_counter()
        broker_cpu0 = cpu_seconds(broker_pid)
        machine0 = machine_cpu()
        member_cpu0 = [cpu_seconds(p.pid) for p in procs]
        rows = 0
        while rows < n and time.perf_counter() - t0 < 900:
            time.sleep(0.05)
            rows = sum(count_rows(root / name / "lake") for name in names)
        elapsed = time.perf_counter() - t0
        broker_cpu = cpu_seconds(broker_pid) - broker_cpu0
        machine1 = machine_cpu()
        member_cpu = [cpu_seconds(p.pid) for p in procs]
        peaks = [peak_rss_mib(p.pid) for p in procs]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(60)
        for name in names:
            end_session(broker["host"], broker["port"], name)
    cores = os.cpu_count() or 1
    # Members' CPU includes their start-up (imports, ~1 s each) before the clock ran.
    busy = (sum(member_cpu) + broker_cpu) / (elapsed * cores)
    machine_busy = (machine1[0] - machine0[0]) / max(1, machine1[1] - machine0[1])
    return {
        "processes": processes,
        "msgs_per_s": round(n / elapsed),
        "seconds": round(elapsed, 2),
        "rows": rows,
        "member_cpu_s": [round(c, 1) for c in member_cpu],
        # CPU per message, start-up excluded: what a core carries when it is the pod's own.
        "msgs_per_member_cpu_second": round(
            n / max(1e-9, sum(c - c0 for c, c0 in zip(member_cpu, member_cpu0, strict=True)))),
        "broker_cpu_s": round(broker_cpu, 1),
        "broker_cpu_share_of_one_core": round(broker_cpu / elapsed, 2),
        "cores_busy_with_unsflow_and_broker": round(min(busy, 1.0), 2),
        "cores_busy_machine_wide": round(machine_busy, 2),
        "peak_rss_mib": [round(p, 1) for p in peaks],
    }


def verdict(runs: list[dict]) -> dict:
    """Where the curve stops rising (less than +15 % for a doubling), and the limit there."""
    flat_at = None
    for before, after in zip(runs, runs[1:], strict=False):
        if after["msgs_per_s"] < before["msgs_per_s"] * 1.15:
            flat_at = before
            break
    if flat_at is None:
        return {"flattens_at_processes": None, "limit": "not reached"}
    limit = "cores" if flat_at["cores_busy_machine_wide"] >= 0.85 else (
        "broker" if flat_at["broker_cpu_share_of_one_core"] >= 0.9 else "neither (other)")
    return {"flattens_at_processes": flat_at["processes"], "limit": limit}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--receive-maximum", type=int, default=65535,
                        help="each member's MQTT 5 window (unsflow's default)")
    args = parser.parse_args()
    if not shutil.which("mosquitto_sub"):
        sys.exit("mosquitto_sub not found: run scripts/services.sh up mosquitto first")
    workdir = Path(tempfile.mkdtemp(prefix="unsflow-bench-scale-"))
    results: dict = {"benchmark": "scale_out", "messages": args.messages,
                     "receive_maximum": args.receive_maximum,
                     "payload_bytes": len(payload(123456)), "cpus": os.cpu_count(), "runs": []}
    try:
        broker = start_broker(workdir)
        broker_pid = int((workdir / "services" / "mosquitto" / "mosquitto.pid").read_text())
        for processes in args.processes:
            results["runs"].append(run(broker, broker_pid, processes, args.messages, workdir,
                                       args.receive_maximum))
        results["verdict"] = verdict(results["runs"])
    finally:
        stop_broker(workdir)
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
