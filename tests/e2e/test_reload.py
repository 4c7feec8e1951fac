"""`unsflow run` picks up a changed config file on SIGHUP; an inline config has nothing
to reload and says so."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from tests.e2e.helpers import UnsflowProcess
from unsflow.testing import publish

pytestmark = pytest.mark.e2e


def pipeline(broker, prefix: str, out: Path, filters: list[str]) -> dict:
    return {
        "mqtt-broker": {"host": broker.host, "port": broker.port},
        "targets": {"out": {"type": "file", "path": str(out)}},
        "subscriptions": {f"{prefix}/{f}": {"qos": 1, "target": "out"} for f in filters},
        "dead-letter": {"path": str(out.parent / "dead.jsonl")},
        "http": {"port": 0},
        "reload": {"interval": 0},  # polling off: only SIGHUP reloads
    }


def topics(out: Path) -> list[str]:
    return [json.loads(x)["_topic"] for x in out.read_text().splitlines()] if out.exists() else []


def test_sighup_reloads_the_changed_file(mqtt_broker, topic_prefix, tmp_path):
    out = tmp_path / "out.jsonl"
    config = tmp_path / "pipeline.json"
    config.write_text(json.dumps(pipeline(mqtt_broker, topic_prefix, out, ["a"])))
    proc = UnsflowProcess(["run", str(config)], cwd=tmp_path, env={}).start()
    try:
        proc.wait_for_log("subscribed:")
        config.write_text(json.dumps(pipeline(mqtt_broker, topic_prefix, out, ["a", "b"])))
        time.sleep(2.5)
        assert "config reloaded" not in proc.output  # interval 0: no polling
        proc.proc.send_signal(signal.SIGHUP)
        proc.wait_for_log("config reloaded", timeout=20)
        publish(mqtt_broker.host, mqtt_broker.port,
                [(f"{topic_prefix}/a", b'{"v": 1}'), (f"{topic_prefix}/b", b'{"v": 2}')])
        deadline = time.monotonic() + 20
        while len(topics(out)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.proc.send_signal(signal.SIGHUP)
        proc.wait_for_log("unchanged", timeout=20)
    finally:
        code = proc.terminate()
    assert code == 0, proc.output[-3000:]
    assert sorted(topics(out)) == [f"{topic_prefix}/a", f"{topic_prefix}/b"]
    assert f"subscriptions +{topic_prefix}/b" in proc.output


def test_sighup_with_an_inline_config_keeps_running(mqtt_broker, topic_prefix, tmp_path):
    out = tmp_path / "out.jsonl"
    inline = json.dumps(pipeline(mqtt_broker, topic_prefix, out, ["a"]))
    proc = UnsflowProcess(["run"], cwd=tmp_path, env={"EDGE_SUBSCRIPTION_CONFIG": inline}).start()
    try:
        proc.wait_for_log("subscribed:")
        proc.proc.send_signal(signal.SIGHUP)
        proc.wait_for_log("no file to reload")
        publish(mqtt_broker.host, mqtt_broker.port, [(f"{topic_prefix}/a", b'{"v": 1}')])
        deadline = time.monotonic() + 20
        while not topics(out) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        code = proc.terminate()
    assert code == 0, proc.output[-3000:]
    assert topics(out) == [f"{topic_prefix}/a"]
