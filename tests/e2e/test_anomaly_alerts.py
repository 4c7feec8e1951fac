"""Anomaly alerts end to end: simulator -> Mosquitto -> `unsflow run` (window -> remote model via
`unsflow serve` -> filter) -> alerts on MQTT, scored against the simulator's ground truth.

The model is trained by `unsflow train` on what the same pipeline wrote to a local data lake
from an earlier simulator run (another seed, other machines), labelled by that run's ground
truth; `unsflow serve` picks it up from the model store when it appears.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import _free_ports
from tests.e2e.helpers import UnsflowProcess, wait_for_rows
from unsflow.testing import Collector

pytestmark = pytest.mark.e2e

WINDOW = 5
INTERVAL = 0.02  # seconds between two readings of a sensor
MACHINES = ["press-1", "press-2", "press-3"]
TICKS = 300  # readings per machine
TRAIN_MACHINES = ["train-1", "train-2"]
TRAIN_TICKS = 600
VIBRATION = {"name": "vibration", "unit": "mm/s", "low": 10, "high": 18, "step": 1,
             "failures": [{"mode": "spike", "every": 10}]}
# The bound on false alerts, as a share of the readings scored. The spikes (x2.5 on a walk in
# 10..18, so 25..45) are far outside the walk, and the tree sees the whole window, so a
# well-trained model makes no false alert on this seed; 1% leaves room for a model that
# `unsflow train` fits differently (it chooses among candidates by F1) while still failing a
# model that flags windows which merely contain an old spike (4 false alerts per spike: 40%
# of the readings) or one that keys on the walk's level.
MAX_FALSE_ALERT_RATE = 0.01


def simulate(tmp_path: Path, broker, prefix: str, *, seed: int, machines: list[str],
             ticks: int, truth: Path) -> None:
    """`unsflow simulate` of vibration with a spike every 10th reading; waits for every PUBACK."""
    config = tmp_path / f"sim-{seed}.yaml"
    config.write_text(yaml.safe_dump({"interval": INTERVAL, "seed": seed,
                                      "machines": [{"name": m} for m in machines],
                                      "sensors": [VIBRATION]}))
    sim = UnsflowProcess(["simulate", "--config", str(config), "--host", broker.host,
                          "--port", str(broker.port), "--prefix", prefix,
                          "--count", str(ticks * len(machines)), "--ground-truth", str(truth)],
                         cwd=tmp_path, env={}).start()
    assert sim.proc is not None and sim.proc.wait(120) == 0, sim.output


@pytest.mark.e2e
def test_every_spike_is_alerted_within_one_reading(mqtt_broker, topic_prefix, tmp_path: Path):
    port, run_port = _free_ports(2)
    base = f"http://127.0.0.1:{port}"
    serve = UnsflowProcess(["serve", "--store", str(tmp_path / "models"), "--models", "anomaly",
                            "--host", "127.0.0.1", "--port", str(port), "--poll-interval", "0.5"],
                           cwd=tmp_path, env={}).start()
    alert_topic = f"{topic_prefix}/alerts"
    config = {
        "mqtt-broker": {"host": mqtt_broker.host, "port": mqtt_broker.port},
        "subscriptions": {
            f"{topic_prefix}/train/acme/plant1/area1/line1/+/vibration":
                {"qos": 1, "target": "lake"},
            f"{topic_prefix}/live/acme/plant1/area1/line1/+/vibration":
                {"qos": 1, "target": "alerts"}},
        "processors": {
            "windows": {"type": "window", "size": WINDOW, "key-fields": ["machine", "sensor"],
                        "time-field": "timestamp"},
            "score": {"type": "remote", "protocol": "v2", "base-url": base,
                      "processor-id": "anomaly", "input-field": "window",
                      "input-name": "predict", "output-field": "anomaly"},
            "anomalies-only": {"type": "filter", "field": "anomaly", "equals": 1},
        },
        "targets": {
            "lake": {"type": "s3", "local-path": str(tmp_path / "lake"), "format": "parquet",
                     "batching": {"max-age": 0.3}},
            "alerts": {
            "type": "mqtt", "mqtt-broker-host": mqtt_broker.host,
            "mqtt-broker-port": mqtt_broker.port,
            "topic": f"{alert_topic}/{{record[machine]}}/{{record[sensor]}}",
            "processors": ["windows", "score", "anomalies-only"]}},
        "dead-letter": {"path": str(tmp_path / "dead.jsonl")},
        "http": {"host": "127.0.0.1", "port": run_port},
    }
    (tmp_path / "pipeline.json").write_text(json.dumps(config))
    truth_file = tmp_path / "truth.jsonl"
    run = None
    try:
        serve.wait_for_log("Application startup complete", timeout=60)
        assert httpx.get(f"{base}/v2/health/ready", trust_env=False).status_code == 503
        run = UnsflowProcess(["run", str(tmp_path / "pipeline.json")], cwd=tmp_path,
                             env={}).start()
        run.wait_for_log("subscribed:", count=1)

        # 1. History for training: readings to the lake, anomalies to a ground-truth file.
        simulate(tmp_path, mqtt_broker, f"{topic_prefix}/train", seed=7,
                 machines=TRAIN_MACHINES, ticks=TRAIN_TICKS, truth=tmp_path / "train-truth.jsonl")
        total = TRAIN_TICKS * len(TRAIN_MACHINES)
        rows = wait_for_rows(tmp_path / "lake", lambda r: len(r) >= total, timeout=60)
        assert len(rows) == total, run.output[-3000:]
        train = UnsflowProcess(["train", "--lake", str(tmp_path / "lake"), "--store",
                                str(tmp_path / "models"), "--name", "anomaly",
                                "--ground-truth", str(tmp_path / "train-truth.jsonl")],
                               cwd=tmp_path, env={}).start()
        assert train.proc is not None and train.proc.wait(300) == 0, train.output[-3000:]
        print("\nunsflow train:", train.output[-1500:])
        serve.wait_for_log("model 'anomaly': serving version 1", timeout=30)

        # 2. Live readings of other machines, another seed: alerts on MQTT.
        with Collector(mqtt_broker.host, mqtt_broker.port, f"{alert_topic}/#") as alerts:
            simulate(tmp_path, mqtt_broker, f"{topic_prefix}/live", seed=42, machines=MACHINES,
                     ticks=TICKS, truth=truth_file)
            truth = [json.loads(line) for line in truth_file.read_text().splitlines()]
            spikes = [t for t in truth if "spike" in t["anomalies"]]
            assert len(spikes) == len(MACHINES) * TICKS // 10
            try:
                alerts.wait(len(spikes), timeout=60)
            except TimeoutError as exc:
                metrics = [httpx.get(f"http://127.0.0.1:{p}/metrics", trust_env=False).text
                           for p in (run_port, port)]
                raise AssertionError(f"{exc}\n{run.output[-3000:]}\n{serve.output[-2000:]}\n"
                                     + "\n".join(metrics)) from None
            time.sleep(2.0)  # the readings after the last spike are scored too
            received = alerts.messages
    finally:
        codes = [run.terminate() if run else 0, serve.terminate()]
    assert codes == [0, 0], (run.output if run else "")[-2000:] + serve.output[-2000:]
    assert not (tmp_path / "dead.jsonl").exists() or not (tmp_path / "dead.jsonl").read_text()

    records = [(topic, json.loads(payload)) for topic, payload in received]
    # An alert carries the reading that caused it (and the window the model saw).
    for topic, r in records:
        assert topic == f"{alert_topic}/{r['machine']}/vibration"
        assert r["anomaly"] == 1 and r["window"][-1] == r["value"] and len(r["window"]) == WINDOW
        assert {"value", "unit", "timestamp", "machine", "sensor"} <= set(r)
    # Every injected spike is alerted within one reading: the alert's reading is the spike
    # itself or the next reading of that machine's sensor.
    step_ms = INTERVAL * 1000
    late: list[dict] = []
    matched: set[tuple[str, int]] = set()
    for spike in spikes:
        hits = [r for _, r in records if r["machine"] == spike["machine"]
                and spike["timestamp"] <= r["timestamp"] <= spike["timestamp"] + 1.5 * step_ms]
        if not hits:
            late.append(spike)
        matched.update((r["machine"], r["timestamp"]) for r in hits)
    assert late == [], f"{len(late)} of {len(spikes)} spikes not alerted: {late[:3]}"
    on_spike = {(s["machine"], s["timestamp"]) for s in spikes}
    exact = sum((r["machine"], r["timestamp"]) in on_spike for _, r in records)
    false_alerts = [r for _, r in records if (r["machine"], r["timestamp"]) not in matched]
    scored = len(MACHINES) * (TICKS - (WINDOW - 1))  # readings with a full window
    rate = len(false_alerts) / scored
    print(f"\nanomaly alerts: {len(spikes)} spikes injected, {len(records)} alerts, "
          f"{exact} on the spike reading itself, {len(false_alerts)} false alerts in {scored} "
          f"readings scored: false-alert rate {rate:.4f} (bound {MAX_FALSE_ALERT_RATE})")
    assert rate <= MAX_FALSE_ALERT_RATE, false_alerts[:5]
