"""MQTT -> local Parquet: unsflow against ``mosquitto_sub`` on the same broker, same stream.

Scenarios (each prints one JSON line; ``python -m benchmarks`` runs them all):

- ``backlog-q1-<size>``: a persistent session holds N QoS 1 messages (80 B, 1 KB,
  10 KB JSON), queued while the consumer was offline; the consumer connects and
  drains it. Reference: ``mosquitto_sub -q 1 -c`` draining the same backlog
  (clock: process start to exit, output to /dev/null). unsflow:
  ``examples/local-datalake.json`` (receive-maximum 65535, batching 20,000
  records or 1 s) on this broker; clock from its CONNACK (the "connected to"
  log line: the backlog flows right after it) until the last object holding
  the N rows is in place (the newest object's ctime: written, fsynced,
  renamed), every message acknowledged only after that.
- ``memory-backlog-<N>``: the same drain, 80 B, for 100,000 and 1,000,000
  messages: unsflow's peak RSS (VmHWM) is the figure; memory is bounded by the
  config (max-in-flight, max-in-flight-bytes), not by the backlog.
- ``live-q0``: ``mosquitto_pub -l`` publishes N QoS 0 lines as fast as it can
  while the subscriber is connected. Clock: from the publisher's start until
  the last message is received (mosquitto_sub) or durably written (unsflow).
- ``live-q1``: a lossless publisher (every PUBACK awaited, at most 1,000
  unacknowledged: the broker's window) publishes N QoS 1 messages; same clock.

The lake's ``batching.max-idle`` (default 0.1 s) writes the end of a drained
backlog as soon as the stream stops. For the live scenarios the lake's
``max-age`` is also 0.25 s (the example has 1 s): a stream that ends with less
than a tenth of a flush waiting would otherwise wait for that timer, and the
figure would be the timer, not the throughput.

The broker is a Mosquitto of the benchmark's own (scripts/services.sh on free
ports) with ``queue_qos0_messages`` (so a QoS 0 backlog can exist) and
``set_tcp_nodelay`` (without it the broker's PUBACKs to a publisher wait on
Nagle's algorithm and a windowed publisher crawls at ~20K msg/s).

Run one: python -m benchmarks.mqtt_to_parquet [--only backlog-q1-80B] [--quick]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parents[1]) not in sys.path:  # run as a script, or imported
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # by one as mqtt_to_parquet

from benchmarks.common import (
    REPO,
    TOPIC,
    Broker,
    Measured,
    PeakAnon,
    Unsflow,
    count_rows,
    cpu_seconds,
    end_session,
    free_port,
    make_session,
    mosquitto_sub,
    payload,
    peak_rss_mib,
    publish_backlog,
    wait_child,
)

# queue_qos0_messages: a QoS 0 backlog can exist. set_tcp_nodelay: a windowed publisher
# does not wait on Nagle's algorithm for its PUBACKs. autosave_interval 1800 (Mosquitto's
# default): the test broker saves its whole database every second (for the fault tests),
# which at 10 KB rewrites hundreds of MB during a drain and lands more often in the
# longer of the two drains being compared.
BROKER_CONF = "queue_qos0_messages true\nset_tcp_nodelay true\nautosave_interval 1800"

__all__ = ["BROKER_CONF", "count_rows", "lake_config", "scenarios", "start_broker",
           "stop_broker"]


def start_broker(workdir: Path) -> dict[str, Any]:
    """A broker of its own in ``workdir`` with ``queue_qos0_messages`` (for the scripts that
    manage one themselves: scale_out.py, dashboard_overhead.py; the scenarios here use
    :func:`benchmarks.common.own_broker`); its info.json as a dict."""
    env = {**os.environ, "UNSFLOW_SERVICES_DIR": str(workdir / "services"),
           "UNSFLOW_MQTT_PORT": str(free_port()), "UNSFLOW_MQTTS_PORT": str(free_port()),
           "UNSFLOW_MQTT_EXTRA_CONF": "queue_qos0_messages true"}
    subprocess.run(["bash", str(REPO / "scripts" / "services.sh"), "up", "mosquitto"],
                   env=env, check=True, capture_output=True, text=True)
    return dict(json.loads((workdir / "services" / "mosquitto" / "info.json").read_text()))


def stop_broker(workdir: Path) -> None:
    env = {**os.environ, "UNSFLOW_SERVICES_DIR": str(workdir / "services")}
    subprocess.run(["bash", str(REPO / "scripts" / "services.sh"), "down", "mosquitto"],
                   env=env, check=False, capture_output=True)
SIZES = {"80B": 80, "1KB": 1024, "10KB": 10240}


def lake_config(broker: Broker, client_id: str | None, lake: Path, qos: int,
                max_age: float | None = None) -> dict[str, Any]:
    """examples/local-datalake.json, pointed at this broker and a lake directory."""
    config = json.loads((REPO / "examples" / "local-datalake.json").read_text())
    config["mqtt-broker"].update(host=broker.host, port=broker.port)
    if client_id is None:
        config["mqtt-broker"].pop("client-id", None)
        config["mqtt-broker"]["clean-start"] = True
    else:
        config["mqtt-broker"]["client-id"] = client_id
    target = config["targets"]["datalake"]
    target["local-path"] = str(lake)
    if max_age is not None:
        target["batching"]["max-age"] = max_age
    config["subscriptions"] = {"bench/#": {"qos": qos, "target": "datalake"}}
    return config


def last_object_time(lake: Path) -> float:
    """time.time() at which the newest object was put in place (its ctime: the rename)."""
    return max((f.stat().st_ctime_ns for f in lake.rglob("*.parquet")
                if not f.name.startswith(".")), default=0) / 1e9


def wait_lake(lake: Path, count: int, timeout: float = 600) -> tuple[int, float]:
    """Wait for ``count`` rows in the lake (or no progress for 5 s); (rows, end time)."""
    from benchmarks.common import count_rows

    deadline = time.monotonic() + timeout
    rows, last_change, last = 0, time.monotonic(), -1
    while time.monotonic() < deadline:
        rows = count_rows(lake)
        if rows >= count:
            break
        if rows != last:
            last, last_change = rows, time.monotonic()
        elif time.monotonic() - last_change > 5:
            break
        time.sleep(0.02)
    return rows, last_object_time(lake)


# ------------------------------------------------------------------ backlog


def reference_backlog(broker: Broker, n: int, size: int, qos: int, tag: str) -> Measured:
    cid = f"ref-{tag}-{uuid.uuid4().hex[:8]}"
    make_session(broker, cid, qos)
    publish_backlog(broker, n, size)
    t0, broker0 = time.perf_counter(), cpu_seconds(broker.pid)
    proc = mosquitto_sub(broker, qos, n, client_id=cid)
    cpu, rss = wait_child(proc)
    elapsed = time.perf_counter() - t0
    broker_cpu = cpu_seconds(broker.pid) - broker0
    end_session(broker, cid)
    return Measured(elapsed, n, cpu, rss, {"mosquitto_cpu_s": broker_cpu})


def unsflow_backlog(broker: Broker, n: int, size: int, qos: int, tag: str,
                    workdir: Path, extra: dict[str, Any] | None = None) -> Measured:
    tag = f"{tag}-{uuid.uuid4().hex[:8]}"  # a run of its own: session, lake, config
    cid = f"unsflow-{tag}"
    lake = workdir / f"lake-{tag}"
    make_session(broker, cid, qos)
    publish_backlog(broker, n, size)
    config = lake_config(broker, cid, lake, qos)
    config.update(extra or {})
    run = Unsflow(config, workdir, tag)
    try:
        run.start("connected to")
        t0, cpu0, broker0 = time.time(), cpu_seconds(run.pid), cpu_seconds(broker.pid)
        with PeakAnon(run.pid) as anon:
            rows, end = wait_lake(lake, n)
        cpu = cpu_seconds(run.pid) - cpu0
        broker_cpu = cpu_seconds(broker.pid) - broker0
        peak = peak_rss_mib(run.pid)
    finally:
        run.stop()
    end_session(broker, cid)
    if rows < n:
        raise RuntimeError(f"unsflow wrote {rows} of {n} rows")
    return Measured(end - t0, rows, cpu, peak, {"mosquitto_cpu_s": broker_cpu,
                                                "peak_anon_mib": anon.mib})


# ------------------------------------------------------------------ live


def _publisher(broker: Broker, n: int, size: int, qos: int, lines: Path) -> tuple[Any, float]:
    """Start the publisher; (process, time.time() at which it starts publishing)."""
    if qos == 0:  # as the issue measured it: mosquitto_pub -l, lines from a file
        return subprocess.Popen(["mosquitto_pub", "-h", broker.host, "-p", str(broker.port),
                                 "-t", TOPIC, "-q", "0", "-l"], stdin=lines.open("rb"),
                                stdout=subprocess.DEVNULL), time.time()
    # A Python process: it encodes its packets first, then starts at a set time.
    start_at = time.time() + 1.0 + n / 200_000
    return subprocess.Popen([sys.executable, "-m", "benchmarks.publisher", "--host", broker.host,
                             "--port", str(broker.port), "--count", str(n), "--size", str(size),
                             "--qos", "1", "--window", "1000", "--start-at", str(start_at)],
                            cwd=REPO, stdout=subprocess.PIPE, text=True), start_at


def _lines(workdir: Path, n: int, size: int) -> Path:
    path = workdir / f"lines-{n}-{size}.txt"
    if not path.exists():
        path.write_bytes(b"".join(payload(i, size) + b"\n" for i in range(n)))
    return path


def reference_live(broker: Broker, n: int, size: int, qos: int, workdir: Path) -> Measured:
    # A retained probe tells when mosquitto_sub's subscription is live (it gets the probe
    # first): no -d debug output to slow it down.
    probe = f"bench-probe/{os.getpid()}"
    subprocess.run(["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-t", probe,
                    "-r", "-q", "1", "-m", "probe"], check=True)
    out = workdir / "sub-out.txt"
    args = ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-q", str(qos),
            "-t", "bench/#", "-t", probe, "-C", str(n + 1), "-W", "300"]
    try:
        with out.open("wb") as sink:
            sub = subprocess.Popen(args, stdout=sink)
            deadline = time.monotonic() + 30
            while not out.read_bytes().startswith(b"probe"):
                if time.monotonic() > deadline:
                    raise RuntimeError("mosquitto_sub never subscribed")
                time.sleep(0.005)
            lines = _lines(workdir, n, size)
            pub, t0 = _publisher(broker, n, size, qos, lines)
            cpu, rss = wait_child(sub)
            elapsed = time.time() - t0
            pub.wait(60)
    finally:
        subprocess.run(["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-t", probe,
                        "-r", "-q", "1", "-n"], check=False)
    return Measured(elapsed, n, cpu, rss)


def unsflow_live(broker: Broker, n: int, size: int, qos: int, workdir: Path) -> Measured:
    tag = f"live-q{qos}-{uuid.uuid4().hex[:8]}"
    lake = workdir / f"lake-{tag}"
    config = lake_config(broker, None, lake, qos, max_age=0.25)
    run = Unsflow(config, workdir, tag)
    try:
        run.start("subscribed:")
        lines = _lines(workdir, n, size)
        cpu0 = cpu_seconds(run.pid)
        pub, t0 = _publisher(broker, n, size, qos, lines)
        rows, end = wait_lake(lake, n)
        cpu = cpu_seconds(run.pid) - cpu0
        peak = peak_rss_mib(run.pid)
        pub.wait(60)
    finally:
        run.stop()
    return Measured(end - t0, rows, cpu, peak, {"rows_written": rows})


# ------------------------------------------------------------------ scenarios


def _broker_share(ours: Measured, ref: Measured, n: int) -> dict[str, Any]:
    """Mosquitto's CPU per message on each side; how busy the cores were while unsflow
    drained (its CPU and Mosquitto's over the elapsed time); and the ratio that CPU
    would allow at best, spread perfectly over every core."""
    cpu = ours.cpu_s + ours.extra["mosquitto_cpu_s"]
    cores = os.cpu_count() or 1
    return {"mosquitto_cpu_us_per_msg": round(ours.extra["mosquitto_cpu_s"] / n * 1e6, 2),
            "reference_mosquitto_cpu_us_per_msg": round(ref.extra["mosquitto_cpu_s"] / n * 1e6,
                                                        2),
            "cores_busy": round(cpu / ours.seconds, 2),
            "ratio_ceiling_at_this_cpu": round(ref.seconds / (cpu / cores), 3)}


def _result(name: str, n: int, size: int, ours: Measured, ref: Measured, ref_name: str,
            goal: str, met: bool, **extra: Any) -> dict[str, Any]:
    return {
        "scenario": name, "messages": n, "payload_bytes": len(payload(0, size)),
        "unsflow_msgs_per_s": round(ours.rate), "reference": ref_name,
        "reference_msgs_per_s": round(ref.rate), "ratio": round(ours.rate / ref.rate, 3),
        "unsflow_cpu_s": round(ours.cpu_s, 2), "reference_cpu_s": round(ref.cpu_s, 2),
        "unsflow_cpu_us_per_msg": round(ours.cpu_s / max(1, ours.messages) * 1e6, 2),
        "unsflow_peak_rss_mib": round(ours.peak_rss_mib, 1),
        "reference_peak_rss_mib": round(ref.peak_rss_mib, 1),
        **({"unsflow_peak_anon_mib": round(ours.extra["peak_anon_mib"], 1)}
           if "peak_anon_mib" in ours.extra else {}),
        **(_broker_share(ours, ref, n)
           if "mosquitto_cpu_s" in ours.extra and "mosquitto_cpu_s" in ref.extra else {}),
        "goal": goal, "met": met, **extra,
    }


def backlog(broker: Broker, workdir: Path, size_name: str, n: int) -> dict[str, Any]:
    size = SIZES[size_name]
    tag = f"q1-{size_name}"
    ref = reference_backlog(broker, n, size, 1, tag)
    ours = unsflow_backlog(broker, n, size, 1, tag, workdir)
    ratio = ours.rate / ref.rate
    return _result(f"mqtt-parquet-backlog-q1-{size_name}", n, size, ours, ref,
                   "mosquitto_sub -q 1 -c", ">= 0.6 of the reference", ratio >= 0.6)


def memory(broker: Broker, workdir: Path, n: int, limit_mib: float) -> dict[str, Any]:
    tag = f"mem-{n}"
    ref = reference_backlog(broker, n, 80, 1, tag)
    ours = unsflow_backlog(broker, n, 80, 1, tag, workdir)
    return _result(f"memory-backlog-{n}", n, 80, ours, ref, "mosquitto_sub -q 1 -c",
                   f"peak RSS < {limit_mib:g} MiB", ours.peak_rss_mib < limit_mib)


def live(broker: Broker, workdir: Path, qos: int, n: int) -> dict[str, Any]:
    ref = reference_live(broker, n, 80, qos, workdir)
    ours = unsflow_live(broker, n, 80, qos, workdir)
    ratio = ours.rate / ref.rate
    if qos == 0:
        return _result("mqtt-parquet-live-q0", n, 80, ours, ref,
                       "mosquitto_sub -q 0 (mosquitto_pub -l publishing)",
                       ">= 0.9 of the reference", ratio >= 0.9)
    return _result("mqtt-parquet-live-q1", n, 80, ours, ref,
                   "mosquitto_sub -q 1 (a publisher awaiting every PUBACK, window 1000)",
                   "no more than 5% slower than the reference", ratio >= 0.95)


def environment(workdir: Path) -> Any:
    """What the scenarios run against: a broker of their own."""
    from benchmarks.common import own_broker

    return own_broker(BROKER_CONF)


def scenarios(quick: bool = False) -> list[tuple[str, Any]]:
    """(name, function(broker, workdir) -> result) for every scenario of this module."""
    k = 10 if quick else 1
    return [
        ("backlog-q1-80B", lambda b, w: backlog(b, w, "80B", 300_000 // k)),
        ("backlog-q1-1KB", lambda b, w: backlog(b, w, "1KB", 100_000 // k)),
        ("backlog-q1-10KB", lambda b, w: backlog(b, w, "10KB", 20_000 // k)),
        ("live-q0", lambda b, w: live(b, w, 0, 600_000 // k)),
        ("live-q1", lambda b, w: live(b, w, 1, 600_000 // k)),
        ("memory-100k", lambda b, w: memory(b, w, 100_000 // k, 150)),
        ("memory-1m", lambda b, w: memory(b, w, 1_000_000 // k, 300)),
    ]


def warm_up(broker: Broker, workdir: Path) -> None:
    """A small drain by both sides first: caches, page cache, imports, the broker's heap."""
    reference_backlog(broker, 20_000, 80, 1, "warm")
    unsflow_backlog(broker, 20_000, 80, 1, "warm", workdir)


if __name__ == "__main__":
    from benchmarks.__main__ import main

    main(default_modules=["mqtt_to_parquet"])
