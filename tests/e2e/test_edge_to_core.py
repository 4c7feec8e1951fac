"""Factory to core, for real: MQTT and a line database at the factory, MirrorMaker 2 over
SASL_SSL to the core cluster, unsflow writing the core's lake in MinIO.

    unsflow simulate -> Mosquitto -> unsflow -> factory Kafka ═MM2═> core Kafka -> unsflow -> MinIO
    PostgreSQL -> Debezium ───────────────────┘                                  (parse: debezium)

One topology per module (tests/edge_core.py): the core cluster, PostgreSQL,
Debezium and MirrorMaker 2 are this module's own (own data dir, free ports),
so the fault tests stop, kill and restart them; the factory cluster is the
shared ``kafka`` service, which nothing here stops. Every test has its own
factory topic (created up front, so MirrorMaker has mirrored it before the
test starts), consumer group and bucket.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import ChunkedPublisher, UnsflowProcess, dead_letter_seqs, report_scenario
from tests.e2e.test_kafka import wait_for_s3_rows
from tests.edge_core import TABLES, EdgeCore
from unsflow.testing import publish

pytestmark = pytest.mark.e2e

IOT_TOPICS = ("stream", "mm2-kill", "core-stop", "unsflow-kill")
DOCS = Path(__file__).parents[2] / "docs" / "components" / "edge-to-core.md"


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"{what}: not within {timeout} s")


@pytest.fixture(scope="module")
def edge_core(kafka) -> Iterator[EdgeCore]:
    """The topology, with every test's factory topic already mirrored to core."""
    ec = EdgeCore().start()
    try:
        factory_topics = [ec.factory_topic(name) for name in IOT_TOPICS] + ec.cdc_topics(core=False)
        for topic in factory_topics:
            ec.factory.create_topic(topic)
        # MirrorMaker looks for new topics every 5 s and creates them on core.
        wanted = {ec.core_topic(t) for t in factory_topics}
        wait_for(lambda: wanted <= ec.core.topics(), 60,
                 f"MirrorMaker creating {sorted(wanted)} on core")
        yield ec
    finally:
        ec.close()


def run(config: dict[str, Any], cwd: Path, name: str, env: dict[str, str]) -> UnsflowProcess:
    path = cwd / f"{name}.json"
    path.write_text(json.dumps(config, indent=2))
    return UnsflowProcess(["run", str(path)], cwd=cwd, env=env).start()


EXAMPLES = Path(__file__).parents[2] / "examples"


