"""Fault scenarios of the pipeline's life cycle, through `unsflow run` as a user runs it.

2. SIGTERM during load (a rolling update), then a restart.
3. The broker (Mosquitto) stopped and restarted during load.
8. A config reload during load (and an invalid config written mid-stream).

Each publishes a numbered QoS 1 stream with a publisher that counts only what
the broker acknowledged, injects the fault mid-stream, lets the system
recover, and reports every acknowledged message found in the Parquet output
or the dead letter (duplicates counted, not failed). Each uses a Mosquitto of
its own (the example subscribes to `#` with a persistent session).
"""

from __future__ import annotations

import collections
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.helpers import (
    ChunkedPublisher,
    UnsflowProcess,
    dead_letter_seqs,
    report_scenario,
    wait_for_rows,
)
from unsflow.testing import numbered_payload, publish, publish_numbered

EXAMPLE = Path(__file__).parents[2] / "examples" / "local-datalake.json"
TOTAL = 20_000

pytestmark = pytest.mark.e2e


def start(cwd: Path, broker, config: Path = EXAMPLE) -> UnsflowProcess:
    return UnsflowProcess(["run", str(config)], cwd=cwd,
                          env={"EDGE_BROKER_HOST": broker.host,
                               "EDGE_MQTT_PORT": str(broker.port)}).start()


def seqs(rows: list[dict], topic: str | None = None) -> collections.Counter:
    return collections.Counter(r["seq"] for r in rows
                               if r.get("seq") is not None and (topic is None or
                                                                r["_topic"] == topic))


def paced(topic: str, count: int, position: dict[str, int], chunk: int = 500,
          pause: float = 0.1) -> Iterator[tuple[str, bytes]]:
    """``count`` numbered messages, a pause every ``chunk``; ``position['n']`` is how many
    were handed to the publisher so far (not acknowledged: publish() counts those)."""
    for seq in range(count):
        if seq and seq % chunk == 0:
            time.sleep(pause)
        position["n"] = seq
        yield topic, numbered_payload(seq)
    position["n"] = count


def test_2_sigterm_during_load_then_restart(own_mqtt_broker, tmp_path):
    topic = "plant/line3/press/vibration"
    proc = start(tmp_path, own_mqtt_broker)
    publisher = ChunkedPublisher(own_mqtt_broker.host, own_mqtt_broker.port, topic, TOTAL)
    try:
        proc.wait_for_log("subscribed:")
        publisher.start()
        rows = wait_for_rows(tmp_path / "datalake", lambda r: len(r) >= 2000, timeout=60)
        assert len(rows) >= 2000, proc.output[-3000:]
        stopping_at = publisher.published
        began = time.monotonic()
        # Kubernetes sends SIGKILL 30 s after SIGTERM; shutdown-timeout (25 s) fits inside.
        code = proc.terminate(timeout=30)
        stop_seconds = time.monotonic() - began
        first_output = proc.output
        assert code == 0, first_output[-3000:]
        assert "stopped:" in first_output and "not finished in time" not in first_output
        # Publishing goes on while unsflow is down: the restarted run must find those
        # messages queued in its session. A stop can be faster than one chunk, so wait for
        # the publisher to get past where it was rather than hope it did.
        deadline = time.monotonic() + 30
        while publisher.published <= stopping_at and time.monotonic() < deadline:
            time.sleep(0.02)
        stopped_at = publisher.published
        proc = start(tmp_path, own_mqtt_broker)
        proc.wait_for_log("subscribed:")
        publisher.join(120)
        assert publisher.published == TOTAL
        rows = wait_for_rows(tmp_path / "datalake", lambda r: len(seqs(r)) >= TOTAL, timeout=120)
    finally:
        code = proc.terminate()
        publisher.join(5)
    assert code == 0, proc.output[-3000:]
    report_scenario("2. SIGTERM during load", TOTAL, seqs(rows),
                    dead_letter_seqs(tmp_path / "datalake-deadletter.jsonl"),
                    note=f"SIGTERM after {stopping_at} published, exit 0 in {stop_seconds:.1f}s, "
                         f"restarted after {stopped_at}")
    assert stopping_at < stopped_at < TOTAL, "publishing did not span the stop; nothing proved"


def test_3_mosquitto_stopped_and_restarted_during_load(own_mqtt_broker, tmp_path):
    topic = "plant/line4/oven/temperature"
    broker = own_mqtt_broker
    proc = start(tmp_path, broker)
    position = {"n": 0}
    result: dict[str, object] = {}

    def publish_all() -> None:
        # One publisher connection across the outage: publish() reconnects and sends again
        # what the broker did not acknowledge, and counts only acknowledged messages.
        try:
            result["acked"] = publish(broker.host, broker.port, paced(topic, TOTAL, position),
                                      qos=1, timeout=300)
        except Exception as exc:  # noqa: BLE001 - the assertion below reports it
            result["error"] = exc

    publisher = threading.Thread(target=publish_all)
    try:
        proc.wait_for_log("subscribed:")
        publisher.start()
        rows = wait_for_rows(tmp_path / "datalake", lambda r: len(r) >= 2000, timeout=60)
        assert len(rows) >= 2000, proc.output[-3000:]
        broker.stop()  # SIGTERM: Mosquitto saves sessions and queued messages
        stopped_at = position["n"]
        time.sleep(3.0)
        broker.start()
        restarted_at = position["n"]
        publisher.join(300)
        assert "error" not in result, f"publisher failed: {result.get('error')!r}"
        assert result["acked"] == TOTAL
        rows = wait_for_rows(tmp_path / "datalake", lambda r: len(seqs(r)) >= TOTAL, timeout=120)
        # unsflow noticed the outage and came back by itself.
        assert "disconnected from broker" in proc.output
        proc.wait_for_log("connected to", count=2)
        proc.wait_for_log("subscribed:", count=2)
    finally:
        code = proc.terminate()
        publisher.join(5)
    assert code == 0, proc.output[-3000:]
    report_scenario("3. Mosquitto stopped and restarted", TOTAL, seqs(rows),
                    dead_letter_seqs(tmp_path / "datalake-deadletter.jsonl"),
                    note=f"broker stopped at publisher position {stopped_at}, back at "
                         f"{restarted_at}, down ~3s")
    assert 0 < stopped_at < TOTAL, "publishing did not span the outage; nothing proved"


