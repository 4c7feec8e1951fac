"""See unsflow's main job work: UNS messages in, Parquet rows out, nothing lost.

Starts `unsflow run examples/local-datalake.json` (the broker from
EDGE_BROKER_HOST / EDGE_MQTT_PORT, default localhost:1883), publishes sensor
readings of a few machines under UNS topics at QoS 1, waits until every one
is a row under ./datalake, prints what landed, stops unsflow with SIGTERM and ends the example's
persistent MQTT session (so the broker does not queue for it afterwards).

Run: python scripts/quickstart.py [--messages 5000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "local-datalake.json"


def _shown(path: Path) -> str:
    """A path as the user can type it here: relative to the current directory when inside."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# The interpreter and command of this checkout's .venv, as the user types them without
# activating it (scripts/setup.sh puts unsflow there).
PYTHON = _shown(Path(sys.executable))
EXAMPLE_ARG = _shown(EXAMPLE)
unsflow = _shown(Path(sys.executable).with_name("unsflow"))


def readings(n: int, run_id: str):
    rng = random.Random(7)
    machines = [("line1", "press-01"), ("line1", "press-02"), ("line2", "extruder-01")]
    for seq in range(n):
        line, machine = machines[seq % len(machines)]
        metric, unit, base = (("vibration", "mm/s", 14.0) if seq % 2 else ("temperature", "C", 50.0))
        topic = f"acme/plant1/assembly/{line}/{machine}/{metric}"
        payload = {"run": run_id, "seq": seq, "value": round(base + rng.uniform(-4, 4), 3),
                   "unit": unit, "machine": machine, "ts": int(time.time() * 1000)}
        yield topic, json.dumps(payload).encode()


def duckdb_hint() -> str:
    """A shell command that reads the lake with DuckDB (installed by scripts/setup.sh)."""
    sql = ("select _topic, count(*) as rows, round(avg(try_cast(value as double)), 2) as avg "
           "from read_parquet('datalake/**/*.parquet', hive_partitioning=true, "
           "union_by_name=true) group by 1 order by 1")
    return f"{PYTHON} -c \"import duckdb; duckdb.sql(\\\"{sql}\\\").show()\""


def main() -> None:
    parser = argparse.ArgumentParser(description="unsflow quick start")
    parser.add_argument("--messages", type=int, default=5000)
    args = parser.parse_args()
    from unsflow.lake import open_lake
    from unsflow.testing import publish

    host = os.environ.get("EDGE_BROKER_HOST", "localhost")
    port = int(os.environ.get("EDGE_MQTT_PORT", "1883"))
    run_id = time.strftime("%Y%m%dT%H%M%S")
    print(f"starting: unsflow run examples/local-datalake.json (broker {host}:{port})")
    proc = subprocess.Popen([sys.executable, "-m", "unsflow.cli", "run", str(EXAMPLE)],
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "subscribed:" in line:
                break
            if "error" in line.lower():
                sys.stderr.write(line)
        else:
            sys.exit("unsflow exited before connecting; is the broker running? "
                     "(bash scripts/services.sh up mosquitto)")
        t0 = time.perf_counter()
        sent = publish(host, port, readings(args.messages, run_id), qos=1)
        print(f"published {sent} QoS 1 readings in {time.perf_counter() - t0:.1f}s")
        lake = Path("datalake")
        rows: list[dict] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if any(lake.rglob("*.parquet")):
                table = open_lake(lake).to_table()
                rows = [r for r in table.to_pylist() if r.get("run") == run_id]
                if len({r["seq"] for r in rows}) >= sent:
                    break
            time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(40)
        # The example keeps a persistent session subscribed to '#' (so a restart
        # loses nothing). Left behind, the broker would queue every message
        # published from now on for a client that never comes back: end it,
        # as the README says to when you stop for good.
        print(f"ending the example's persistent session: {unsflow} session end {EXAMPLE_ARG}")
        subprocess.run([sys.executable, "-m", "unsflow.cli", "session", "end", str(EXAMPLE)],
                       check=False)
    seqs = {r["seq"] for r in rows}
    print(f"rows written under ./datalake for this run: {len(rows)} "
          f"({len(seqs)} distinct of {sent} published, {len(rows) - len(seqs)} duplicates)")
    by_topic: dict[str, int] = {}
    for r in rows:
        by_topic[r["_topic"]] = by_topic.get(r["_topic"], 0) + 1
    for topic, count in sorted(by_topic.items()):
        print(f"  {count:6d}  {topic}")
    if rows:
        sample = {k: rows[-1][k] for k in ("_topic", "_received_at", "machine", "value", "unit", "date", "hour")}
        print("a row:", sample)
    print(f"query it yourself: {duckdb_hint()}")
    sys.exit(0 if len(seqs) == sent else 1)


if __name__ == "__main__":
    main()
