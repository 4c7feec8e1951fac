"""Where unsflow's CPU goes while it drains a QoS 1 backlog into local Parquet (py-spy).

``python -m benchmarks.profile [--messages 300000] [--size 80] [--native] [--out FILE]``

A broker of its own; a persistent session holding N QoS 1 messages (JSON of ``--size``
bytes, 80 by default);
``unsflow run`` on examples/local-datalake.json (as the backlog benchmark) under
``py-spy record`` (200 samples/s; a sample is one thread's stack, a thread
waiting for the GIL counts in the function it waits in). Start-up (imports,
component start) is left out. Prints, and writes to ``--out``: the drain rate,
the CPU microseconds per message, and the functions by share of samples, on
their own (self) and with what they call (inclusive).

Needs py-spy (``pip install py-spy``). The figures of earlier runs are in
benchmarks/profiles/ (before.txt: the code of issue 14's start, commit dd219bd).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    REPO,
    Unsflow,
    count_rows,
    cpu_seconds,
    end_session,
    make_session,
    own_broker,
    publish_backlog,
)
from benchmarks.mqtt_to_parquet import BROKER_CONF, lake_config


def aggregate(raw: Path, top: int = 30) -> str:
    """Self and inclusive shares per function (file, not line) of py-spy's raw output."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [f for f in stack.split(";")[1:]]  # without the thread
        if any("_find_and_load" in f or "Pipeline.start" in f for f in frames) or not frames:
            continue
        frames = [f.rsplit(":", 1)[0] + ")" if f.endswith(")") and ":" in f else f
                  for f in frames]
        n = int(count)
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    lines = [f"samples: {total}", "", "self (the function's own code):"]
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in own.most_common(top)]
    lines += ["", "inclusive (with what it calls):"]
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in incl.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--size", type=int, default=80, help="payload bytes (80, 1024, 10240)")
    parser.add_argument("--native", action="store_true",
                        help="with native frames (C, Rust: pyarrow, zstd, the compiled core)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--src", type=Path, default=None,
                        help="profile the unsflow package of another checkout's src/ (e.g. "
                        "`git archive dd219bd src | tar -x -C /tmp/before` for the 'before')")
    args = parser.parse_args()
    n = args.messages
    workdir = Path(tempfile.mkdtemp(prefix="unsflow-profile-"))
    raw = workdir / "profile"
    os.environ["UNSFLOW_BENCH_PROFILE"] = str(raw)
    if args.native:
        os.environ["UNSFLOW_BENCH_PROFILE_NATIVE"] = "1"
    with own_broker(BROKER_CONF) as broker:
        cid = f"profile-{os.getpid()}"
        lake = workdir / "lake"
        make_session(broker, cid, 1)
        publish_backlog(broker, n, args.size)
        config = lake_config(broker, cid, lake, 1)
        env = {"PYTHONPATH": str(args.src.resolve())} if args.src else None
        run = Unsflow(config, workdir, "drain", env)
        try:
            run.start("connected to")
            t0, cpu0 = time.perf_counter(), cpu_seconds(run.pid)
            while count_rows(lake) < n and time.perf_counter() - t0 < 600:
                time.sleep(0.02)
            elapsed = time.perf_counter() - t0
            cpu = cpu_seconds(run.pid) - cpu0
        finally:
            run.stop()
            end_session(broker, cid)
    summary = aggregate(Path(f"{raw}.drain.txt"))
    shutil.rmtree(workdir, ignore_errors=True)
    head = (f"unsflow draining {n} QoS 1 messages ({args.size} B) into Parquet: {n / elapsed:,.0f} msg/s, "
            f"{cpu / n * 1e6:.2f} CPU us/msg, load average {os.getloadavg()[0]:.1f}\n"
            f"code: {args.src or 'commit ' + os.popen(f'git -C {REPO} rev-parse --short HEAD').read().strip()}\n")
    text = head + "\n" + summary + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
