"""Every benchmark scenario in one run: ``python -m benchmarks``.

Each scenario measures unsflow and its reference in the same run (after a warm-up
of both), and prints one JSON line: messages/s of both, their ratio, p50/p99 where
latency is the figure, peak RSS and CPU seconds, the goal and whether it was met,
and the machine's load average (other work on a shared machine moves absolute
figures; the ratio is the contract). Lines are also appended to
``build/benchmarks.jsonl``.

    python -m benchmarks                      # everything (about 3 minutes on 2 cores)
    python -m benchmarks --only live-q0 backlog-q1-80B
    python -m benchmarks --only mqtt_to_kafka --repeat 3
    python -m benchmarks --quick              # a tenth of the messages: a smoke run
    python -m benchmarks --list

Modules: mqtt_to_parquet (backlog, live, memory), mqtt_to_kafka, alert_latency.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULES = ["mqtt_to_parquet", "mqtt_to_kafka", "alert_latency"]


def main(default_modules: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", default=[],
                        help="scenario or module names (default: all)")
    parser.add_argument("--quick", action="store_true", help="a tenth of the messages")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each scenario")
    parser.add_argument("--no-warm-up", action="store_true")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = parser.parse_args()
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    modules = default_modules or MODULES
    out = REPO / "build" / "benchmarks.jsonl"
    out.parent.mkdir(exist_ok=True)
    failed = False
    for name in modules:
        module = importlib.import_module(f"benchmarks.{name}")
        chosen = [(s, fn) for s, fn in module.scenarios(args.quick)
                  if not args.only or s in args.only or name in args.only]
        if args.list:
            for s, _ in chosen:
                print(f"{name}: {s}")
            continue
        if not chosen:
            continue
        workdir = Path(tempfile.mkdtemp(prefix=f"unsflow-bench-{name}-"))
        try:
            with module.environment(workdir) as env:
                if not args.no_warm_up:
                    module.warm_up(env, workdir)
                for scenario, fn in chosen:
                    for run in range(args.repeat):
                        started = time.time()
                        try:
                            result = fn(env, workdir)
                        except Exception as exc:  # one scenario failing must not hide the others
                            traceback.print_exc()
                            result = {"scenario": scenario, "error": f"{type(exc).__name__}: {exc}"}
                            failed = True
                        result.update(module=name, run=run + 1, load_avg_1m=round(os.getloadavg()[0], 2),
                                      seconds=round(time.time() - started, 1),
                                      at=time.strftime("%Y-%m-%dT%H:%M:%S"))
                        line = json.dumps(result)
                        print(line, flush=True)
                        with out.open("a") as f:
                            f.write(line + "\n")
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