def example(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((EXAMPLES / name).read_text())
    return loaded


def on_minio(target: dict[str, Any], minio, bucket: str) -> dict[str, Any]:
    """An example's lake target on the test's MinIO and bucket, flushing within a second."""
    return {**target, "s3-bucket": bucket, "endpoint": minio.endpoint, "region": minio.region,
            "batching": {"max-records": 2000, "max-age": 1}}


def bridge_config(ec: EdgeCore, broker, mqtt_filter: str, topic: str,
                  tmp_path: Path) -> dict[str, Any]:
    """Factory: examples/mqtt-to-kafka.json, hosts, topic and subscription aside."""
    config = example("mqtt-to-kafka.json")
    config["mqtt-broker"].update(host=broker.host, port=broker.port, **{"client-id": f"bridge-{topic}"})
    (target,) = config["targets"].values()
    target.update(topic=topic, **{"bootstrap-servers": ec.factory.sasl_bootstrap,
                                  "ca-file": ec.factory.info["ca_file"]})
    (subscription,) = config["subscriptions"].values()
    config["subscriptions"] = {mqtt_filter: subscription}
    config["dead-letter"] = {"path": str(tmp_path / "bridge-dead.jsonl")}
    return config


def core_example(ec: EdgeCore, source: str, minio, bucket: str, tmp_path: Path,
                 **changes: Any) -> dict[str, Any]:
    """One source of examples/core-kafka-to-lake.json with its target (and processors), on
    this module's core cluster and the test's bucket."""
    config = example("core-kafka-to-lake.json")
    src = config["sources"][source]
    src.update({"bootstrap-servers": ec.core.sasl_bootstrap, "ca-file": ec.core.info["ca_file"],
                **changes})
    target = src["target"]
    return {"sources": {source: src},
            "processors": config["processors"] if source == "core-cdc" else {},
            "targets": {target: on_minio(config["targets"][target], minio, bucket)},
            "dead-letter": {"path": str(tmp_path / f"{source}-dead.jsonl")}}


def iot_lake_config(ec: EdgeCore, topic: str, minio, bucket: str,
                    tmp_path: Path) -> dict[str, Any]:
    """Core: the mirrored UNS topic into the lake."""
    return core_example(ec, "core-uns", minio, bucket, tmp_path, topics=[ec.core_topic(topic)],
                        **{"group-id": f"lake-{topic}"})


def cdc_lake_config(ec: EdgeCore, minio, bucket: str, tmp_path: Path,
                    group: str) -> dict[str, Any]:
    """Core: the mirrored change events into the lake, one partition per table."""
    pattern = re.escape(ec.core_topic(ec.cdc_prefix) + ".public.") + ".*"
    return core_example(ec, "core-cdc", minio, bucket, tmp_path,
                        **{"group-id": group, "topic-pattern": pattern})


def warm_up(ec: EdgeCore, broker, mqtt_topic: str, minio, bucket: str,
            procs: list[UnsflowProcess]) -> None:
    """Publish a marker until it is in the lake: every hop is connected and subscribed."""
    fs = minio.arrow_filesystem()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        publish(broker.host, broker.port, [(mqtt_topic, b"warmup")])
        rows = wait_for_s3_rows(fs, bucket, lambda r: any(x.get("value") == "warmup" for x in r),
                                timeout=3)
        if any(r.get("value") == "warmup" for r in rows):
            return
    raise AssertionError("the warm-up marker did not reach the lake within 90 s:\n"
                         + "\n".join(p.output[-2000:] for p in procs))


def stop_all(*procs: UnsflowProcess) -> None:
    codes = [p.terminate() for p in procs]
    for p, code in zip(procs, codes):
        assert code == 0, p.output[-3000:]


# -- the numbered stream -----------------------------------------------------


def test_simulator_stream_reaches_the_core_lake_and_groups_move_to_core(
        edge_core, mqtt_broker, minio, s3_bucket, topic_prefix, tmp_path):
    ec = edge_core
    topic = ec.factory_topic("stream")
    env = ec.secrets_env(minio)
    bridge = run(bridge_config(ec, mqtt_broker, f"{topic_prefix}/#", topic, tmp_path),
                 tmp_path, "bridge", env)
    lake = run(iot_lake_config(ec, topic, minio, s3_bucket, tmp_path), tmp_path, "lake", env)
    total = 6000
    try:
        warm_up(ec, mqtt_broker, f"{topic_prefix}/warmup", minio, s3_bucket, [bridge, lake])
        sim = subprocess.run(
            [sys.executable, "-m", "unsflow.cli", "simulate", "--host", mqtt_broker.host,
             "--port", str(mqtt_broker.port), "--prefix", topic_prefix, "--machines", "10",
             "--rate", "3000", "--count", str(total)],
            capture_output=True, text=True, timeout=120, check=False)
        assert sim.returncode == 0, sim.stdout + sim.stderr
        assert f"published {total} messages" in sim.stdout + sim.stderr
        fs = minio.arrow_filesystem()
        rows = wait_for_s3_rows(fs, s3_bucket, lambda r: len(readings(r)) >= total, timeout=90)
    finally:
        stop_all(lake, bridge)
    got = collections.Counter((r["_topic"], r["timestamp"]) for r in readings(rows))
    assert len(got) == total, f"{len(got)} of {total} readings in the lake"
    assert len({t for t, _ in got}) == 20  # 10 machines x 2 sensors, each its own topic
    assert max(got.values()) == 1  # no fault here: exactly once
    assert_group_moves_to_core(ec, topic, total)


def readings(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("sensor") is not None]


def assert_group_moves_to_core(ec: EdgeCore, topic: str, total: int) -> None:
    """A group that read the factory topic finds its offset translated on core."""
    from confluent_kafka import Consumer, TopicPartition

    group = f"mover-{ec.run_id}"
    end = ec.factory.end_offsets(topic)
    assert end >= total
    consumer = Consumer(ec.factory.client_config(**{"group.id": group,
                                                    "enable.auto.commit": False}))
    read = 0
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        while read < end:
            read += len([r for r in consumer.consume(1000, 1.0) if r.error() is None])
        consumer.commit(offsets=[TopicPartition(topic, 0, read)], asynchronous=False)
    finally:
        consumer.close()
    core = Consumer(ec.core.client_config(**{"group.id": group}))
    try:
        tp = TopicPartition(ec.core_topic(topic), 0)
        # Checkpoints every 5 s, offsets synced every 5 s, new groups found every 5 s.
        translated = wait_for(lambda: (o := core.committed([tp], timeout=10)[0].offset) > 0 and o,
                              60, f"group {group} synced to core")
    finally:
        core.close()
    print(f"\ngroup {group}: factory offset {read}, translated on core {translated}")
    # At or before the factory offset, never after: nothing is skipped. MirrorMaker
    # keeps an offset sync at most every offset.lag.max (100) records, fewer in a burst.
    assert 0 < translated <= read, (read, translated)
    assert read - translated <= 500, (read, translated)


# -- change data capture -------------------------------------------------------


def current_state_sql() -> str:
    """The query of docs/components/edge-to-core.md, as documented."""
    text = DOCS.read_text()
    match = re.search(r"<!-- current-state -->\s*```sql\n(.*?)```", text, re.DOTALL)
    assert match, f"{DOCS} has no current-state query"
    return match.group(1)


def lake_state(minio, bucket: str, table: str) -> dict[int, dict[str, Any]]:
    """The documented DuckDB query over the table's change log in MinIO: id -> row."""
    import duckdb

    from unsflow.lake import open_lake

    changes = open_lake(f"{bucket}/cdc/db=line/schema=public/table={table}",
                        filesystem=minio.arrow_filesystem())
    con = duckdb.connect()
    con.register("changes", changes.to_table())
    result = con.execute(current_state_sql())
    names = [d[0] for d in result.description]
    return {row["id"]: row for row in (dict(zip(names, r)) for r in result.fetchall())}


def normal(value: Any) -> Any:
    """Debezium writes timestamptz as ISO text; the database gives datetimes."""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC)
    if isinstance(value, str) and value.endswith("Z") and "T" in value:
        return dt.datetime.fromisoformat(value)
    return value


