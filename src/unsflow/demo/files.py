"""The files ``unsflow demo`` writes into its directory, and the state it keeps there.

- ``sensors.yaml``: the simulator's config (``unsflow simulate --config``):
  four machines on two lines, vibration with a spike every 20th reading,
  temperature switched off. The user edits it to switch temperature on; the
  simulator reads it again within a second. Written once, kept afterwards.
- ``pipeline.json`` (with ``--kafka``: ``factory.json`` and ``core.json``):
  the pipeline(s), watched by ``unsflow run`` for changes (live reload).
  Written when missing or when the demo's ports or broker changed.
- ``demo.json``: what the demo chose (ports, topic prefix, an id for Kafka
  topic and group names), so that a second run finds the same setup.
- ``lake/``, ``models/``, ``spool/``, ``logs/``, ``truth.jsonl``: data,
  kept between runs.
"""

from __future__ import annotations

import json
import secrets
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "MACHINES",
    "MODEL",
    "DemoState",
    "alerts_root",
    "free_port",
    "pipeline_configs",
    "sensors_yaml",
]

MODEL = "vibration-anomaly"
# (machine, line): two lines of the same area, so the Line page shows the hierarchy.
MACHINES = [("press-1", "line1"), ("press-2", "line1"), ("extruder-1", "line2"),
            ("extruder-2", "line2")]
SPIKE_EVERY = 20
VIBRATION_LIMIT = 35.0
TEMPERATURE_LIMIT = 54.5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    """True when a server could listen on 127.0.0.1:``port`` (SO_REUSEADDR, as servers do:
    connections of a server that just stopped, in TIME_WAIT, do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class DemoState:
    """What a demo directory was set up with (``demo.json``)."""

    broker_host: str
    broker_port: int
    prefix: str
    metrics_port: int
    serve_port: int
    core_metrics_port: int
    demo_id: str
    kafka_bootstrap: str | None = None

    @classmethod
    def load(cls, directory: Path) -> DemoState | None:
        try:
            data = json.loads((directory / "demo.json").read_text())
            return cls(**data)
        except (OSError, ValueError, TypeError):
            return None

    def save(self, directory: Path) -> None:
        tmp = directory / "demo.json.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(directory / "demo.json")

    @classmethod
    def new(cls, broker_host: str, broker_port: int, prefix: str) -> DemoState:
        return cls(broker_host, broker_port, prefix, free_port(), free_port(), free_port(),
                   secrets.token_hex(3))


def _topic(prefix: str, rest: str) -> str:
    return f"{prefix.strip('/')}/{rest}" if prefix else rest


def alerts_root(state: DemoState) -> str:
    return _topic(state.prefix, "acme/plant1/alerts")


def sensors_yaml(state: DemoState, directory: Path, interval: float) -> str:
    """The simulator's config, with the comment that tells how to switch temperature on."""
    machines = "\n".join(f"  - {{name: {name}, line: {line}}}" for name, line in MACHINES)
    return f"""\
# unsflow demo: the machine sensors (read by `unsflow simulate --config`).
#
# Switch the temperature sensors on: change `enabled: false` to `enabled: true`
# under temperature below and save. The simulator reads this file again within
# a second; the dashboard shows the new charts as the readings arrive.
# (The broker and the topic prefix come from `unsflow demo`'s options.)
interval: {interval:g}
seed: {int(state.demo_id, 16) % 100000}
ground-truth: {json.dumps(str(directory / "truth.jsonl"))}
enterprise: acme
site: plant1
area: area1
machines:
{machines}
sensors:
  - name: vibration
    unit: mm/s
    low: 10
    high: 18
    step: 1
    failures:
      - {{mode: spike, every: {SPIKE_EVERY}}}
  - name: temperature
    unit: "°C"
    low: 45
    high: 55
    step: 0.5
    enabled: false
"""


def _processors(directory: Path) -> dict[str, Any]:
    return {
        "windows": {"type": "window", "size": 5, "key-fields": ["machine", "sensor"],
                    "time-field": "timestamp"},
        "anomaly-model": {"type": "model", "store": str(directory / "models"), "model": MODEL,
                          "output": "all", "poll-interval": 5},
        "anomalies-only": {"type": "filter", "field": "inference.label", "equals": 1},
        "vibration-limit": {"type": "threshold", "match": {"sensor": "vibration"},
                            "above": VIBRATION_LIMIT},
        "temperature-limit": {"type": "threshold", "match": {"sensor": "temperature"},
                              "above": TEMPERATURE_LIMIT},
    }


