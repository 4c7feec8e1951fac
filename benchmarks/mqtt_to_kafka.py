"""MQTT -> Kafka: unsflow's bridge against a plain confluent-kafka producer, same payloads.

Scenarios ``kafka-plaintext`` and ``kafka-sasl_ssl`` (one JSON line each):

1. A broker and a Kafka of the benchmark's own (scripts/services.sh in a temporary
   directory on free ports: Kafka in KRaft mode, one node, PLAINTEXT and SASL_SSL
   with SCRAM-SHA-512).
2. Reference: one confluent-kafka producer in the benchmark process produces the N
   payloads (80 B JSON) with the bridge's settings (idempotent, acks=all, lz4,
   linger 5 ms, the same key and headers, a delivery report per message) and
   flushes; the clock runs from the first produce to the flush's return.
3. unsflow: a persistent MQTT session holds the N messages (QoS 1, queued while it
   was offline); ``unsflow run`` on a config like examples/mqtt-to-kafka.json
   connects and drains it into a new 3-partition topic; the clock runs from its
   CONNACK ("connected to") until the topic's high watermarks add up to N (every
   message acknowledged by Kafka with acks=all), polled every 20 ms.

Run one: python -m benchmarks --only kafka-plaintext
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.common import (
    REPO,
    TOPIC,
    Broker,
    Measured,
    Unsflow,
    cpu_seconds,
    end_session,
    free_port,
    make_session,
    own_broker,
    payload,
    peak_rss_mib,
    publish_backlog,
    thread_cpu_seconds,
)
from benchmarks.mqtt_to_parquet import BROKER_CONF


@contextmanager
def environment(workdir: Path) -> Iterator[dict[str, Any]]:
    """A broker and a Kafka of their own."""
    env = {**os.environ, "UNSFLOW_SERVICES_DIR": str(workdir / "kafka-services"),
           "UNSFLOW_KAFKA_PORT": str(free_port()), "UNSFLOW_KAFKA_SASL_PORT": str(free_port()),
           "UNSFLOW_KAFKA_CONTROLLER_PORT": str(free_port())}
    up = subprocess.run(["bash", str(REPO / "scripts" / "services.sh"), "up", "kafka"], env=env,
                        capture_output=True, text=True, timeout=900, check=False)
    if up.returncode != 0:
        raise RuntimeError(f"services.sh up kafka failed:\n{up.stderr}")
    kafka = json.loads((workdir / "kafka-services" / "kafka" / "info.json").read_text())
    kafka["pid"] = int((workdir / "kafka-services" / "kafka" / "kafka.pid").read_text())
    try:
        with own_broker(BROKER_CONF) as broker:
            yield {"broker": broker, "kafka": kafka}
    finally:
        subprocess.run(["bash", str(REPO / "scripts" / "services.sh"), "down", "kafka"], env=env,
                       capture_output=True, timeout=120, check=False)


def client_config(kafka: dict[str, Any], security: str) -> dict[str, Any]:
    if security == "PLAINTEXT":
        return {"bootstrap.servers": kafka["bootstrap"]}
    return {"bootstrap.servers": kafka["sasl_bootstrap"], "security.protocol": "SASL_SSL",
            "sasl.mechanism": kafka["mechanism"], "sasl.username": kafka["username"],
            "sasl.password": kafka["password"], "ssl.ca.location": kafka["ca_file"]}


def create_topic(kafka: dict[str, Any], name: str, partitions: int = 3) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": kafka["bootstrap"]})
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(30)


def high_watermarks(consumer: Any, topic: str, partitions: int = 3) -> int:
    from confluent_kafka import TopicPartition

    return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
               for p in range(partitions))


def producer_rate(kafka: dict[str, Any], security: str, n: int, tag: str) -> Measured:
    """The reference: a plain confluent-kafka producer in this process."""
    import resource

    from confluent_kafka import Producer

    topic = f"bench.raw.{tag}.{uuid.uuid4().hex[:8]}"
    create_topic(kafka, topic)
    producer = Producer({**client_config(kafka, security), "enable.idempotence": True,
                         "acks": "all", "compression.type": "lz4", "linger.ms": 5,
                         "partitioner": "murmur2_random"})
    delivered = 0

    def report(err: Any, msg: Any) -> None:
        nonlocal delivered
        delivered += err is None

    producer.produce(topic, b"warm-up", b"site1", on_delivery=report)  # producer id, metadata
    producer.flush(60)
    delivered = 0
    payloads = [payload(i) for i in range(n)]
    headers = [("mqtt.topic", TOPIC.encode()), ("mqtt.qos", b"1"), ("mqtt.retain", b"false")]
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    threads0, jvm0 = thread_cpu_seconds(os.getpid()), cpu_seconds(kafka["pid"])
    t0 = time.perf_counter()
    for i, value in enumerate(payloads):
        while True:
            try:
                producer.produce(topic, value, b"site1", headers=headers, on_delivery=report)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 1000 == 0:
            producer.poll(0)
    producer.flush(120)
    elapsed = time.perf_counter() - t0
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    threads1, jvm1 = thread_cpu_seconds(os.getpid()), cpu_seconds(kafka["pid"])
    producer.flush(10)
    if delivered != n:
        raise RuntimeError(f"the reference producer delivered {delivered} of {n}")
    cpu = usage1.ru_utime + usage1.ru_stime - usage0.ru_utime - usage0.ru_stime
    # librdkafka's own threads (rdk:*): the client's work that any producer built on it does.
    rdk = sum(v - threads0.get(k, 0.0) for k, v in threads1.items() if k.startswith("rdk:"))
    return Measured(elapsed, n, cpu, usage1.ru_maxrss / 1024,
                    {"librdkafka_cpu_s": rdk, "kafka_cpu_s": jvm1 - jvm0})


def bridge_rate(broker: Broker, kafka: dict[str, Any], security: str, n: int, tag: str,
                workdir: Path) -> Measured:
    from confluent_kafka import Consumer

    tag = f"{tag}-{uuid.uuid4().hex[:8]}"  # a run of its own: session, topic, config
    cid = f"bench-bridge-{tag}"
    topic = f"bench.bridge.{tag}"
    create_topic(kafka, topic)
    target: dict[str, Any] = {"type": "kafka", "topic": topic, "key": "{levels[1]}",
                              "bootstrap-servers": kafka["bootstrap"]}
    env: dict[str, str] = {}
    if security == "SASL_SSL":
        target.update({"bootstrap-servers": kafka["sasl_bootstrap"],
                       "security-protocol": "SASL_SSL",
                       "credential": {"secret-name": "bench-kafka", "provider": "env"},
                       "ca-file": kafka["ca_file"]})
        env = {"BENCH_KAFKA_USERNAME": kafka["username"], "BENCH_KAFKA_PASSWORD": kafka["password"]}
    config = {
        "mqtt-broker": {"host": broker.host, "port": broker.port, "client-id": cid,
                        "clean-start": False},
        "targets": {"kafka": target},
        "subscriptions": {"bench/#": {"qos": 1, "target": "kafka"}},
    }
    make_session(broker, cid, 1)
    publish_backlog(broker, n, 80)
    watch = Consumer({"bootstrap.servers": kafka["bootstrap"], "group.id": f"{topic}.watch"})
    run = Unsflow(config, workdir, f"kafka-{tag}", env)
    try:
        run.start("connected to")
        t0, cpu0 = time.perf_counter(), cpu_seconds(run.pid)
        broker0, jvm0 = cpu_seconds(broker.pid), cpu_seconds(kafka["pid"])
        produced = 0
        deadline = time.monotonic() + 600
        while produced < n and time.monotonic() < deadline:
            time.sleep(0.02)
            produced = high_watermarks(watch, topic)
        elapsed = time.perf_counter() - t0
        cpu = cpu_seconds(run.pid) - cpu0
        others = {"mosquitto_cpu_s": cpu_seconds(broker.pid) - broker0,
                  "kafka_cpu_s": cpu_seconds(kafka["pid"]) - jvm0}
        peak = peak_rss_mib(run.pid)
    finally:
        run.stop()
        watch.close()
        end_session(broker, cid)
    if produced < n:
        raise RuntimeError(f"the bridge delivered {produced} of {n}")
    return Measured(elapsed, produced, cpu, peak, others)


def kafka_scenario(env: dict[str, Any], workdir: Path, security: str, n: int) -> dict[str, Any]:
    tag = security.lower()
    ref = producer_rate(env["kafka"], security, n, tag)
    ours = bridge_rate(env["broker"], env["kafka"], security, n, tag, workdir)
    ratio = ours.rate / ref.rate
    # The floor of any bridge on this machine: Mosquitto delivering the N messages, Kafka
    # taking them, and librdkafka's threads producing them (no Python at all) need this
    # much CPU; on the cores there are, the bridge cannot finish sooner.
    floor_cpu = (ours.extra["mosquitto_cpu_s"] + ours.extra["kafka_cpu_s"]
                 + ref.extra["librdkafka_cpu_s"])
    cores = os.cpu_count() or 1
    ceiling = ref.seconds / (floor_cpu / cores)
    return {
        "scenario": f"mqtt-kafka-{tag}", "messages": n, "payload_bytes": len(payload(0)),
        "unsflow_msgs_per_s": round(ours.rate), "reference": "confluent-kafka Producer, same "
        "payloads and settings", "reference_msgs_per_s": round(ref.rate),
        "ratio": round(ratio, 3), "unsflow_cpu_s": round(ours.cpu_s, 2),
        "reference_cpu_s": round(ref.cpu_s, 2),
        "unsflow_cpu_us_per_msg": round(ours.cpu_s / n * 1e6, 2),
        "unsflow_peak_rss_mib": round(ours.peak_rss_mib, 1),
        "unsflow_seconds": round(ours.seconds, 3), "reference_seconds": round(ref.seconds, 3),
        "mosquitto_cpu_s": round(ours.extra["mosquitto_cpu_s"], 2),
        "kafka_cpu_s": round(ours.extra["kafka_cpu_s"], 2),
        "reference_kafka_cpu_s": round(ref.extra["kafka_cpu_s"], 2),
        "reference_librdkafka_cpu_s": round(ref.extra["librdkafka_cpu_s"], 2),
        "cores": cores,
        "unsflow_cores_busy": round((ours.cpu_s + ours.extra["mosquitto_cpu_s"]
                                     + ours.extra["kafka_cpu_s"]) / ours.seconds, 2),
        "ratio_ceiling": round(ceiling, 3),
        "goal": ">= 0.8 of the reference", "met": ratio >= 0.8,
        "kafka_version": env["kafka"].get("version"),
    }


def warm_up(env: dict[str, Any], workdir: Path) -> None:
    producer_rate(env["kafka"], "PLAINTEXT", 20_000, "warm")
    bridge_rate(env["broker"], env["kafka"], "PLAINTEXT", 20_000, "warm", workdir)


def scenarios(quick: bool = False) -> list[tuple[str, Any]]:
    n = 20_000 if quick else 200_000
    return [
        ("kafka-plaintext", lambda e, w: kafka_scenario(e, w, "PLAINTEXT", n)),
        ("kafka-sasl_ssl", lambda e, w: kafka_scenario(e, w, "SASL_SSL", n)),
    ]


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    from benchmarks.__main__ import main

    main(default_modules=["mqtt_to_kafka"])
