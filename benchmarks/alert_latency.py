"""Alert latency: MQTT in -> window -> model -> filter -> MQTT out, at a steady rate.

Scenarios ``alerts-2000`` and ``alerts-10000`` (messages/s in; one JSON line each):

- A Mosquitto of the benchmark's own; a model store with the anomaly model of the
  tests (a decision tree over windows of 5 vibration readings, as ONNX; its
  newest reading a spike x2.5 is an anomaly).
- ``unsflow run``: QoS 1 subscription -> ``window`` (5 readings per machine and
  sensor) -> ``model`` (in process, onnxruntime) -> ``filter`` (anomaly == 1)
  -> ``mqtt`` target publishing the alert (QoS 1).
- The benchmark publishes readings of 20 machines at the given rate for the given
  time (QoS 1, paced every millisecond), one in 20 a spike (one machine's per round,
  so alerts spread evenly over time); each reading carries
  the time it was sent. A subscriber in the same process takes the alerts and
  stamps their arrival (the MQTT source's receive time): latency = arrival - sent,
  for every alert (about 5% of the readings).

The goal is a p99 under 20 ms at 2,000 msg/s; at 10,000 msg/s the figure is stated.
There is no reference to divide by: the figure is a time.

Run one: python -m benchmarks --only alerts-2000
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from benchmarks.common import (
    REPO,
    Broker,
    Unsflow,
    cpu_seconds,
    own_broker,
    peak_rss_mib,
    percentile,
)
from benchmarks.mqtt_to_parquet import BROKER_CONF
from unsflow.sources import _mqtt_wire as wire

MACHINES = 20
SPIKE_EVERY = 20


@contextlib.contextmanager
def environment(workdir: Path) -> Iterator[dict[str, Any]]:
    """A broker of its own and a model store holding the tests' anomaly model."""
    sys.path.insert(0, str(REPO))
    from tests.ml_models import save_model
    from unsflow.ml.store import ModelStore

    store = workdir / "models"
    save_model(ModelStore(str(store)), "anomaly")
    with own_broker(BROKER_CONF) as broker:
        yield {"broker": broker, "store": store}


def pipeline(broker: Broker, store: Path, tag: str) -> dict[str, Any]:
    return {
        "mqtt-broker": {"host": broker.host, "port": broker.port},
        "subscriptions": {f"bench/{tag}/in/+/vibration": {"qos": 1, "target": "alerts"}},
        "processors": {
            "windows": {"type": "window", "size": 5, "key-fields": ["machine", "sensor"],
                        "time-field": "timestamp"},
            "score": {"type": "model", "store": str(store), "model": "anomaly",
                      "input-field": "window", "output-field": "anomaly", "poll-interval": 0},
            "anomalies-only": {"type": "filter", "field": "anomaly", "equals": 1},
        },
        "targets": {"alerts": {"type": "mqtt", "mqtt-broker-host": broker.host,
                               "mqtt-broker-port": broker.port,
                               "topic": f"bench/{tag}/alerts/{{record[machine]}}",
                               "processors": ["windows", "score", "anomalies-only"]}},
    }


