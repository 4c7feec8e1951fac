"""The headline check of issue 6: the MANUela recording through the pipeline, then `unsflow train`.

The recording (/work/shared/data/manuela-vibration.csv) is published in the
Red Hat CSV style (``iot-sensor/sw/vibration``, ``machineId,deviceId,value,epochMillis``)
to Mosquitto; `unsflow run` parses it and the ``s3`` target writes the lake
(a local directory); `unsflow train` reads that lake, takes the labels from
the CSV as ground truth keyed by (id, ts), and writes a model version whose
metrics file holds our F1 and the demo's depth-2 tree's on the same held-out
windows.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.helpers import UnsflowProcess, wait_for_rows
from tests.ml_data import MACHINE, MANUELA_CSV, manuela_rows
from unsflow.ml.store import ModelStore
from unsflow.testing import publish

pytestmark = pytest.mark.e2e


def pipeline_config(root: Path, topic: str) -> dict:
    return {
        "mqtt-broker": {"client-id": f"train-e2e-{root.name}"},
        "targets": {"lake": {"type": "s3", "local-path": str(root / "lake"), "key-prefix": "uns",
                             "processors": ["sensor-csv"],
                             "batching": {"max-records": 5000, "max-age": 0.5}}},
        "processors": {"sensor-csv": {"type": "parse", "format": "csv",
                                      "columns": ["machineId", "deviceId", "value",
                                                  "epochMillis"]}},
        "subscriptions": {topic: {"qos": 1, "target": "lake"}},
        "dead-letter": {"path": str(root / "deadletter.jsonl")},
    }


@pytest.mark.e2e
def test_manuela_recording_through_the_pipeline_then_train(mqtt_broker, topic_prefix,
                                                           tmp_path: Path) -> None:
    rows = manuela_rows()
    topic = f"{topic_prefix}/iot-sensor/sw/vibration"
    config = tmp_path / "pipeline.json"
    config.write_text(json.dumps(pipeline_config(tmp_path, topic)))
    env = {"EDGE_BROKER_HOST": mqtt_broker.host, "EDGE_MQTT_PORT": str(mqtt_broker.port)}
    proc = UnsflowProcess(["run", str(config)], cwd=tmp_path, env=env).start()
    try:
        proc.wait_for_log("subscribed:")
        messages = [(topic, f"{MACHINE},{r['id']},{r['value']},{r['ts']}".encode())
                    for r in rows]
        assert publish(mqtt_broker.host, mqtt_broker.port, messages, qos=1) == len(rows)
        lake_rows = wait_for_rows(tmp_path / "lake", lambda r: len(r) >= len(rows), timeout=90)
    finally:
        code = proc.terminate()
    assert code == 0, proc.output[-3000:]
    assert len(lake_rows) == len(rows), proc.output[-3000:]
    assert {r["deviceId"] for r in lake_rows} == {"pump-1", "pump-2"}

    store = tmp_path / "models"
    trained = subprocess.run(
        [sys.executable, "-m", "unsflow.cli", "train", "--lake", str(tmp_path / "lake"),
         "--store", str(store), "--name", "vibration-anomaly",
         "--ground-truth", str(MANUELA_CSV)],
        check=False, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    summary = json.loads(trained.stdout)
    artifact = ModelStore(str(store)).read("vibration-anomaly")
    assert artifact.version == summary["version"] == 1
    metrics = artifact.metrics
    assert metrics is not None
    ours, demo = metrics["f1"], metrics["baseline"]["f1"]
    print(f"\nMANUela recording via MQTT -> unsflow run -> Parquet -> unsflow train: "
          f"ours ({metrics['model']}) F1 {ours} (precision {metrics['precision']}, recall "
          f"{metrics['recall']}, delay {metrics['detection-delay-seconds']} s); "
          f"demo depth-2 tree F1 {demo}; {metrics['test-windows']} held-out windows")
    assert artifact.metadata["training"]["readings"] == len(rows)
    assert artifact.metadata["training"]["anomalous-readings"] == 84
    assert metrics["test"]["positive-windows"] == 25
    assert ours >= demo and ours >= 0.85


@pytest.mark.e2e
def test_simulated_drift_through_the_pipeline_then_train(mqtt_broker, topic_prefix,
                                                          tmp_path: Path) -> None:
    """`unsflow simulate` (Red Hat style, spikes and drift, ground truth) -> run -> train."""
    machines, per_machine = 8, 2000
    sim = {
        "prefix": topic_prefix, "style": "redhat", "seed": 7, "rate": 2000,
        "count": machines * per_machine, "ground-truth": str(tmp_path / "truth.jsonl"),
        "machines": [{"name": f"machine-{m}", "device": f"pump-{m}", "sensors": [{
            "name": "vibration", "low": 10, "high": 18, "step": 1,
            "failures": [{"mode": "spike", "every": 30},
                         {"mode": "drift", "slope": 0.02, "length": 300,
                          # even machines drift in the training period, odd ones in the test
                          "start": 200 + m * 100 if m % 2 == 0 else 1420 + m * 20}]}]}
            for m in range(machines)]}
    (tmp_path / "sim.json").write_text(json.dumps(sim))
    topic = f"{topic_prefix}/iot-sensor/sw/vibration"
    config = tmp_path / "pipeline.json"
    config.write_text(json.dumps(pipeline_config(tmp_path, topic)))
    env = {"EDGE_BROKER_HOST": mqtt_broker.host, "EDGE_MQTT_PORT": str(mqtt_broker.port)}
    proc = UnsflowProcess(["run", str(config)], cwd=tmp_path, env=env).start()
    try:
        proc.wait_for_log("subscribed:")
        simulated = subprocess.run(
            [sys.executable, "-m", "unsflow.cli", "simulate", "--config",
             str(tmp_path / "sim.json")], env={**proc.env}, check=False, capture_output=True,
            text=True, timeout=300, cwd=tmp_path)
        assert simulated.returncode == 0, simulated.stderr[-3000:]
        lake_rows = wait_for_rows(tmp_path / "lake",
                                  lambda r: len(r) >= machines * per_machine, timeout=120)
    finally:
        code = proc.terminate()
    assert code == 0, proc.output[-3000:]
    assert len(lake_rows) == machines * per_machine

    trained = subprocess.run(
        [sys.executable, "-m", "unsflow.cli", "train", "--lake", str(tmp_path / "lake"),
         "--store", str(tmp_path / "models"), "--ground-truth", str(tmp_path / "truth.jsonl")],
        check=False, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    metrics = ModelStore(str(tmp_path / "models")).read("vibration-anomaly").metrics
    assert metrics is not None
    ours, demo = metrics["test"]["by-kind"], metrics["baseline"]["test"]["by-kind"]
    print(f"\nsimulated spikes + drift via the pipeline: ours ({metrics['model']}) F1 "
          f"{metrics['f1']}, drift recall {ours['drift']['recall']}, first drift alarm after "
          f"{ours['drift']['detection-delay'].get('mean-readings')} readings on average; "
          f"demo tree F1 {metrics['baseline']['f1']}, drift recall {demo['drift']['recall']}")
    assert ours["spike"]["recall"] == 1.0
    assert metrics["f1"] > metrics["baseline"]["f1"]
    assert ours["drift"]["recall"] > demo["drift"]["recall"]
