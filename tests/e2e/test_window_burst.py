"""A burst gives the same windows, scores and alerts as a slow replay (issue 11).

The Red Hat demo's live loop, as its docs configure it: `parse` csv
(machineId,deviceId,value,epochMillis) -> `window` of 5 per pump by epochMillis ->
`model` -> `filter` anomaly = 1 -> alerts on MQTT, fed the last 30% of the MANUela
recording on `iot-sensor/sw/vibration`. Every scored reading also goes to a file, so
the test compares each reading's window and score, not only the alert count.

Published three ways through the real Mosquitto and `unsflow run`:

- slowly (a few hundred readings a second, the pipeline keeping up);
- as one burst: published while unsflow is stopped, then drained from its persistent
  session at full speed when it starts (what a broker does after a network cut);
- as one burst with each pump's readings shuffled by up to two places (10 s), as a
  device that sends out of order would.

A burst must give exactly the slow replay's windows, scores and alerts. Shuffled, every
reading with a full window is still scored once, every anomaly alerted, no false alert;
a reading that arrived after newer ones of its pump gets the window it has in order.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import UnsflowProcess
from tests.ml_data import MACHINE, manuela_rows
from unsflow.testing import Collector, end_session, publish

pytestmark = pytest.mark.e2e

WINDOW = 5
TOPIC = "iot-sensor/sw/vibration"


def windows_by_pump(rows: list[dict[str, str]]) -> tuple[list[list[float]], list[int]]:
    """Oldest-first windows of each pump, labelled by their newest reading."""
    x: list[list[float]] = []
    y: list[int] = []
    for pump in ("pump-1", "pump-2"):
        mine = sorted((r for r in rows if r["id"] == pump), key=lambda r: int(r["ts"]))
        values = [float(r["value"]) for r in mine]
        for i in range(WINDOW - 1, len(mine)):
            x.append(values[i - WINDOW + 1:i + 1])
            y.append(int(mine[i]["label"]))
    return x, y


def save_model(store_dir: Path, rows: list[dict[str, str]]) -> None:
    """The demo's model: a depth-2 tree on windows of the first 70% of the recording."""
    import numpy as np
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.tree import DecisionTreeClassifier

    from unsflow.ml.store import ModelStore, default_metadata

    x, y = windows_by_pump(rows)
    tree = DecisionTreeClassifier(max_depth=2, random_state=0).fit(
        np.asarray(x, dtype=np.float32), np.asarray(y))
    onx = to_onnx(tree, initial_types=[("predict", FloatTensorType([None, WINDOW]))],
                  options={id(tree): {"zipmap": False}}, target_opset=17)
    ModelStore(str(store_dir)).save(
        "vibration", onx.SerializeToString(),
        {"name": "vibration", **default_metadata(WINDOW, {"rows": len(x)})}, {})


def config(tmp_path: Path, broker: Any, prefix: str, run: str) -> Path:
    def demo_chain(suffix: str) -> dict[str, Any]:
        """The demo's parse -> window -> model; each target gets its own (one window
        processor serves one target)."""
        return {
            f"csv{suffix}": {"type": "parse", "format": "csv",
                             "columns": ["machineId", "deviceId", "value", "epochMillis"]},
            f"windows{suffix}": {"type": "window", "size": WINDOW, "time-field": "epochMillis",
                                 "key-fields": ["machineId", "deviceId"]},
            f"score{suffix}": {"type": "model", "store": str(tmp_path / "models"),
                               "model": "vibration", "input-field": "window",
                               "output-field": "anomaly"},
        }

    data = {
        "mqtt-broker": {"host": broker.host, "port": broker.port,
                        "client-id": f"burst-{run}-{prefix.rsplit('/', 1)[-1]}",
                        "clean-start": False,
                        # A flight window smaller than the burst: the broker sends a large
                        # first batch, then small ones as acks free the window, and large and
                        # small batches are in flight together (the overtaking case).
                        "receive-maximum": 300},
        "subscriptions": {f"{prefix}/{run}/{TOPIC}": {"qos": 1, "target": ["scored", "alerts"]}},
        "processors": {**demo_chain(""), **demo_chain("-a"),
                       "anomalies": {"type": "filter", "field": "anomaly", "equals": 1}},
        "targets": {
            "scored": {"type": "file", "path": str(tmp_path / f"scored-{run}.jsonl"),
                       "processors": ["csv", "windows", "score"]},
            "alerts": {"type": "mqtt", "topic": f"{prefix}/{run}/alerts",
                       "processors": ["csv-a", "windows-a", "score-a", "anomalies"]},
        },
        "dead-letter": {"path": str(tmp_path / f"dead-{run}.jsonl")},
        "spool": {"path": str(tmp_path / f"spool-{run}")},
        "http": {"port": 0},
    }
    path = tmp_path / f"{run}.json"
    path.write_text(json.dumps(data))
    return path