def assert_lake_equals_database(ec: EdgeCore, minio, bucket: str) -> int:
    from unsflow.testing.linedb import table_rows

    compared = 0
    for table in TABLES:
        db = {r["id"]: r for r in table_rows(ec.postgres["dsn"], table)}
        lake = lake_state(minio, bucket, table)
        assert set(lake) == set(db), (table, sorted(set(db) ^ set(lake))[:20])
        for key, row in db.items():
            assert {c: normal(v) for c, v in lake[key].items()} == \
                   {c: normal(v) for c, v in row.items()}, (table, key)
        compared += len(db)
    return compared


def change_events(rows: list[dict[str, Any]]) -> collections.Counter:
    """(table, op, id, revision) of every change event in the lake, counted."""
    return collections.Counter((r["__table"], r["__op"], r["id"], r["revision"])
                               for r in rows if r.get("__op") in ("c", "u", "d"))


def wait_for_changes(minio, bucket: str, expected: set[tuple[str, str, int, int]],
                     timeout: float) -> collections.Counter:
    fs = minio.arrow_filesystem()
    rows = wait_for_s3_rows(fs, bucket, lambda r: expected <= set(change_events(r)),
                            timeout=timeout)
    return change_events(rows)


def test_cdc_lake_state_equals_the_database(edge_core, minio, s3_bucket, tmp_path):
    from unsflow.testing.linedb import LineDbGenerator

    ec = edge_core
    lake = run(cdc_lake_config(ec, minio, s3_bucket, tmp_path, f"cdc-{ec.run_id}-state"),
               tmp_path, "cdc", ec.secrets_env(minio))
    try:
        gen = LineDbGenerator(ec.postgres["dsn"], rate=400, workers=4, seed=1)
        stats = gen.run(seconds=5)
        expected = {(c.table, c.op, c.id, c.revision) for c in gen.committed}
        assert stats.changes.get("u") and stats.changes.get("d"), stats
        events = wait_for_changes(minio, s3_bucket, expected, timeout=120)
    finally:
        stop_all(lake)
    missing = expected - set(events)
    assert not missing, f"{len(missing)} committed changes not in the lake, e.g. {sorted(missing)[:10]}"
    compared = assert_lake_equals_database(ec, minio, s3_bucket)
    assert compared > 1000
    dead = tmp_path / "core-cdc-dead.jsonl"
    assert not dead.exists() or not dead.read_text(), dead.read_text()[:2000]


# -- faults ------------------------------------------------------------------


