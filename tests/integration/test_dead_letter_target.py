"""`dead-letter.target`: dead-letter entries go to a target (MQTT topic, Kafka topic), not a file.

A pipeline fed by a MemorySource parses JSON strictly; the bad payloads must
arrive on the real broker as dead-letter entries (original payload, topic,
error, stage, attempts), and their source batch must be acknowledged only
after that. An entry the dead-letter target refuses for good falls back to
the file with both reasons.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from unsflow.components import Context
from unsflow.config.loading import parse_config
from unsflow.engine.pipeline import Pipeline
from unsflow.errors import ConfigError
from unsflow.message import Message
from unsflow.testing import Collector, MemorySource

pytestmark = pytest.mark.integration


def pipeline_config(tmp_path: Path, dead_target: dict[str, Any]) -> Any:
    return parse_config({
        "processors": {"strict": {"type": "parse", "format": "json"}},
        "targets": {"out": {"type": "file", "path": str(tmp_path / "out.jsonl"),
                            "processors": ["strict"]},
                    "dlq": dead_target},
        "subscriptions": {"plant/#": {"qos": 1, "target": "out"}},
        "dead-letter": {"path": str(tmp_path / "fallback.jsonl"), "target": "dlq"},
        "http": {"port": 0},
    }, env={})


async def run_until_acked(pipeline: Pipeline, source: MemorySource, batches: int) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    try:
        for _ in range(1500):
            if source.acked_batches >= batches:
                break
            await asyncio.sleep(0.02)
        assert source.acked_batches == batches, pipeline.summary()
    finally:
        stop.set()
        await task


def batch() -> list[Message]:
    now = time.time()
    return [Message("plant/l1/press/vib", b'{"seq": 1}', 1, received_at=now),
            Message("plant/l1/press/vib", b"not json", 1, received_at=now),
            Message("plant/l1/oven/temp", b"\xff\xfe", 1, received_at=now),
            Message("plant/l1/oven/temp", b'{"seq": 2}', 1, received_at=now)]


def test_an_unknown_dead_letter_target_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        parse_config({"targets": {"out": {"type": "file", "path": "x"}},
                      "subscriptions": {"a/#": {"target": "out"}},
                      "dead-letter": {"target": "nope"}}, env={})
    assert "dead-letter.target" in str(err.value) and "'nope'" in str(err.value)


async def test_dead_letter_entries_are_published_to_mqtt(mqtt_broker, topic_prefix, tmp_path):
    dlq = {"type": "mqtt", "mqtt-broker-host": mqtt_broker.host, "mqtt-broker-port": mqtt_broker.port,
           "topic": f"{topic_prefix}/deadletter", "qos": 1}
    source = MemorySource("mem")
    pipeline = Pipeline(pipeline_config(tmp_path, dlq), Context(env={}), source=source)
    with Collector(mqtt_broker.host, mqtt_broker.port, f"{topic_prefix}/deadletter") as out:
        source.push(batch())
        await run_until_acked(pipeline, source, 1)
        got = [json.loads(payload) for _, payload in await asyncio.to_thread(out.wait, 2, 20)]
    by_topic = {e["topic"]: e for e in got}
    assert by_topic["plant/l1/press/vib"]["payload"] == "not json"
    assert "not valid JSON" in by_topic["plant/l1/press/vib"]["error"]
    assert by_topic["plant/l1/oven/temp"]["payload_base64"] == "//4="
    assert "not valid UTF-8" in by_topic["plant/l1/oven/temp"]["error"]
    assert all(e["stage"] == "processor:strict" and e["attempts"] == 1 for e in got)
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 2
    assert not (tmp_path / "fallback.jsonl").exists()
    assert pipeline.dead_letter.count == 2


async def test_dead_letter_entries_go_to_kafka(kafka, kafka_topic, tmp_path):
    dlq = {"type": "kafka", "bootstrap-servers": kafka.bootstrap, "topic": kafka_topic}
    source = MemorySource("mem")
    pipeline = Pipeline(pipeline_config(tmp_path, dlq), Context(env={}), source=source)
    source.push(batch())
    await run_until_acked(pipeline, source, 1)
    records = await asyncio.to_thread(kafka.consume, kafka_topic, 2, 60)
    entries = sorted((json.loads(r.value()) for r in records), key=lambda e: e["topic"])
    assert [e["topic"] for e in entries] == ["plant/l1/oven/temp", "plant/l1/press/vib"]
    assert "not valid UTF-8" in entries[0]["error"] and "not valid JSON" in entries[1]["error"]


async def test_an_entry_the_target_refuses_falls_back_to_the_file(mqtt_broker, tmp_path):
    # A topic with a wildcard can never be published to: the target refuses every entry.
    dlq = {"type": "mqtt", "mqtt-broker-host": mqtt_broker.host, "mqtt-broker-port": mqtt_broker.port,
           "topic": "deadletter/{record[topic]}/#"}
    source = MemorySource("mem")
    pipeline = Pipeline(pipeline_config(tmp_path, dlq), Context(env={}), source=source)
    source.push(batch())
    await run_until_acked(pipeline, source, 1)
    kept = [json.loads(line) for line in (tmp_path / "fallback.jsonl").read_text().splitlines()]
    assert sorted(e["payload"] if "payload" in e else e["payload_base64"] for e in kept) == \
        ["//4=", "not json"]
    for entry in kept:
        assert "dead-letter target dlq refused it" in entry["error"]
        assert entry["stage"] == "processor:strict"
    assert pipeline.dead_letter.fallbacks == 2