def payloads(rows: list[dict[str, str]]) -> list[bytes]:
    return [f"{MACHINE},{r['id']},{r['value']},{r['ts']}".encode() for r in rows]


def read_scored(path: Path) -> dict[tuple[str, int], tuple[list[float], int]]:
    scored: dict[tuple[str, int], tuple[list[float], int]] = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        key = (r["deviceId"], r["epochMillis"])
        assert key not in scored, f"{key} scored twice"
        scored[key] = (r["window"], r["anomaly"])
    return scored


def replay(tmp_path: Path, broker: Any, prefix: str, run: str, rows: list[dict[str, str]], *,
           burst: bool, expected_scored: int, expected_alerts: int
           ) -> tuple[dict[tuple[str, int], tuple[list[float], int]], list[dict[str, Any]]]:
    """Publish ``rows`` through `unsflow run`; the scored readings and the alerts."""
    cfg = config(tmp_path, broker, prefix, run)
    topic = f"{prefix}/{run}/{TOPIC}"
    messages = [(topic, p) for p in payloads(rows)]
    with Collector(broker.host, broker.port, f"{prefix}/{run}/alerts") as alerts:
        proc = UnsflowProcess(["run", str(cfg)], cwd=tmp_path, env={}).start()
        try:
            proc.wait_for_log("subscribed:")
            if burst:
                # stopped: the persistent session queues all of it; the restart drains it
                assert proc.terminate() == 0, proc.output
                assert publish(broker.host, broker.port, messages, qos=1) == len(messages)
                proc = UnsflowProcess(["run", str(cfg)], cwd=tmp_path, env={}).start()
            else:
                for start in range(0, len(messages), 30):  # about 300 readings/s
                    publish(broker.host, broker.port, messages[start:start + 30], qos=1)
                    time.sleep(0.1)
            out = tmp_path / f"scored-{run}.jsonl"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                done = out.exists() and len(out.read_text().splitlines()) >= expected_scored
                if done and len(alerts.messages) >= expected_alerts:
                    break
                time.sleep(0.1)
            time.sleep(0.5)  # anything beyond the expected counts shows up as a mismatch
            received = [json.loads(p) for _, p in alerts.messages]
        finally:
            assert proc.terminate() == 0, proc.output
            end_session(broker.host, broker.port,
                        json.loads(cfg.read_text())["mqtt-broker"]["client-id"])
    dead = tmp_path / f"dead-{run}.jsonl"
    assert not dead.exists() or not dead.read_text(), dead.read_text()
    return read_scored(tmp_path / f"scored-{run}.jsonl"), received


