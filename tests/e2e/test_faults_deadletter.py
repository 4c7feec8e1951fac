"""Fault scenario 10: the dead letter cannot be written (a read-only or full disk) mid-stream.

`unsflow run` (parse JSON strictly, then Parquet on local disk) takes a
numbered QoS 1 stream in which every tenth message is bad, so the dead letter
is written all along. Mid-stream its directory becomes read-only (a remounted
tmpfs; without root, a directory without write permission) or full (a tiny
tmpfs filled up). Then:

- the batch that needs the dead letter waits, retried, and so does every
  later acknowledgement of the source (they go in order): /readyz answers 503
  naming the dead letter and the error, ``unsflow_dead_letter_failing`` is 1,
  and the acknowledged count stops growing (backpressure; the broker holds the
  rest);
- once the directory is writable again, the pipeline goes on by itself:
  /readyz 200, every good message a row, every bad one in the dead letter,
  nothing lost.
"""

from __future__ import annotations

import collections
import errno
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import _free_ports
from tests.e2e.helpers import (
    UnsflowProcess,
    dead_letter_seqs,
    read_rows,
    report_scenario,
    wait_for_rows,
)
from tests.e2e.test_faults_spool import metric, readyz, settled, wait_until
from unsflow.testing import publish

pytestmark = pytest.mark.e2e

TOTAL = 4000
CHUNK = 200
ROOT = os.geteuid() == 0


def payload(seq: int) -> bytes:
    # Every tenth is bad for the strict parser (NaN is not JSON) yet shows its seq.
    value = "NaN" if seq % 10 == 9 else f"{seq * 0.5}"
    return f'{{"seq": {seq}, "value": {value}}}'.encode()


class Publisher(threading.Thread):
    """``TOTAL`` messages in chunks, paced, every PUBACK awaited; ``published`` counts them."""

    def __init__(self, broker, topic: str) -> None:
        super().__init__(daemon=True)
        self.broker, self.topic, self.published = broker, topic, 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for start in range(0, TOTAL, CHUNK):
                self.published += publish(
                    self.broker.host, self.broker.port,
                    ((self.topic, payload(s)) for s in range(start, start + CHUNK)), qos=1,
                    timeout=300)
                time.sleep(0.3)
        except Exception as exc:  # noqa: BLE001 - reported by the test, not lost in a thread
            self.error = exc


class DeadLetterDisk:
    """The dead letter's directory, and how it is made unwritable and writable again."""

    def __init__(self, directory: Path, fault: str) -> None:
        self.directory, self.fault = directory, fault
        self.mounted = False

    def prepare(self) -> None:
        self.directory.mkdir(parents=True)
        if ROOT:
            run = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs",
                                  str(self.directory)], capture_output=True, text=True,
                                 check=False)
            self.mounted = run.returncode == 0
        if self.fault == "full" and not self.mounted:
            pytest.skip("a full disk needs a tmpfs, which needs root")

    def break_it(self) -> str:
        """Make the directory unwritable; return the error text /readyz must show."""
        if self.fault == "full":
            with open(self.directory / "filler", "wb") as filler:
                try:
                    while True:
                        filler.write(b"\0" * 65536)
                        filler.flush()
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
            return "No space left on device"
        if self.mounted:
            subprocess.run(["mount", "-o", "remount,ro", str(self.directory)], check=True)
            return "Read-only file system"
        for path in (self.directory, *self.directory.iterdir()):
            path.chmod(0o500 if path.is_dir() else 0o400)
        return "Permission denied"

    def mend(self) -> None:
        if self.fault == "full":
            (self.directory / "filler").unlink()
        elif self.mounted:
            subprocess.run(["mount", "-o", "remount,rw", str(self.directory)], check=True)
        else:
            for path in (self.directory, *self.directory.iterdir()):
                path.chmod(0o700 if path.is_dir() else 0o600)

    def release(self) -> None:
        """Undo everything (tmp_path must be removable)."""
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.directory)], check=False)
        elif self.directory.exists():
            for path in (self.directory, *self.directory.iterdir()):
                path.chmod(0o700 if path.is_dir() else 0o600)