def iot_fault(ec: EdgeCore, broker, minio, bucket: str, tmp_path: Path, topic_prefix: str,
              name: str, topic_name: str, fault: Callable[[dict[str, UnsflowProcess]], str],
              total: int = 4000) -> None:
    """A numbered QoS 1 stream through the whole path, ``fault`` mid-stream; nothing lost."""
    topic = ec.factory_topic(topic_name)
    env = ec.secrets_env(minio)
    procs = {"bridge": run(bridge_config(ec, broker, f"{topic_prefix}/#", topic, tmp_path),
                           tmp_path, "bridge", env)}
    lake_config = iot_lake_config(ec, topic, minio, bucket, tmp_path)
    # A killed member's partitions go to the next one when its session times out:
    # 6 s (the broker's minimum) instead of librdkafka's 45 s.
    lake_config["sources"]["core-uns"]["consumer-config"] = {"session.timeout.ms": 6000}
    procs["lake"] = run(lake_config, tmp_path, "lake", env)
    publisher = ChunkedPublisher(broker.host, broker.port, f"{topic_prefix}/site1/m", total,
                                 chunk=200, pause=0.2)
    try:
        warm_up(ec, broker, f"{topic_prefix}/warmup", minio, bucket, list(procs.values()))
        publisher.start()
        wait_for(lambda: publisher.published >= total // 4, 60, "a quarter published")
        at = publisher.published
        note = fault(procs)
        publisher.join(120)
        fs = minio.arrow_filesystem()
        rows = wait_for_s3_rows(fs, bucket, lambda r: set(range(total)) <= seqs(r).keys(),
                                timeout=120)
    finally:
        publisher.join(5)
        stop_all(*procs.values())
    assert at < total, "the fault came after publishing ended; the test proved nothing"
    report_scenario(name, total, seqs(rows), dead_letter_seqs(tmp_path / "core-uns-dead.jsonl"),
                    note=f"after {at} published; {note}")


def seqs(rows: list[dict[str, Any]]) -> collections.Counter:
    return collections.Counter(r["seq"] for r in rows if isinstance(r.get("seq"), int))


def test_fault_mm2_killed_and_restarted(edge_core, mqtt_broker, minio, s3_bucket,
                                        topic_prefix, tmp_path):
    ec = edge_core

    def fault(procs: dict[str, UnsflowProcess]) -> str:
        ec.kill("mm2")  # SIGKILL: its last second of source offsets is not committed
        down = time.monotonic()
        ec.start_service("mm2")  # waits for its first heartbeat on core
        return f"MirrorMaker 2 SIGKILLed, back after {time.monotonic() - down:.1f} s"

    iot_fault(ec, mqtt_broker, minio, s3_bucket, tmp_path, topic_prefix,
              "11. MirrorMaker 2 killed", "mm2-kill", fault)


def test_fault_core_cluster_stopped_and_restarted(edge_core, mqtt_broker, minio, s3_bucket,
                                                  topic_prefix, tmp_path):
    ec = edge_core

    def fault(procs: dict[str, UnsflowProcess]) -> str:
        ec.stop_service("kafka-core")  # SIGTERM: a controlled shutdown, data kept
        time.sleep(5)  # the outage: MirrorMaker and the lake's consumer find no cluster
        ec.start_service("kafka-core")
        return "core cluster down for 5 s"

    iot_fault(ec, mqtt_broker, minio, s3_bucket, tmp_path, topic_prefix,
              "12. core cluster stopped", "core-stop", fault)


def test_fault_core_unsflow_killed_and_restarted(edge_core, mqtt_broker, minio, s3_bucket,
                                                 topic_prefix, tmp_path):
    ec = edge_core

    def fault(procs: dict[str, UnsflowProcess]) -> str:
        lake = procs["lake"]
        lake.kill9()
        # Same config, same group: it goes on from the offsets committed after durable writes.
        procs["lake"] = UnsflowProcess(lake.args, cwd=lake.cwd, env=ec.secrets_env(minio)).start()
        return "the core unsflow SIGKILLed and started again"

    iot_fault(ec, mqtt_broker, minio, s3_bucket, tmp_path, topic_prefix,
              "13. core unsflow killed", "unsflow-kill", fault)


def test_fault_postgres_restarted_mid_transactions(edge_core, minio, s3_bucket, tmp_path):
    from unsflow.testing.linedb import LineDbGenerator

    ec = edge_core
    lake = run(cdc_lake_config(ec, minio, s3_bucket, tmp_path, f"cdc-{ec.run_id}-pg"),
               tmp_path, "cdc", ec.secrets_env(minio))
    gen = LineDbGenerator(ec.postgres["dsn"], rate=300, workers=4, seed=2)
    stop = threading.Event()
    runner = threading.Thread(target=gen.run, kwargs={"stop": stop}, daemon=True)
    try:
        runner.start()
        wait_for(lambda: gen.stats.transactions >= 300, 30, "300 transactions before the restart")
        at = gen.stats.transactions
        ec.stop_service("postgres")  # fast shutdown: open transactions roll back
        ec.start_service("postgres")
        wait_for(lambda: gen.stats.transactions >= at + 600, 60,
                 "600 transactions after the restart")
        stop.set()
        runner.join(30)
        committed = [(c.table, c.op, c.id, c.revision) for c in gen.committed]
        events = wait_for_changes(minio, s3_bucket, set(committed), timeout=120)
    finally:
        stop.set()
        stop_all(lake)
    assert gen.stats.reconnects > 0, "the generator never saw the restart"
    index = {change: i for i, change in enumerate(committed)}
    delivered = collections.Counter({index[e]: n for e, n in events.items() if e in index})
    report_scenario("14. PostgreSQL restarted", len(committed), delivered,
                    note=f"row changes; restart after {at} transactions, "
                         f"{gen.stats.in_doubt} in doubt")
    assert_lake_equals_database(ec, minio, s3_bucket)
