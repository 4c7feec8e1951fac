"""Running `unsflow` as a user does, and reading what it wrote."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any


class ChunkedPublisher(threading.Thread):
    """Publishes ``total`` numbered QoS 1 messages to ``topic`` in chunks, pausing between
    them, so that publishing goes on before, during and after a fault.

    ``published`` counts what the broker acknowledged so far (each chunk is one
    :func:`unsflow.testing.publish_numbered` call, which waits for every PUBACK).
    """

    def __init__(self, host: str, port: int, topic: str, total: int, *,
                 chunk: int = 500, pause: float = 0.1) -> None:
        super().__init__(name=f"publisher-{topic}", daemon=True)
        self.host, self.port, self.topic = host, port, topic
        self.total, self.chunk, self.pause = total, chunk, pause
        self.published = 0

    def run(self) -> None:
        from unsflow.testing import publish_numbered

        for start in range(0, self.total, self.chunk):
            self.published += publish_numbered(self.host, self.port, self.topic,
                                               min(self.chunk, self.total - start), qos=1,
                                               start=start)
            time.sleep(self.pause)


class UnsflowProcess:
    """`unsflow run ...` as a subprocess; stderr kept for assertions and failure output."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.args = args
        self.cwd = cwd
        self.env = {**os.environ, **env}
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._reader: threading.Thread | None = None

    def start(self) -> "UnsflowProcess":
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "unsflow.cli", *self.args], cwd=self.cwd, env=self.env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.proc and self.proc.stdout
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for_log(self, needle: str, timeout: float = 30.0, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(needle in line for line in self.lines) >= count:
                return
            if self.proc and self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {needle!r} in unsflow output within {timeout}s:\n{self.output[-4000:]}")

    def kill9(self) -> None:
        assert self.proc
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 40.0) -> int:
        assert self.proc
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            if self._reader:
                self._reader.join(5)


def read_rows(root: Path, columns: list[str] | None = None) -> list[dict[str, Any]]:
    """Every row under ``root`` as one Hive-partitioned Parquet table."""
    from unsflow.lake import open_lake

    if not any(root.rglob("*.parquet")):
        return []
    return open_lake(root).to_table(columns=columns).to_pylist()


def wait_for_rows(root: Path, predicate, timeout: float = 60.0, column: str = "seq") -> list[dict]:
    deadline = time.monotonic() + timeout
    rows: list[dict] = []
    while time.monotonic() < deadline:
        try:
            rows = read_rows(root)
        except (OSError, ValueError):  # a file appearing mid-scan
            rows = []
        if predicate(rows):
            return rows
        time.sleep(0.3)
    return rows


# --- The fault suite's report -------------------------------------------------
#
# Every fault scenario (issue 5) records what it published and where each
# message ended up; pytest prints the table at the end of the run
# (tests/conftest.py) and writes it to build/fault-report.json.

FAULT_REPORT: list[dict[str, Any]] = []


def dead_letter_seqs(path: Path) -> Counter:
    """``seq`` of every dead-lettered message whose original payload is a numbered JSON record."""
    import base64
    import json

    counts: Counter = Counter()
    if not path.exists():
        return counts
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)
        raw = entry.get("payload")
        if raw is None and entry.get("payload_base64") is not None:
            raw = base64.b64decode(entry["payload_base64"]).decode("utf-8", "replace")
        try:
            seq = json.loads(raw).get("seq") if raw else None
        except (ValueError, AttributeError):
            seq = None
        if isinstance(seq, int):
            counts[seq] += 1
    return counts


def report_scenario(name: str, published: int, delivered: Counter,
                    dead_lettered: Counter | None = None, *, expected: set[int] | None = None,
                    note: str = "") -> dict[str, Any]:
    """Record one scenario's outcome and assert that nothing acknowledged was lost.

    ``delivered`` and ``dead_lettered`` count each ``seq`` found in the output
    and in the dead letter; ``expected`` is the set of seqs that must be in one
    of them (default ``range(published)``). Duplicates are counted, not failed.
    """
    dead_lettered = dead_lettered or Counter()
    expected = set(range(published)) if expected is None else expected
    found = set(delivered) | set(dead_lettered)
    lost = sorted(expected - found)
    entry = {
        "scenario": name,
        "published": published,
        "delivered": len(set(delivered) & expected),
        "dead_lettered": len(set(dead_lettered) & expected),
        "duplicated": sum(c - 1 for c in delivered.values() if c > 1)
                      + sum(c - 1 for c in dead_lettered.values() if c > 1),
        "lost": len(lost),
        "note": note,
    }
    FAULT_REPORT.append(entry)
    print(f"\nfault scenario {name}: " + " ".join(f"{k}={v}" for k, v in entry.items()
                                                  if k != "scenario"))
    assert not lost, f"{name}: {len(lost)} acknowledged messages lost, e.g. {lost[:20]}"
    return entry
