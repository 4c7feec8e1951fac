"""`unsflow deadletter replay`: what `unsflow run` dead-lettered goes back byte for byte."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.helpers import UnsflowProcess
from tests.unit.test_health import free_port, http, samples
from unsflow.testing import Collector, publish

pytestmark = pytest.mark.e2e

BAD = [
    b"\xff\xfe\x00 not utf-8 \x80",      # invalid UTF-8: stored as payload_base64
    b"plain text, not JSON \xe2\x9c\x93",  # valid UTF-8, no JSON array: stored as text
    b"",                                 # empty payload
]


def write_config(tmp_path: Path, broker, topic_prefix: str, http_port: int = 0) -> Path:
    config = {
        "mqtt-broker": {"host": broker.host, "port": broker.port},
        # event-type batch: a payload must be a JSON array, so plain text fails too.
        "targets": {"lake": {"type": "s3", "local-path": str(tmp_path / "lake"),
                             "event-type": "batch", "format": "parquet"}},
        "subscriptions": {f"{topic_prefix}/in/#": {"qos": 1, "target": "lake"}},
        "dead-letter": {"path": str(tmp_path / "dead.jsonl")},
        "http": {"host": "127.0.0.1", "port": http_port},
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "unsflow.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False)


def wait_for_lines(path: Path, count: int, timeout: float = 30.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
            if len(lines) >= count:
                return lines
        time.sleep(0.1)
    raise AssertionError(f"fewer than {count} dead-letter lines in {path} within {timeout}s")


def test_dead_lettered_payloads_are_replayed_byte_for_byte(mqtt_broker, topic_prefix, tmp_path):
    port = free_port()
    config = write_config(tmp_path, mqtt_broker, topic_prefix, port)
    dead = tmp_path / "dead.jsonl"
    proc = UnsflowProcess(["run", str(config)], cwd=tmp_path, env={}).start()
    try:
        proc.wait_for_log("subscribed:")
        deadline = time.monotonic() + 30
        while http(port, "/readyz")[0] != 200:  # subscribed: nothing published now is missed
            assert time.monotonic() < deadline, proc.output[-3000:]
            time.sleep(0.1)
        topics = [f"{topic_prefix}/in/m{i}" for i in range(len(BAD))]
        assert publish(mqtt_broker.host, mqtt_broker.port, list(zip(topics, BAD, strict=True)), 1) == len(BAD)
        entries = wait_for_lines(dead, len(BAD))
        deadline = time.monotonic() + 10  # the counters follow the fsync
        while (got := samples(http(port, "/metrics")[2]))[
                ("unsflow_target_dead_lettered_total", (("target", "lake"),))] < len(BAD):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert got[("unsflow_dead_letter_total", ())] == len(BAD)
        assert got[("unsflow_target_dead_lettered_total", (("target", "lake"),))] == len(BAD)
        assert sorted(e["topic"] for e in entries) == sorted(topics)
        assert any("payload_base64" in e for e in entries)
        with dead.open("ab") as fh:  # a line that is not JSON is reported, not fatal
            fh.write(b"{truncated\n")

        dry = cli("deadletter", "replay", str(dead), "--config", str(config), "--dry-run",
                  cwd=tmp_path)
        assert dry.returncode == 0, dry.stderr
        assert f"{len(BAD)} message(s) read, would publish {len(BAD)}" in dry.stdout
        assert dead.exists()

        replay_prefix = f"{topic_prefix}/replayed"
        with Collector(mqtt_broker.host, mqtt_broker.port, f"{replay_prefix}/#") as out:
            # The pipeline is still running: the replay takes the file away from under it.
            done = cli("deadletter", "replay", str(dead), "--config", str(config),
                       "--topic-prefix", replay_prefix, cwd=tmp_path)
            assert done.returncode == 0, done.stderr
            got = out.wait(len(BAD), timeout=30)
        assert f"published {len(BAD)}, 1 line(s) skipped" in done.stdout
        assert f"{dead}:{len(BAD) + 1}: skipped: not JSON" in done.stderr
        assert sorted(got) == sorted((f"{replay_prefix}/{t}", p) for t, p in zip(topics, BAD, strict=True))

        # Renamed so that it is not replayed twice by accident; nothing else was dead-lettered.
        assert not dead.exists()
        (renamed,) = tmp_path.glob("dead.jsonl.replayed-*")
        assert len(renamed.read_text().splitlines()) == len(BAD) + 1
        again = cli("deadletter", "replay", str(dead), "--config", str(config), cwd=tmp_path)
        assert again.returncode == 2 and "no such dead-letter file" in again.stderr
    finally:
        code = proc.terminate()
    assert code == 0, proc.output[-3000:]


def test_replay_to_the_original_topic_goes_through_the_pipeline_again(
        mqtt_broker, topic_prefix, tmp_path):
    """Without a prefix the message reaches the pipeline again: still bad, dead-lettered anew."""
    config = write_config(tmp_path, mqtt_broker, topic_prefix)
    dead = tmp_path / "dead.jsonl"
    proc = UnsflowProcess(["run", str(config)], cwd=tmp_path, env={}).start()
    try:
        proc.wait_for_log("subscribed:")
        topic = f"{topic_prefix}/in/press"
        publish(mqtt_broker.host, mqtt_broker.port, [(topic, BAD[0])], 1)
        (first,) = wait_for_lines(dead, 1)
        done = cli("deadletter", "replay", str(dead), "--config", str(config), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        (second,) = wait_for_lines(dead, 1)  # a new file: the old one was renamed
        assert second["topic"] == topic
        assert second["payload_base64"] == first["payload_base64"]
    finally:
        code = proc.terminate()
    assert code == 0, proc.output[-3000:]