def shuffle_within(rows: list[dict[str, str]], places: int, seed: int) -> list[dict[str, str]]:
    """Each pump's readings moved by up to ``places`` of its own readings (5 s apart)."""
    rng = random.Random(seed)
    keyed = [(i + rng.uniform(0, places + 0.9), r) for pump in ("pump-1", "pump-2")
             for i, r in enumerate(r for r in rows if r["id"] == pump)]
    # interleave the pumps by time, as they arrive, then displace within each pump
    by_time = sorted(rows, key=lambda r: int(r["ts"]))
    slots = {id(r): k for k, r in enumerate(by_time)}
    order: dict[str, list[dict[str, str]]] = {}
    for _, r in sorted(keyed, key=lambda kr: kr[0]):
        order.setdefault(r["id"], []).append(r)
    out: list[dict[str, str] | None] = [None] * len(by_time)
    cursor = {pump: 0 for pump in order}
    for r in by_time:  # each pump keeps its slots in the stream, its readings reordered
        pump = r["id"]
        out[slots[id(r)]] = order[pump][cursor[pump]]
        cursor[pump] += 1
    return [r for r in out if r is not None]


def test_burst_and_shuffled_burst_score_like_a_slow_replay(mqtt_broker, topic_prefix,
                                                           tmp_path: Path) -> None:
    rows = manuela_rows()
    cut = int(len(rows) * 0.7)
    save_model(tmp_path / "models", rows[:cut])
    test_rows = rows[cut:]
    anomalies = {(r["id"], int(r["ts"])) for r in test_rows if int(r["label"]) == 1}
    full = len(test_rows) - 2 * (WINDOW - 1)  # each pump's first four readings warm up
    assert len(anomalies) >= 20

    slow, slow_alerts = replay(tmp_path, mqtt_broker, topic_prefix, "slow", test_rows,
                               burst=False, expected_scored=full, expected_alerts=len(anomalies))
    assert len(slow) == full
    alerted = {(a["deviceId"], a["epochMillis"]) for a in slow_alerts}
    assert alerted == anomalies and len(slow_alerts) == len(anomalies)

    burst, burst_alerts = replay(tmp_path, mqtt_broker, topic_prefix, "burst", test_rows,
                                 burst=True, expected_scored=full,
                                 expected_alerts=len(anomalies))
    assert burst == slow  # every reading: the same window, the same score
    assert sorted(json.dumps(a, sort_keys=True) for a in burst_alerts) == \
        sorted(json.dumps(a, sort_keys=True) for a in slow_alerts)

    shuffled_rows = shuffle_within(test_rows, places=2, seed=11)
    assert [r["ts"] for r in shuffled_rows] != [r["ts"] for r in test_rows]
    shuffled, shuffled_alerts = replay(tmp_path, mqtt_broker, topic_prefix, "shuffled",
                                       shuffled_rows, burst=True, expected_scored=full,
                                       expected_alerts=len(anomalies))
    # every reading is scored once, but for a few at the very start whose older readings
    # had not arrived yet (still warming then)
    first = {(r["id"], int(r["ts"])) for pump in ("pump-1", "pump-2")
             for r in sorted((r for r in test_rows if r["id"] == pump),
                             key=lambda r: int(r["ts"]))[:WINDOW + 2]}
    assert shuffled.keys() <= slow.keys() and slow.keys() - shuffled.keys() <= first
    assert not anomalies & first
    assert {(a["deviceId"], a["epochMillis"]) for a in shuffled_alerts} == anomalies
    assert len(shuffled_alerts) == len(anomalies)
    # A reading whose older readings all came before it has its in-order window, also
    # when it came after newer ones of its pump (it is put in its place by time).
    arrival = {(r["id"], int(r["ts"])): i for i, r in enumerate(shuffled_rows)}
    in_time = {pump: sorted(int(r["ts"]) for r in test_rows if r["id"] == pump)
               for pump in ("pump-1", "pump-2")}
    late = 0
    for (pump, ts), (window, _) in shuffled.items():
        k = in_time[pump].index(ts)
        older = [(pump, t) for t in in_time[pump][k - WINDOW + 1:k]]
        newer = [(pump, t) for t in in_time[pump][k + 1:k + 3]]
        if all(arrival[o] < arrival[(pump, ts)] for o in older):
            assert window == slow[(pump, ts)][0], (pump, ts)
            late += any(arrival[n] < arrival[(pump, ts)] for n in newer)
    assert late > 50
