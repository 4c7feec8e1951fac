"""Kafka stops mid-stream and comes back: the bridge loses nothing.

A Kafka of the test's own (own data dir and ports, started by the project's
services script), because the test stops it.
"""

from __future__ import annotations

import collections
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import KafkaCluster, _free_ports, services, services_up
from tests.e2e.helpers import ChunkedPublisher, UnsflowProcess, dead_letter_seqs, report_scenario
from tests.e2e.test_kafka import wait_until_bridged

pytestmark = pytest.mark.e2e


@pytest.fixture
def own_kafka(tmp_path: Path) -> Iterator[tuple[KafkaCluster, dict[str, str]]]:
    port, sasl_port, controller_port = _free_ports(3)
    env = dict(os.environ)
    env.update(UNSFLOW_SERVICES_DIR=str(tmp_path / "services"), UNSFLOW_KAFKA_PORT=str(port),
               UNSFLOW_KAFKA_SASL_PORT=str(sasl_port),
               UNSFLOW_KAFKA_CONTROLLER_PORT=str(controller_port))
    info = services_up("kafka", env)
    yield KafkaCluster(info["bootstrap"], info["sasl_bootstrap"], info["ca_file"],
                       info["username"], info["password"], info["mechanism"], info["log"]), env
    services("down", "kafka", env)


def test_kafka_stopped_mid_stream_loses_nothing(mqtt_broker, own_kafka, topic_prefix, tmp_path):
    kafka, env = own_kafka
    topic = "uns.bridge"
    kafka.create_topic(topic, partitions=2)
    config: dict[str, Any] = {
        "mqtt-broker": {"host": mqtt_broker.host, "port": mqtt_broker.port,
                        "client-id": f"bridge-{os.getpid()}-{time.time_ns()}", "clean-start": False},
        "targets": {"bridge": {"type": "kafka", "bootstrap-servers": kafka.bootstrap,
                               "topic": topic, "key": "{levels[3]}", "delivery-timeout": 5}},
        "subscriptions": {f"{topic_prefix}/#": {"qos": 1, "target": "bridge"}},
        "dead-letter": {"path": str(tmp_path / "dead.jsonl")},
    }
    path = tmp_path / "bridge.json"
    path.write_text(json.dumps(config))
    proc = UnsflowProcess(["run", str(path)], cwd=tmp_path, env={}).start()
    total = 6000
    # Paced over ~10 s, so that publishing goes on before, during and after the outage.
    publisher = ChunkedPublisher(mqtt_broker.host, mqtt_broker.port, f"{topic_prefix}/site1/m",
                                 total, chunk=250, pause=0.4)
    try:
        wait_until_bridged(kafka, topic, mqtt_broker, f"{topic_prefix}/warmup/x/y", proc)
        publisher.start()
        while publisher.published < 1000:
            time.sleep(0.05)
        stopped_at = publisher.published
        services("down", "kafka", env)  # SIGTERM: a clean stop, data kept
        time.sleep(8)  # longer than delivery-timeout: batches fail and are retried
        services_up("kafka", env)
        publisher.join(120)
        records = kafka.consume(topic, total + 1, timeout=120)
    finally:
        code = proc.terminate()
        publisher.join(5)
    assert code == 0, proc.output[-3000:]
    assert stopped_at < total, "Kafka stopped after publishing ended; the test proved nothing"
    seqs = collections.Counter(json.loads(r.value())["seq"] for r in records
                               if r.value() != b"warmup")
    report_scenario("5. Kafka stopped, then back", total, seqs,
                    dead_letter_seqs(tmp_path / "dead.jsonl"),
                    note=f"stopped after {stopped_at} published")
    assert "retry" in proc.output  # the outage was seen and retried, not skipped
    assert not (tmp_path / "dead.jsonl").exists() or not (tmp_path / "dead.jsonl").read_text()
