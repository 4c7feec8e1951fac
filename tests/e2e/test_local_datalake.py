"""The front door: `unsflow run examples/local-datalake.json`, unchanged.

It runs against a broker of its own (started by the project's services
script in a private directory on a free port) because the example subscribes
to `#` with a fixed client id and a persistent session: on the shared test
broker it would collect every other test's messages.
"""

from __future__ import annotations

import collections
import time
from pathlib import Path

import pytest

from tests.e2e.helpers import (
    ChunkedPublisher,
    UnsflowProcess,
    dead_letter_seqs,
    report_scenario,
    wait_for_rows,
)
from unsflow.testing import publish_numbered

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).parents[2] / "examples" / "local-datalake.json"
TOTAL = 20_000


def start(cwd: Path, broker) -> UnsflowProcess:
    return UnsflowProcess(["run", str(EXAMPLE)], cwd=cwd,
                          env={"EDGE_BROKER_HOST": broker.host,
                               "EDGE_MQTT_PORT": str(broker.port)}).start()


def seqs(rows: list[dict]) -> collections.Counter:
    return collections.Counter(r["seq"] for r in rows if r.get("seq") is not None)


def assert_clean_datalake(root: Path) -> None:
    leftovers = [p for p in root.rglob("*") if p.is_file() and p.suffix != ".parquet"]
    assert not leftovers, f"partial or temporary files left: {leftovers[:5]}"


@pytest.mark.e2e
def test_20000_qos1_messages_all_become_rows(own_mqtt_broker, tmp_path):
    proc = start(tmp_path, own_mqtt_broker)
    try:
        proc.wait_for_log("subscribed:")
        assert publish_numbered(own_mqtt_broker.host, own_mqtt_broker.port, "plant/line1/press/vibration",
                                TOTAL, qos=1) == TOTAL
        rows = wait_for_rows(tmp_path / "datalake", lambda r: len(seqs(r)) >= TOTAL, timeout=120)
    finally:
        code = proc.terminate()
    assert code == 0, proc.output[-3000:]
    counts = seqs(rows)
    assert set(counts) == set(range(TOTAL)), f"missing: {sorted(set(range(TOTAL)) - set(counts))[:20]}"
    assert all(r["_topic"] == "plant/line1/press/vibration" for r in rows)
    assert_clean_datalake(tmp_path / "datalake")


@pytest.mark.e2e
def test_sigkill_mid_stream_loses_nothing(own_mqtt_broker, tmp_path):
    topic = "plant/line2/extruder/temperature"
    proc = start(tmp_path, own_mqtt_broker)
    publisher = ChunkedPublisher(own_mqtt_broker.host, own_mqtt_broker.port, topic, TOTAL)
    try:
        proc.wait_for_log("subscribed:")
        publisher.start()
        # Kill once some rows are durably written, mid-stream.
        rows = wait_for_rows(tmp_path / "datalake", lambda r: len(r) >= 1000, timeout=60)
        assert len(rows) >= 1000, proc.output[-3000:]
        proc.kill9()
        killed_at = publisher.published
        time.sleep(1.0)  # the broker queues what is published meanwhile
        restarted_at = publisher.published
        proc = start(tmp_path, own_mqtt_broker)
        proc.wait_for_log("subscribed:")
        publisher.join(120)
        assert publisher.published == TOTAL
        rows = wait_for_rows(tmp_path / "datalake", lambda r: len(seqs(r)) >= TOTAL, timeout=120)
    finally:
        code = proc.terminate()
        publisher.join(5)
    assert code == 0, proc.output[-3000:]
    counts = seqs(rows)
    report_scenario("1. kill -9 mid-stream", TOTAL, counts,
                    dead_letter_seqs(tmp_path / "datalake-deadletter.jsonl"),
                    note=f"killed after {killed_at}, restarted after {restarted_at}")
    assert killed_at < restarted_at < TOTAL, "publishing did not span the kill; nothing proved"
    assert_clean_datalake(tmp_path / "datalake")
