"""MirrorMaker 2, factory -> core: how fast it replicates a backlog over SASL_SSL.

Anchor: the Red Hat industrial edge pattern's 13K msg/s (20K devices, 3 source
clusters, 7 consumer groups), at the core.

Method (one run prints one JSON document):

1. A topology of its own (tests/edge_core.py, in a temporary directory on free
   ports): a factory and a core Kafka (the project's test Kafka, KRaft, one
   node each), MirrorMaker 2 in dedicated mode (`scripts/services.sh up mm2`:
   SASL_SSL with SCRAM-SHA-512 and TLS on both sides, tasks.max 2).
2. MirrorMaker is stopped; N records (~80-byte JSON, keyed by site, like the
   UNS bridge writes) are produced into a new 3-partition factory topic on the
   PLAINTEXT listener; MirrorMaker is started again (it finds the topic at
   start) and the clock runs from the first record on the core topic until the
   core topic's high watermarks add up to N (every record written with
   acks=all).
3. Raw, for scale: one confluent-kafka consumer reads the N records from the
   factory over SASL_SSL (what MirrorMaker's consumer side does), and one
   producer writes them to core over SASL_SSL (idempotent, acks=all, lz4);
   MirrorMaker can be no faster than the slower of the two.

Run: python benchmarks/mm2_throughput.py [--messages 300000] [--partitions 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))

from common import payload  # noqa: E402

from tests.edge_core import Cluster, EdgeCore  # noqa: E402

ANCHOR = 13000
SITES = ["site1", "site2", "site3"]


def sasl(cluster: Cluster, **extra: Any) -> dict[str, Any]:
    info = cluster.info
    return {"bootstrap.servers": cluster.sasl_bootstrap, "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": info["username"],
            "sasl.password": info["password"], "ssl.ca.location": info["ca_file"], **extra}


def preload(cluster: Cluster, topic: str, n: int) -> float:
    from confluent_kafka import Producer

    producer = Producer(cluster.client_config(**{"linger.ms": 20, "compression.type": "lz4",
                                                 "enable.idempotence": True}))
    started = time.monotonic()
    for seq in range(n):
        while True:
            try:
                producer.produce(topic, payload(seq), key=SITES[seq % 3].encode())
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(120) == 0
    return n / (time.monotonic() - started)


def raw_consume(cluster: Cluster, topic: str, n: int) -> tuple[float, list[Any]]:
    from confluent_kafka import Consumer

    consumer = Consumer(sasl(cluster, **{"group.id": f"raw-{time.time_ns()}",
                                         "auto.offset.reset": "earliest"}))
    consumer.subscribe([topic])
    records: list[Any] = []
    first = None
    while len(records) < n:
        batch = [r for r in consumer.consume(5000, 1.0) if r.error() is None]
        if batch and first is None:
            first = time.monotonic()
        records.extend(batch)
    elapsed = time.monotonic() - (first or time.monotonic())
    consumer.close()
    return n / elapsed, records


def raw_produce(cluster: Cluster, topic: str, records: list[Any]) -> float:
    from confluent_kafka import Producer

    producer = Producer(sasl(cluster, **{"linger.ms": 20, "compression.type": "lz4",
                                         "enable.idempotence": True, "acks": "all"}))
    started = time.monotonic()
    for rec in records:
        while True:
            try:
                producer.produce(topic, rec.value(), key=rec.key())
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(120) == 0
    return len(records) / (time.monotonic() - started)


def mirror(ec: EdgeCore, topic: str, n: int) -> dict[str, Any]:
    core_topic = ec.core_topic(topic)
    ec.start_service("mm2")
    first = None
    deadline = time.monotonic() + 600
    count = 0
    while time.monotonic() < deadline:
        count = ec.core.end_offsets(core_topic)
        now = time.monotonic()
        if count and first is None:
            first = now
        if count >= n:
            break
        time.sleep(0.1)
    assert first is not None and count >= n, f"only {count} of {n} on core"
    elapsed = time.monotonic() - first
    return {"msg_per_s": round(n / elapsed), "seconds": round(elapsed, 2),
            "vs_anchor": round(n / elapsed / ANCHOR, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=300000)
    parser.add_argument("--partitions", type=int, default=3)
    args = parser.parse_args()
    ec = EdgeCore(own_factory=True, quick_jvm=False, cdc=False)
    try:
        ec.start()
        topic = ec.factory_topic("bench")
        ec.stop_service("mm2")
        ec.factory.create_topic(topic, args.partitions)
        ec.core.create_topic("raw.bench", args.partitions)
        produce_rate = preload(ec.factory, topic, args.messages)
        result = mirror(ec, topic, args.messages)
        ec.stop_service("mm2")  # the raw clients get the machine to themselves
        consume_rate, records = raw_consume(ec.factory, topic, args.messages)
        produce_core = raw_produce(ec.core, "raw.bench", records)
        print(json.dumps({
            "benchmark": "mm2_throughput", "messages": args.messages,
            "partitions": args.partitions, "payload_bytes": len(payload(0)),
            "mirrormaker": {**result, "tasks": 2, "security": "SASL_SSL SCRAM-SHA-512 both sides"},
            "anchor_msg_per_s": ANCHOR,
            "raw": {"consume_factory_sasl_msg_per_s": round(consume_rate),
                    "produce_core_sasl_msg_per_s": round(produce_core),
                    "preload_factory_plaintext_msg_per_s": round(produce_rate)},
            "topology_start_s": round(ec.started_in, 1),
        }, indent=2))
    finally:
        ec.close()


if __name__ == "__main__":
    main()