@pytest.mark.parametrize("fault", ["read-only", "full"])
def test_dead_letter_unwritable_mid_stream_then_writable(own_mqtt_broker, topic_prefix,
                                                         tmp_path, fault):
    broker = own_mqtt_broker
    (port,) = _free_ports(1)
    disk = DeadLetterDisk(tmp_path / "dl", fault)
    disk.prepare()
    try:
        dead = disk.directory / "dead.jsonl"
        config = {
            "mqtt-broker": {"host": broker.host, "port": broker.port, "clean-start": False,
                            "client-id": f"dl-{os.getpid()}-{time.time_ns()}"},
            "processors": {"strict": {"type": "parse", "format": "json"}},
            "targets": {"lake": {"type": "s3", "local-path": str(tmp_path / "lake"),
                                 "processors": ["strict"], "batching": {"max-age": 0.3}}},
            "subscriptions": {f"{topic_prefix}/#": {"qos": 1, "target": "lake"}},
            "dead-letter": {"path": str(dead)},
            "http": {"host": "127.0.0.1", "port": port},
        }
        (tmp_path / "config.json").write_text(json.dumps(config))
        proc = UnsflowProcess(["run", str(tmp_path / "config.json")], cwd=tmp_path,
                              env={}).start()
        publisher = Publisher(broker, f"{topic_prefix}/line1/press")
        try:
            wait_until(lambda: readyz(port)[0] == 200, 30, "/readyz 200", proc)
            publisher.start()
            # The dead letter is in use before the fault: bad messages are flowing.
            wait_until(lambda: sum(dead_letter_seqs(dead).values()) >= 20, 90,
                       "20 dead-lettered", proc)
            broken_at = publisher.published
            error = disk.break_it()
            _, report = wait_until(lambda: (r := readyz(port))[0] == 503 and r, 60,
                                   "/readyz 503 (dead letter)", proc)
            assert f"cannot write the dead letter {dead}" in report["reason"], report
            assert error in report["dead_letter"], report
            assert "acknowledgements are held" in report["reason"], report
            assert metric(port, "unsflow_dead_letter_failing") == 1
            # Backpressure: once the count settles (acks of batches done before the fault may
            # still leave), nothing more is acknowledged while the dead letter is unwritable.
            acked = settled(lambda: metric(port, "unsflow_source_acked_total", source="uns"),
                            quiet=1.0, timeout=30)
            time.sleep(2)  # the duration over which nothing may be acknowledged
            assert metric(port, "unsflow_source_acked_total", source="uns") == acked
            assert readyz(port)[0] == 503 and proc.proc.poll() is None
            mended_at = publisher.published
            disk.mend()
            wait_until(lambda: readyz(port)[0] == 200, 90, "/readyz 200 again", proc)
            assert metric(port, "unsflow_dead_letter_failing") == 0
            publisher.join(300)
            assert publisher.error is None and publisher.published == TOTAL
            good = {s for s in range(TOTAL) if s % 10 != 9}
            bad = set(range(TOTAL)) - good
            rows = wait_for_rows(tmp_path / "lake", lambda r: {x["seq"] for x in r} >= good, 180)
            wait_until(lambda: set(dead_letter_seqs(dead)) >= bad, 60,
                       "every bad one dead-lettered", proc)
        finally:
            code = proc.terminate()
            publisher.join(5)
            (tmp_path / "unsflow.log").write_text(proc.output)
        assert code == 0, proc.output[-3000:]
        assert "holding acknowledgements and retrying" in proc.output
        assert "is writable again; going on" in proc.output
        delivered = collections.Counter(r["seq"] for r in rows)
        dead_lettered = dead_letter_seqs(dead)
        assert set(delivered) == good and set(dead_lettered) == bad
        # Every entry is whole JSON: a failed append left no torn line behind.
        assert all(json.loads(line) for line in dead.read_text().splitlines())
        assert len(read_rows(tmp_path / "lake", columns=["seq"])) == len(rows)
        report_scenario(f"10. dead letter {fault}, then writable", TOTAL, delivered,
                        dead_lettered, note=f"unwritable after {broken_at} published, "
                        f"writable again after {mended_at}")
    finally:
        disk.release()