async def _drive(broker: Broker, tag: str, rate: float,
                 seconds: float) -> tuple[list[float], int, int]:
    """Publish the readings and collect the alerts; (latencies in s, readings sent, spikes
    that should be alerted)."""
    from unsflow.components import Context
    from unsflow.config.models import BrokerConfig
    from unsflow.sources.mqtt import MqttSource, MqttSourceConfig

    cfg = BrokerConfig.model_validate({"host": broker.host, "port": broker.port})
    alerts = MqttSource("bench-alerts", MqttSourceConfig(
        broker=cfg, subscriptions={f"bench/{tag}/alerts/#": 0}), Context(env={}))
    await alerts.start()
    await alerts.wait_ready(10)
    latencies: list[float] = []

    async def collect() -> None:
        while True:
            messages, token = await alerts.read()
            for m in messages:
                latencies.append(m.received_at - orjson.loads(m.payload)["sent"])
            alerts.ack(token)

    collector = asyncio.create_task(collect())
    reader, writer = await asyncio.open_connection(broker.host, broker.port)
    writer.write(wire.encode_connect(f"bench-readings-{os.getpid()}", v5=False,
                                     clean_start=True, keepalive=60))
    await reader.readexactly(4)

    async def swallow_acks() -> None:
        while await reader.read(65536):
            pass

    acks = asyncio.create_task(swallow_acks())
    rng = random.Random(7)
    level = [rng.uniform(10, 18) for _ in range(MACHINES)]
    sent = spikes = 0
    t0 = time.perf_counter()
    total = int(rate * seconds)
    while sent < total:
        due = min(total, int((time.perf_counter() - t0) * rate) + 1)
        packets = []
        while sent < due:
            m = sent % MACHINES
            level[m] = min(18.0, max(10.0, level[m] + rng.uniform(-1, 1)))
            # One machine spikes in each round: alerts spread evenly over time.
            spike = (sent // MACHINES + m) % SPIKE_EVERY == SPIKE_EVERY - 1
            value = level[m] * (2.5 if spike else 1.0)
            spikes += spike and sent // MACHINES >= 4  # a full window (5 readings) exists
            body = orjson.dumps({"machine": f"m{m:02d}", "sensor": "vibration",
                                 "value": round(value, 3), "timestamp": int(time.time() * 1000),
                                 "sent": time.time()})
            packets.append(wire.encode_publish(f"bench/{tag}/in/m{m:02d}/vibration", body, 1,
                                               sent % 65535 + 1))
            sent += 1
        writer.write(b"".join(packets))
        await asyncio.sleep(0.001)
    await writer.drain()
    await asyncio.sleep(2.0)  # the last alerts
    writer.close()
    acks.cancel()
    collector.cancel()
    await alerts.stop()
    return latencies, sent, spikes


def alerts(env: dict[str, Any], workdir: Path, rate: float, seconds: float,
           goal_ms: float | None) -> dict[str, Any]:
    tag = f"alerts{int(rate)}-{uuid.uuid4().hex[:6]}"
    run = Unsflow(pipeline(env["broker"], env["store"], tag), workdir, tag)
    try:
        run.start("subscribed:")
        cpu0 = cpu_seconds(run.pid)
        latencies, sent, expected = asyncio.run(_drive(env["broker"], tag, rate, seconds))
        cpu = cpu_seconds(run.pid) - cpu0
        peak = peak_rss_mib(run.pid)
    finally:
        run.stop()
    ms = [x * 1000 for x in latencies]
    p99 = percentile(ms, 99)
    return {
        "scenario": f"alert-latency-{int(rate)}", "messages": sent, "rate_in_msgs_per_s": rate,
        "alerts": len(ms), "alerts_expected": expected,
        "p50_ms": round(percentile(ms, 50), 2), "p99_ms": round(p99, 2),
        "max_ms": round(max(ms), 2) if ms else None,
        "unsflow_cpu_s": round(cpu, 2), "unsflow_cpu_us_per_msg": round(cpu / sent * 1e6, 2),
        "unsflow_peak_rss_mib": round(peak, 1),
        "goal": f"p99 < {goal_ms:g} ms" if goal_ms else "stated",
        "met": (p99 < goal_ms and len(ms) >= expected * 0.95) if goal_ms else None,
    }


def warm_up(env: dict[str, Any], workdir: Path) -> None:
    alerts(env, workdir, 1000, 2, None)


def scenarios(quick: bool = False) -> list[tuple[str, Any]]:
    seconds = 4 if quick else 15
    return [
        ("alerts-2000", lambda e, w: alerts(e, w, 2000, seconds, 20.0)),
        ("alerts-10000", lambda e, w: alerts(e, w, 10000, seconds, None)),
    ]


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    from benchmarks.__main__ import main

    main(default_modules=["alert_latency"])
