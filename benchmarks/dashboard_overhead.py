"""Pipeline throughput at 10,000 msg/s, with and without a dashboard page open.

Method (one run prints one JSON document):

1. A broker of its own (``scripts/services.sh`` in a temporary directory, free ports).
2. The load: ``--rate`` msg/s (default 10,000) for ``--seconds``, JSON sensor readings
   spread over ``--topics`` UNS topics (machines x vibration/temperature), published at
   QoS 1 by one ``mosquitto_pub -l`` per topic (the C client, so that the load generator
   takes little of the two cores the pipeline, the broker, the dashboard and the browser
   share), fed paced lines by a thread of this script.
3. The pipeline: ``unsflow run`` subscribed to ``bench/#`` at QoS 1, writing every
   reading to a local Parquet lake (acknowledged after the durable write).
4. Each round runs the same load twice on a fresh pipeline and lake: *without* (the
   pipeline alone) and *with* (``unsflow dashboard --config`` on the same pipeline, its
   own QoS 0 subscription to ``bench/#``, and Debian's Chromium with the Line page open,
   drawing one chart per sensor, throughout).
5. Measured per run, from the pipeline's own ``/metrics``
   (``unsflow_source_acked_total``, scraped every 0.5 s) and ``/proc``:
   - ``throughput_msgs_per_s``: messages acknowledged / seconds from the first to the
     last acknowledgement (the load's start to the pipeline's catch-up);
   - ``steady_msgs_per_s``: the acknowledgement rate in the middle 60% of that span;
   - ``lag_s``: how long after the publishers finished the pipeline had acknowledged
     everything;
   - ``pipeline_cpu_s_per_100k``: the pipeline process's CPU seconds per 100,000
     messages; the same for the dashboard and the browser (``with`` runs).
6. ``drop_percent``: 100 x (1 - median(with) / median(without)) of the throughput.

Run: python benchmarks/dashboard_overhead.py [--rate 10000] [--seconds 30] [--rounds 2]
(needs mosquitto_pub and chromium: scripts/services.sh up mosquitto chromium)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO / "src"))

from common import free_port
from mqtt_to_parquet import start_broker, stop_broker

CLI = [sys.executable, "-m", "unsflow.cli"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its children that it waited for."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / ticks


def browser_cpu_seconds() -> float:
    """CPU seconds of this process's descendants that are Chromium or Playwright's driver."""
    total = 0.0
    todo = [os.getpid()]
    while todo:
        p = todo.pop()
        try:
            children = [int(c) for c in
                        Path(f"/proc/{p}/task/{p}/children").read_text().split()]
            cmdline = Path(f"/proc/{p}/cmdline").read_bytes()
            if p != os.getpid() and (b"chrom" in cmdline or b"playwright" in cmdline):
                total += cpu_seconds(p)
        except OSError:
            continue
        todo += children
    return total


class Load(threading.Thread):
    """``rate`` msg/s for ``seconds`` over ``topics``: one ``mosquitto_pub -l -q 1`` per topic."""

    def __init__(self, broker: dict, topics: int, rate: float, seconds: float, run: str) -> None:
        super().__init__(name="load", daemon=True)
        self.broker, self.rate, self.seconds = broker, rate, seconds
        machines = max(1, topics // 2)
        self.topics = [f"bench/acme/plant1/area1/line{m % 4 + 1}/machine-{m}/{sensor}"
                       for m in range(machines) for sensor in ("vibration", "temperature")]
        self.run_name = run
        self.sent = 0
        self.duration = 0.0  # seconds the paced publishing took
        self.done = threading.Event()

    def run(self) -> None:
        procs = [subprocess.Popen(
            ["mosquitto_pub", "-h", self.broker["host"], "-p", str(self.broker["port"]), "-q",
             "1", "-l", "-t", topic, "-i", f"bench-{self.run_name}-{i}"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for i, topic in enumerate(self.topics)]
        try:
            time.sleep(1.0)  # every client connected before the clock starts
            total = int(self.rate * self.seconds)
            t0 = time.monotonic()
            n = len(procs)
            while self.sent < total:
                due = min(total, int(self.rate * (time.monotonic() - t0)))
                ms = int(time.time() * 1000)
                while self.sent < due:
                    i = self.sent % n
                    value = 12 + (self.sent % 97) / 10 if i % 2 == 0 else 50 + (self.sent % 31) / 10
                    stdin = procs[i].stdin
                    assert stdin is not None
                    stdin.write(b'{"value": %.1f, "unit": "%s", "timestamp": %d}\n'
                                % (value, b"mm/s" if i % 2 == 0 else b"C", ms))
                    self.sent += 1
                for proc in procs:
                    assert proc.stdin is not None
                    proc.stdin.flush()
                time.sleep(0.02)
            self.duration = time.monotonic() - t0
            self.done.set()
            time.sleep(3.0)  # mosquitto_pub drops what is still queued when its input ends
        finally:
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.close()
            for proc in procs:
                proc.wait(30)


def acked(url: str) -> float:
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("unsflow_source_acked_total{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_http(url: str, timeout: float = 60) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with opener.open(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def one_run(broker: dict, workdir: Path, name: str, args: argparse.Namespace,
            with_dashboard: bool, chromium: str | None) -> dict[str, Any]:
    run_dir = workdir / name
    run_dir.mkdir()
    metrics_port = free_port()
    config = {
        "mqtt-broker": {"host": broker["host"], "port": broker["port"]},
        "subscriptions": {"bench/#": {"qos": 1, "target": "lake"}},
        "targets": {"lake": {"type": "s3", "local-path": str(run_dir / "lake"),
                             "format": "parquet",
                             "batching": {"max-records": 50000, "max-age": 0.5}}},
        "dead-letter": {"path": str(run_dir / "dead.jsonl")},
        "spool": {"path": str(run_dir / "spool")},
        "http": {"host": "127.0.0.1", "port": metrics_port},
    }
    path = run_dir / "pipeline.json"
    path.write_text(json.dumps(config))
    logs = []

    def start(args_: list[str], log: str) -> subprocess.Popen[bytes]:
        out = open(run_dir / log, "wb")  # noqa: SIM115 - closed below
        logs.append(out)
        return subprocess.Popen(args_, stdout=out, stderr=subprocess.STDOUT, cwd=run_dir)

    pipeline = start([*CLI, "run", str(path)], "pipeline.log")
    metrics = f"http://127.0.0.1:{metrics_port}/metrics"
    dashboard = browser = pw = page = None
    try:
        wait_http(f"http://127.0.0.1:{metrics_port}/readyz")
        if with_dashboard:
            dash_port = free_port()
            dashboard = start([*CLI, "dashboard", "--config", str(path), "--port",
                               str(dash_port)], "dashboard.log")
            wait_http(f"http://127.0.0.1:{dash_port}/healthz")
            from playwright.sync_api import sync_playwright

            pw = sync_playwright().start()
            flags = ["--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--no-first-run", "--disable-gpu"]
            if os.geteuid() == 0:
                flags.append("--no-sandbox")
            browser = pw.chromium.launch(executable_path=chromium, args=flags)
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(f"http://127.0.0.1:{dash_port}/")
        broker_pid = int((workdir / "services" / "mosquitto" / "mosquitto.pid").read_text())
        broker_cpu0 = cpu_seconds(broker_pid)
        load0 = os.getloadavg()[0]
        cpu0 = cpu_seconds(pipeline.pid)
        dash_cpu0 = cpu_seconds(dashboard.pid) if dashboard else 0.0
        browser_cpu0 = browser_cpu_seconds() if browser is not None else 0.0
        base = acked(metrics)
        samples: list[tuple[float, float]] = []
        load = Load(broker, args.topics, args.rate, args.seconds, name)
        t0 = time.monotonic()
        load.start()
        total = int(args.rate * args.seconds)
        published_at = None
        stable_since = None
        last_value = -1.0
        while True:
            now = time.monotonic()
            value = acked(metrics) - base
            samples.append((now - t0, value))
            if published_at is None and load.done.is_set():
                published_at = now - t0
            if value != last_value:
                stable_since, last_value = now, value
            if value >= total or (published_at is not None and now - stable_since > 5):
                break
            if now - t0 > args.seconds * 5 + 60:
                raise RuntimeError(f"{name}: {value:.0f} of {total} acknowledged in time")
            if page is not None:
                page.wait_for_timeout(500)  # lets Playwright process the page's events
            else:
                time.sleep(0.5)
        total = int(last_value)
        cpu = cpu_seconds(pipeline.pid) - cpu0
        broker_cpu = cpu_seconds(broker_pid) - broker_cpu0
        first = next(t for t, v in samples if v > 0)
        last = next(t for t, v in samples if v >= total)
        assert published_at is not None
        span = last - first
        lo, hi = first + 0.2 * span, first + 0.8 * span
        mid = [(t, v) for t, v in samples if lo <= t <= hi]
        steady = (mid[-1][1] - mid[0][1]) / (mid[-1][0] - mid[0][0]) if len(mid) > 1 else 0.0
        out: dict[str, Any] = {
            "mode": "with" if with_dashboard else "without", "messages": total,
            "messages_offered": load.sent,
            "throughput_msgs_per_s": round(total / span), "steady_msgs_per_s": round(steady),
            "lag_s": round(last - published_at, 2),
            "publish_s": round(published_at, 2),
            "offered_msgs_per_s": round(load.sent / load.duration),
            "pipeline_cpu_s_per_100k": round(cpu / total * 100_000, 2),
            "broker_cpu_s_per_100k": round(broker_cpu / total * 100_000, 2),
            "loadavg_1min_before_after": [round(load0, 1), round(os.getloadavg()[0], 1)],
        }
        if dashboard is not None:
            out["dashboard_cpu_s_per_100k"] = round(
                (cpu_seconds(dashboard.pid) - dash_cpu0) / total * 100_000, 2)
            out["browser_cpu_s_per_100k"] = round(
                (browser_cpu_seconds() - browser_cpu0) / total * 100_000, 2)
            charts = page.query_selector_all(".chart") if page is not None else []
            out["charts_on_page"] = len(charts)
        return out
    finally:
        if browser is not None:
            browser.close()
        if pw is not None:
            pw.stop()
        for proc in [*([dashboard] if dashboard else []), pipeline]:
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs:
            log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=10_000, help="offered msg/s in all")
    parser.add_argument("--seconds", type=float, default=30, help="seconds of load per run")
    parser.add_argument("--rounds", type=int, default=2, help="(without, with) pairs")
    parser.add_argument("--topics", type=int, default=100,
                        help="sensor topics (machines x vibration and temperature)")
    args = parser.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None or shutil.which("mosquitto_pub") is None:
        sys.exit("chromium or mosquitto_pub not found: scripts/services.sh up mosquitto chromium")
    workdir = Path(tempfile.mkdtemp(prefix="unsflow-bench-dash-"))
    runs: list[dict[str, Any]] = []
    try:
        broker = start_broker(workdir)
        for r in range(args.rounds):
            for with_dashboard in (False, True):
                name = f"round{r + 1}-{'with' if with_dashboard else 'without'}"
                runs.append(one_run(broker, workdir, name, args, with_dashboard, chromium))
                print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    finally:
        stop_broker(workdir)
        shutil.rmtree(workdir, ignore_errors=True)

    def median(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in runs if r["mode"] == mode)

    without, with_ = (median(m, "throughput_msgs_per_s") for m in ("without", "with"))
    print(json.dumps({
        "benchmark": "dashboard_overhead", "rate": args.rate, "seconds": args.seconds,
        "topics": args.topics, "cpus": os.cpu_count(),
        "throughput_without_msgs_per_s": without, "throughput_with_msgs_per_s": with_,
        "drop_percent": round(100 * (1 - with_ / without), 2),
        "pipeline_cpu_s_per_100k_without": median("without", "pipeline_cpu_s_per_100k"),
        "pipeline_cpu_s_per_100k_with": median("with", "pipeline_cpu_s_per_100k"),
        "runs": runs,
    }, indent=2))


if __name__ == "__main__":
    main()
