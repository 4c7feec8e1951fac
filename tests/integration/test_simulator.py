"""`unsflow simulate` against the real Mosquitto: what reaches the broker, and the ground truth."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from unsflow.testing import Collector

pytestmark = pytest.mark.integration

SPIKY = {"machines": [{"name": "press-1", "device": "pump-1"},
                      {"name": "press-2", "device": "pump-2"}],
         "sensors": [{"name": "vibration", "unit": "mm/s", "low": 10, "high": 18,
                      "failures": [{"mode": "spike", "every": 4}]},
                     {"name": "temperature", "unit": "°C", "low": 45, "high": 55, "step": 0.5,
                      "failures": [{"mode": "dropout", "start": 2, "length": 2}]}]}


def simulate(broker: Any, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "unsflow.cli", "simulate", "--host", broker.host,
         "--port", str(broker.port), *args],
        capture_output=True, text=True, timeout=timeout, check=False, env=dict(os.environ))


def wait_for_first(out: Collector, topic: str, timeout: float) -> int:
    """The index of the first message on ``topic`` in what ``out`` collected."""
    deadline = time.monotonic() + timeout
    while True:
        topics = [t for t, _ in out.messages]
        if topic in topics:
            return topics.index(topic)
        assert time.monotonic() < deadline, f"nothing on {topic} within {timeout}s"
        time.sleep(0.05)


def write_config(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "sim.json"
    path.write_text(json.dumps(data))
    return path


def test_uns_style_readings_and_ground_truth(mqtt_broker, topic_prefix, tmp_path):
    config = write_config(tmp_path, SPIKY)
    truth = tmp_path / "truth.jsonl"
    with Collector(mqtt_broker.host, mqtt_broker.port, f"{topic_prefix}/#") as out:
        result = simulate(mqtt_broker, "--config", str(config), "--prefix", topic_prefix,
                          "--count", "30", "--rate", "200", "--seed", "11",
                          "--ground-truth", str(truth), "--ground-truth-topic", "ground-truth")
        assert result.returncode == 0, result.stderr
        truth_lines = [json.loads(line) for line in truth.read_text().splitlines()]
        received = out.wait(30 + len(truth_lines), timeout=20, distinct=True)
    assert "published 30 messages" in result.stdout and "msg/s (asked 200)" in result.stdout

    readings = [(t, json.loads(p)) for t, p in received if not t.endswith("/ground-truth")]
    side = [json.loads(p) for t, p in received if t == f"{topic_prefix}/ground-truth"]
    assert len(readings) == 30
    base = f"{topic_prefix}/acme/plant1/area1/line1"
    assert {t for t, _ in readings} == {f"{base}/press-{i}/{s}" for i in (1, 2)
                                        for s in ("vibration", "temperature")}
    for topic, r in readings:
        assert set(r) == {"value", "unit", "timestamp", "machine", "sensor"}
        assert topic == f"{base}/{r['machine']}/{r['sensor']}"

    # the ground truth names exactly the spiked and dropped readings
    assert side == truth_lines
    spikes = [e for e in truth_lines if e["anomalies"] == ["spike"]]
    drops = [e for e in truth_lines if e["anomalies"] == ["dropout"]]
    by_key = {(r["machine"], r["sensor"], r["timestamp"]): r["value"] for _, r in readings}
    for e in spikes:
        assert by_key[(e["machine"], "vibration", e["timestamp"])] == e["value"] > 18
    normal_vibration = [r["value"] for _, r in readings
                        if r["sensor"] == "vibration"
                        and (r["machine"], "vibration", r["timestamp"]) not in
                        {(e["machine"], "vibration", e["timestamp"]) for e in spikes}]
    assert normal_vibration and all(10 <= v <= 18 for v in normal_vibration)
    # every 4th vibration reading spiked; temperature readings 2 and 3 dropped, per machine
    assert sorted((e["machine"], e["index"]) for e in spikes)[:2] == [("press-1", 3), ("press-1", 7)]
    assert sorted((e["machine"], e["index"]) for e in drops) == [
        ("press-1", 2), ("press-1", 3), ("press-2", 2), ("press-2", 3)]
    assert all(e["value"] is None for e in drops)
    for e in drops:
        assert (e["machine"], "temperature", e["timestamp"]) not in by_key

    # the same seed gives the same values
    again = simulate(mqtt_broker, "--config", str(config), "--prefix", topic_prefix + "x",
                     "--count", "30", "--rate", "500", "--seed", "11",
                     "--ground-truth", str(tmp_path / "again.jsonl"))
    assert again.returncode == 0, again.stderr
    assert [(e["machine"], e["index"], e["value"]) for e in truth_lines] == [
        (e["machine"], e["index"], e["value"])
        for e in map(json.loads, (tmp_path / "again.jsonl").read_text().splitlines())]


def test_redhat_style_csv_on_the_demo_topics(mqtt_broker, topic_prefix, tmp_path):
    with Collector(mqtt_broker.host, mqtt_broker.port, f"{topic_prefix}/#") as out:
        result = simulate(mqtt_broker, "--style", "redhat", "--prefix", topic_prefix,
                          "--machines", "3", "--count", "60", "--rate", "300")
        assert result.returncode == 0, result.stderr
        received = out.wait(60, timeout=20)
    assert len(received) == 60
    assert {t for t, _ in received} == {f"{topic_prefix}/iot-sensor/sw/vibration",
                                        f"{topic_prefix}/iot-sensor/sw/temperature"}
    rows = [p.decode().split(",") for _, p in received]
    assert {(r[0], r[1]) for r in rows} == {(f"machine-{i}", f"pump-{i}") for i in (1, 2, 3)}
    for (topic, _), (machine, device, value, millis) in zip(received, rows):
        low, high = (10, 18 * 2.5) if topic.endswith("vibration") else (45, 55)
        assert low <= float(value) <= high
        assert abs(int(millis) / 1000 - time.time()) < 60


def test_config_change_takes_effect_while_running(mqtt_broker, topic_prefix, tmp_path):
    data = {"interval": 0.05, "machines": [{"name": "m1"}],
            "sensors": [{"name": "vibration", "low": 10, "high": 18},
                        {"name": "temperature", "low": 45, "high": 55, "enabled": False}]}
    config = write_config(tmp_path, data)
    base = f"{topic_prefix}/acme/plant1/area1/line1/m1"
    with Collector(mqtt_broker.host, mqtt_broker.port, f"{topic_prefix}/#") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "unsflow.cli", "simulate", "--host", mqtt_broker.host,
             "--port", str(mqtt_broker.port), "--config", str(config), "--prefix", topic_prefix],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out.wait(5, timeout=20)
            assert {t for t, _ in out.messages} == {f"{base}/vibration"}
            data["sensors"][0]["enabled"] = False
            data["sensors"][1]["enabled"] = True
            config.write_text(json.dumps(data, indent=1))
            first = wait_for_first(out, f"{base}/temperature", timeout=20)
            # A vibration reading in flight when the change landed may follow the first
            # temperature; 20 readings on, only temperature is published.
            later = out.wait(first + 1 + 20, timeout=20)[first + 5:]
            assert later and {t for t, _ in later} == {f"{base}/temperature"}
        finally:
            proc.send_signal(signal.SIGTERM)
            stdout, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr
    assert "config reloaded: 1 sensor(s) enabled" in stderr
    assert "published" in stdout


@pytest.mark.e2e
def test_pipeline_alerts_on_exactly_the_injected_spikes(mqtt_broker, topic_prefix, tmp_path):
    """simulate (redhat CSV) -> unsflow run: parse -> window -> threshold -> file."""
    from tests.e2e.helpers import UnsflowProcess

    alerts_file = tmp_path / "alerts.jsonl"
    pipeline = {
        "mqtt-broker": {"host": mqtt_broker.host, "port": mqtt_broker.port},
        "targets": {"alerts": {"type": "file", "path": str(alerts_file),
                               "processors": ["csv", "win", "spike"]}},
        "processors": {
            "csv": {"type": "parse", "format": "csv",
                    "columns": ["machineId", "deviceId", "value", "epochMillis"]},
            "win": {"type": "window", "size": 3, "key-fields": ["machineId", "deviceId"],
                    "time-field": "epochMillis"},
            "spike": {"type": "threshold", "above": 25, "name": "vibration"}},
        "subscriptions": {f"{topic_prefix}/iot-sensor/sw/vibration": {"qos": 1,
                                                                     "target": "alerts"}},
        "dead-letter": {"path": str(tmp_path / "dead.jsonl")},
    }
    (tmp_path / "pipeline.json").write_text(json.dumps(pipeline))
    sim = write_config(tmp_path, {"sensors": [
        {"name": "vibration", "unit": "mm/s", "low": 10, "high": 18,
         "failures": [{"mode": "spike", "every": 6}]}]})
    truth = tmp_path / "truth.jsonl"
    proc = UnsflowProcess(["run", str(tmp_path / "pipeline.json")], cwd=tmp_path, env={}).start()
    try:
        proc.wait_for_log("subscribed:")  # logged when the SUBACK arrived
        result = simulate(mqtt_broker, "--config", str(sim), "--style", "redhat",
                          "--prefix", topic_prefix, "--machines", "2", "--count", "60",
                          "--rate", "200", "--ground-truth", str(truth))
        assert result.returncode == 0, result.stderr
        expected = [json.loads(line) for line in truth.read_text().splitlines()]
        assert len(expected) == 10  # 30 readings per machine, a spike every 6th
        deadline = time.monotonic() + 30
        alerts: list[dict[str, Any]] = []
        while len(alerts) < len(expected) and time.monotonic() < deadline:
            time.sleep(0.2)
            if alerts_file.exists():
                alerts = [json.loads(line) for line in alerts_file.read_text().splitlines()]
    finally:
        code = proc.terminate()
    assert code == 0, proc.output[-3000:]
    assert sorted((a["reading"]["machineId"], a["reading"]["epochMillis"], a["value"])
                  for a in alerts) == sorted((e["machine"], e["timestamp"], e["value"])
                                             for e in expected)
    for a in alerts:
        assert a["alert"] == "vibration above 25" and a["limit"] == 25
        # the window is oldest first: the spike that raised the alert is its newest value
        assert a["reading"]["window"][-1] == a["value"]
        assert all(v <= 18 for v in a["reading"]["window"][:-1])
    assert not (tmp_path / "dead.jsonl").exists() or not (tmp_path / "dead.jsonl").read_text()
