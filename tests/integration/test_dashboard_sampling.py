"""Above its message-rate budget the dashboard samples the sensor topics (subscribed part of
the time) and still gets every alert: against the real Mosquitto, `unsflow dashboard` as a
user starts it."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.conftest import _free_ports
from tests.e2e.helpers import UnsflowProcess
from unsflow.testing import publish

pytestmark = pytest.mark.integration


def test_above_the_budget_sensor_topics_are_sampled_and_no_alert_is_missed(
        mqtt_broker, topic_prefix, tmp_path):
    (port,) = _free_ports(1)
    readings = f"{topic_prefix}/acme/plant1/area1/line1/+/vibration"
    alerts = f"{topic_prefix}/alerts/#"
    dash = UnsflowProcess(["dashboard", "--broker", f"{mqtt_broker.host}:{mqtt_broker.port}",
                           "--subscribe", readings, "--alerts", alerts, "--port", str(port),
                           "--max-rate", "50"], cwd=tmp_path, env={}).start()
    base = f"http://127.0.0.1:{port}"
    stop = threading.Event()
    published = [0]

    def load() -> None:  # about 400 readings a second over 4 topics, for as long as needed
        while not stop.is_set():
            t = int(time.time() * 1000)
            batch = [(f"{topic_prefix}/acme/plant1/area1/line1/m{i % 4}/vibration",
                      json.dumps({"value": 12.0 + i % 5, "timestamp": t}).encode())
                     for i in range(40)]
            publish(mqtt_broker.host, mqtt_broker.port, batch, qos=0)
            published[0] += len(batch)
            time.sleep(0.1)

    try:
        dash.wait_for_log("subscribing to", timeout=30)
        threading.Thread(target=load, daemon=True).start()

        def state() -> dict:
            return httpx.get(base + "/api/state", trust_env=False, timeout=5).json()

        deadline = time.monotonic() + 30
        status: dict = {}
        while time.monotonic() < deadline:
            status = state()["status"]
            if status.get("sampling", 1) < 0.5:
                break
            time.sleep(0.5)
        assert status["sampling"] < 0.5, status
        assert 200 < status["uns_rate"] < 800, status  # measured over subscribed windows
        # From here on it samples: what it takes is counted from now (before, it took
        # everything while it measured the rate, longer on a loaded machine).
        taken_before, published_before = status["messages"], published[0]
        # Alerts published now, while the sensor topics are mostly unsubscribed: all arrive.
        sent = [(f"{topic_prefix}/alerts/m{i}/vibration",
                 json.dumps({"value": 40 + i, "machine": f"m{i}", "sensor": "vibration",
                             "inference": {"label": 1, "version": 1}}).encode())
                for i in range(10)]
        for message in sent:
            publish(mqtt_broker.host, mqtt_broker.port, [message], qos=1)
            time.sleep(0.3)
        deadline = time.monotonic() + 10
        got: dict = {}
        while time.monotonic() < deadline:
            got = state()["line"]
            if len(got["alerts"]) >= len(sent):
                break
            time.sleep(0.3)
        assert got["alerts_total"] == len(sent)
        assert sorted(a["value"] for a in got["alerts"]) == [40 + i for i in range(10)]
        # While sampling, the dashboard took only a part of what was published to the
        # sensor topics.
        taken = state()["status"]["messages"] - taken_before - len(sent)
        published_since = published[0] - published_before
        assert taken < 0.6 * published_since, (taken, published_since)
    finally:
        stop.set()
        code = dash.terminate()
    assert code == 0, dash.output[-3000:]
