"""The figures of ``python -m benchmarks`` runs as a Markdown table (for benchmarks/README.md).

``python -m benchmarks.table [build/benchmarks.jsonl] [--since 2026-12-01T23:00:00]``

One row per scenario: unsflow's and the reference's messages/s and their ratio as the
median of the runs, with the range of the ratio across runs; p99 for latency scenarios;
peak RSS and CPU microseconds per message; whether the goal was met in every run.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", type=Path, default=REPO / "build" / "benchmarks.jsonl")
    parser.add_argument("--since", default="", help="only runs at or after this time (ISO)")
    args = parser.parse_args()
    runs: dict[str, list[dict]] = defaultdict(list)
    for line in args.file.read_text().splitlines():
        row = json.loads(line)
        if "error" in row or row.get("at", "") < args.since:
            continue
        runs[row["scenario"]].append(row)
    print("| scenario | unsflow | reference | ratio (median, range) | p99 | peak RSS | "
          "CPU/msg | goal | met |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, rows in runs.items():
        med = statistics.median
        if "p99_ms" in rows[0]:
            p99 = [r["p99_ms"] for r in rows]
            print(f"| {name} | {rows[0]['rate_in_msgs_per_s']:,} msg/s in, p50 "
                  f"{med([r['p50_ms'] for r in rows]):.1f} ms | - | - | {med(p99):.1f} ms "
                  f"({min(p99):.1f}-{max(p99):.1f}) | {med([r['unsflow_peak_rss_mib'] for r in rows]):.0f} MiB | "
                  f"{med([r['unsflow_cpu_us_per_msg'] for r in rows]):.1f} µs | {rows[0]['goal']} | "
                  f"{_met(rows)} |")
            continue
        ratios = [r["ratio"] for r in rows]
        print(f"| {name} | {med([r['unsflow_msgs_per_s'] for r in rows]):,.0f} msg/s | "
              f"{med([r['reference_msgs_per_s'] for r in rows]):,.0f} msg/s | "
              f"{med(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) | - | "
              f"{med([r['unsflow_peak_rss_mib'] for r in rows]):.0f} MiB | "
              f"{med([r['unsflow_cpu_us_per_msg'] for r in rows]):.1f} µs | {rows[0]['goal']} | "
              f"{_met(rows)} |")


def _met(rows: list[dict]) -> str:
    met = [r.get("met") for r in rows]
    if all(m is None for m in met):
        return "-"
    return f"{sum(bool(m) for m in met)} of {len(met)} runs"


if __name__ == "__main__":
    main()
