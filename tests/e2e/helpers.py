"""Running `unsflow` as a user does, and reading what it wrote."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any


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
    from unsflow.targets.object_store import open_lake

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