def _alert_targets(state: DemoState) -> dict[str, Any]:
    base = {"type": "mqtt", "mqtt-broker-host": state.broker_host,
            "mqtt-broker-port": state.broker_port, "qos": 1}
    root = alerts_root(state)
    return {
        "anomaly-alerts": {**base, "topic": root + "/{record[machine]}/{record[sensor]}",
                           "processors": ["windows", "anomaly-model", "anomalies-only"]},
        "vibration-alerts": {**base, "topic": root + "/{record[reading][machine]}/vibration",
                             "processors": ["vibration-limit"]},
        "temperature-alerts": {**base, "topic": root + "/{record[reading][machine]}/temperature",
                               "processors": ["temperature-limit"]},
    }


def _lake(directory: Path) -> dict[str, Any]:
    return {"type": "s3", "local-path": str(directory / "lake"), "format": "parquet",
            "partition-by": ["date", "hour"],
            "batching": {"max-age": 2.0}}


def pipeline_configs(state: DemoState, directory: Path, kafka: bool) -> dict[str, dict[str, Any]]:
    """File name -> config: ``pipeline.json``, or ``factory.json`` + ``core.json`` with Kafka."""
    vibration = _topic(state.prefix, "acme/plant1/+/+/+/vibration")
    temperature = _topic(state.prefix, "acme/plant1/+/+/+/temperature")
    common = {"dead-letter": {"path": str(directory / "deadletter.jsonl")},
              "spool": {"path": str(directory / "spool")}, "shutdown-timeout": 10.0,
              "reload": {"interval": 1.0}}
    # No persistent session: the demo stops its simulator before the pipeline (nothing is
    # published for it while it is down), and a session left behind on a shared broker
    # would queue for nobody.
    broker = {"host": state.broker_host, "port": state.broker_port,
              "client-id": f"unsflow-demo-{state.demo_id}", "clean-start": True,
              "session-expiry": 0}
    if not kafka:
        return {"pipeline.json": {
            "mqtt-broker": broker,
            "subscriptions": {
                vibration: {"qos": 1, "target": ["lake", "anomaly-alerts", "vibration-alerts"]},
                temperature: {"qos": 1, "target": ["lake", "temperature-alerts"]}},
            "processors": _processors(directory),
            "targets": {"lake": _lake(directory), **_alert_targets(state)},
            "http": {"host": "127.0.0.1", "port": state.metrics_port},
            **common}}
    topic = f"unsflow-demo-{state.demo_id}.readings"
    factory = {
        "mqtt-broker": broker,
        "subscriptions": {
            vibration: {"qos": 1, "target": ["to-kafka", "anomaly-alerts", "vibration-alerts"]},
            temperature: {"qos": 1, "target": ["to-kafka", "temperature-alerts"]}},
        "processors": _processors(directory),
        "targets": {"to-kafka": {"type": "kafka", "bootstrap-servers": state.kafka_bootstrap,
                                 "topic": topic, "key": "{record[machine]}"},
                    **_alert_targets(state)},
        "http": {"host": "127.0.0.1", "port": state.metrics_port},
        **common,
        "spool": {"path": str(directory / "spool" / "factory")},
        "dead-letter": {"path": str(directory / "deadletter-factory.jsonl")}}
    core = {
        "sources": {"factory-kafka": {
            "type": "kafka", "bootstrap-servers": state.kafka_bootstrap,
            "group-id": f"unsflow-demo-{state.demo_id}-lake", "topics": [topic],
            "topic-header": "mqtt.topic", "auto-offset-reset": "earliest", "target": "lake"}},
        "targets": {"lake": _lake(directory)},
        "http": {"host": "127.0.0.1", "port": state.core_metrics_port},
        **common,
        "spool": {"path": str(directory / "spool" / "core")},
        "dead-letter": {"path": str(directory / "deadletter-core.jsonl")}}
    return {"factory.json": factory, "core.json": core}