def write_configmap(root: Path, data: dict | str, version: int) -> Path:
    """Update ``root/pipeline.json`` as the kubelet updates a ConfigMap volume: a new
    directory, then an atomic swap of the ``..data`` symlink."""
    version_dir = root / f"..2026_11_23_{version:02d}"
    version_dir.mkdir()
    (version_dir / "pipeline.json").write_text(data if isinstance(data, str) else json.dumps(data))
    link = root / "..data_tmp"
    link.symlink_to(version_dir.name)
    os.replace(link, root / "..data")
    path = root / "pipeline.json"
    if not path.is_symlink():
        path.symlink_to("..data/pipeline.json")
    return path


def test_8_config_reload_during_load(own_mqtt_broker, tmp_path):
    line1, line2 = "plant/line1/press/vibration", "plant/line2/press/vibration"
    broker = own_mqtt_broker
    v1 = {
        "mqtt-broker": {"client-id": "unsflow-reload-e2e", "clean-start": False},
        "targets": {"datalake": {"type": "s3", "local-path": "./datalake", "format": "parquet",
                                 "batching": {"max-records": 20000, "max-age": 1.0}}},
        "subscriptions": {"plant/line1/#": {"qos": 1, "target": "datalake"}},
        "dead-letter": {"path": "./deadletter.jsonl"},
        "http": {"port": 0},
        "reload": {"interval": 1.0},
    }
    v2 = json.loads(json.dumps(v1))
    v2["targets"]["datalake"]["batching"] = {"max-records": 500, "max-age": 0.5}
    v2["targets"]["line2-lake"] = {"type": "s3", "local-path": "./line2", "format": "parquet"}
    v2["subscriptions"]["plant/line2/#"] = {"qos": 1, "target": "line2-lake"}
    invalid = json.loads(json.dumps(v2))
    invalid["subscriptions"]["plant/line2/#"]["target"] = "no-such-target"
    configmap = tmp_path / "configmap"
    configmap.mkdir()
    config = write_configmap(configmap, v1, 1)
    proc = start(tmp_path, broker, config)
    publisher = ChunkedPublisher(broker.host, broker.port, line1, TOTAL)
    try:
        proc.wait_for_log("subscribed:")
        publisher.start()
        rows = wait_for_rows(tmp_path / "datalake", lambda r: len(r) >= 1000, timeout=60)
        assert len(rows) >= 1000, proc.output[-3000:]

        write_configmap(configmap, invalid, 2)
        proc.wait_for_log("rejected: subscriptions.plant/line2/#.target: expected the name "
                          "of a target", timeout=15)
        rejected_rows = len(wait_for_rows(tmp_path / "datalake", lambda r: True))
        # Data keeps flowing on the running config.
        rows = wait_for_rows(tmp_path / "datalake", lambda r: len(r) >= rejected_rows + 1000,
                             timeout=60)
        assert len(rows) >= rejected_rows + 1000, proc.output[-3000:]

        write_configmap(configmap, v2, 3)
        proc.wait_for_log("config reloaded", timeout=60)
        reloaded_at = publisher.published
        assert publish_numbered(broker.host, broker.port, line2, 2000, qos=1) == 2000
        publisher.join(120)
        assert publisher.published == TOTAL
        rows = wait_for_rows(tmp_path / "datalake", lambda r: len(seqs(r)) >= TOTAL, timeout=120)
        line2_rows = wait_for_rows(tmp_path / "line2", lambda r: len(seqs(r)) >= 2000, timeout=60)
    finally:
        code = proc.terminate()
        publisher.join(5)
    assert code == 0, proc.output[-3000:]
    reloaded = next(line for line in proc.lines if "config reloaded" in line)
    assert "+plant/line2/#" in reloaded and "~datalake" in reloaded and "+line2-lake" in reloaded
    assert "UNS connection kept" in reloaded
    paused = reloaded.split("reading paused ")[1].split(")")[0]
    assert proc.output.count("connected to") == 1, "the reload reconnected to the broker"
    assert set(seqs(line2_rows, line2)) == set(range(2000))
    report_scenario("8. config reload during load", TOTAL, seqs(rows, line1),
                    dead_letter_seqs(tmp_path / "deadletter.jsonl"),
                    note=f"invalid config rejected at ~{rejected_rows} rows, reloaded after "
                         f"{reloaded_at} published (reading paused {paused}); second "
                         "subscription: 2000/2000")
    assert 0 < reloaded_at < TOTAL, "publishing did not span the reload; nothing proved"
