"""MQTT -> Kafka: unsflow's bridge rate against the raw rates of both sides.

Method (one run prints one JSON document):

1. A broker and a Kafka of their own, started by ``scripts/services.sh`` in a
   temporary directory on free ports (so nothing else shares them). Kafka is
   the project's test Kafka (KRaft, one node, 512 MiB heap).
2. For each security protocol (PLAINTEXT, SASL_SSL with SCRAM-SHA-512): a
   persistent MQTT session is created for the bridge, N messages (~80-byte
   JSON, QoS 1) are published into it while the bridge is offline, then the
   bridge connects and drains the backlog into a new 3-partition topic. This
   measures how fast the bridge moves messages, not how fast a publisher sends.
3. Raw MQTT: ``mosquitto_sub -q 1 -C N`` drains the same backlog (C client,
   output to /dev/null). Raw Kafka: one confluent-kafka producer in this
   process produces N messages with the bridge's settings (idempotent,
   acks=all, lz4, same key) and flushes. The bridge can be no faster than the
   slower of the two.
4. unsflow: ``unsflow run`` on a config like examples/mqtt-to-kafka.json
   (key = site from the topic, payload unchanged); the clock runs from its
   "subscribing" log line until the topic's high watermarks add up to N, i.e.
   every message acknowledged by Kafka (acks=all). Peak memory is the
   process's VmHWM.

Run: python benchmarks/mqtt_to_kafka.py [--messages 200000] [--security PLAINTEXT SASL_SSL]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO / "src"))

from common import free_port, payload, peak_rss_mib  # noqa: E402

from unsflow.testing import publish

TOPIC = "bench/site1/line1/press/vibration"


def services_env(workdir: Path) -> dict[str, str]:
    return {**os.environ, "UNSFLOW_SERVICES_DIR": str(workdir / "services"),
            "UNSFLOW_MQTT_PORT": str(free_port()), "UNSFLOW_MQTTS_PORT": str(free_port()),
            "UNSFLOW_KAFKA_PORT": str(free_port()), "UNSFLOW_KAFKA_SASL_PORT": str(free_port()),
            "UNSFLOW_KAFKA_CONTROLLER_PORT": str(free_port())}


def service(command: str, name: str, env: dict[str, str]) -> dict[str, Any]:
    result = subprocess.run(["bash", str(REPO / "scripts" / "services.sh"), command, name],
                            env=env, capture_output=True, text=True, timeout=900, check=False)
    if result.returncode != 0 and command == "up":
        sys.exit(f"services.sh up {name} failed:\n{result.stderr}")
    if command != "up":
        return {}
    return json.loads((Path(env["UNSFLOW_SERVICES_DIR"]) / name / "info.json").read_text())


def preload(broker: dict, client_id: str, n: int) -> None:
    """Create a persistent session for ``client_id`` and queue ``n`` QoS 1 messages in it."""
    subprocess.run(["mosquitto_sub", "-h", broker["host"], "-p", str(broker["port"]), "-c",
                    "-i", client_id, "-q", "1", "-t", "bench/#", "-E"], check=True)
    publish(broker["host"], broker["port"], ((TOPIC, payload(i)) for i in range(n)), qos=1,
            timeout=600)


def raw_mqtt_rate(broker: dict, n: int) -> float:
    cid = f"bench-raw-{os.getpid()}"
    preload(broker, cid, n)
    t0 = time.perf_counter()
    subprocess.run(["mosquitto_sub", "-h", broker["host"], "-p", str(broker["port"]), "-c",
                    "-i", cid, "-q", "1", "-t", "bench/#", "-C", str(n)],
                   stdout=subprocess.DEVNULL, check=True, timeout=600)
    return n / (time.perf_counter() - t0)


def client_config(kafka: dict, security: str) -> dict[str, Any]:
    if security == "PLAINTEXT":
        return {"bootstrap.servers": kafka["bootstrap"]}
    return {"bootstrap.servers": kafka["sasl_bootstrap"], "security.protocol": "SASL_SSL",
            "sasl.mechanism": kafka["mechanism"], "sasl.username": kafka["username"],
            "sasl.password": kafka["password"], "ssl.ca.location": kafka["ca_file"]}


def create_topic(kafka: dict, name: str, partitions: int = 3) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": kafka["bootstrap"]})
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(30)


def high_watermarks(consumer: Any, topic: str, partitions: int = 3) -> int:
    from confluent_kafka import TopicPartition

    return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
               for p in range(partitions))


def raw_kafka_rate(kafka: dict, security: str, n: int) -> float:
    from confluent_kafka import Producer

    topic = f"bench.raw.{security.lower()}.{os.getpid()}"
    create_topic(kafka, topic)
    producer = Producer({**client_config(kafka, security), "enable.idempotence": True,
                         "acks": "all", "compression.type": "lz4", "linger.ms": 5,
                         "partitioner": "murmur2_random"})
    delivered = 0

    def report(err: Any, msg: Any) -> None:
        nonlocal delivered
        delivered += err is None

    # Warm-up outside the clock: the idempotent producer id, the topic's metadata.
    producer.produce(topic, b"warm-up", b"site1", on_delivery=report)
    producer.flush(60)
    delivered = 0
    headers = [("mqtt.topic", TOPIC.encode())]
    t0 = time.perf_counter()
    for i in range(n):
        while True:
            try:
                producer.produce(topic, payload(i), b"site1", headers=headers, on_delivery=report)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 1000 == 0:
            producer.poll(0)
    producer.flush(120)
    elapsed = time.perf_counter() - t0
    assert delivered == n, f"raw producer: {delivered} of {n} delivered"
    return n / elapsed


def unsflow_rate(broker: dict, kafka: dict, security: str, n: int, workdir: Path) -> dict:
    from confluent_kafka import Consumer

    cid = f"bench-unsflow-{security.lower()}-{os.getpid()}"
    topic = f"bench.bridge.{security.lower()}.{os.getpid()}"
    create_topic(kafka, topic)
    target: dict[str, Any] = {"type": "kafka", "topic": topic, "key": "{levels[1]}",
                              "bootstrap-servers": kafka["bootstrap"]}
    env = dict(os.environ)
    if security == "SASL_SSL":
        target.update({"bootstrap-servers": kafka["sasl_bootstrap"], "security-protocol": "SASL_SSL",
                       "credential": {"secret-name": "bench-kafka", "provider": "env"},
                       "ca-file": kafka["ca_file"]})
        env.update(BENCH_KAFKA_USERNAME=kafka["username"], BENCH_KAFKA_PASSWORD=kafka["password"])
    config = {
        "mqtt-broker": {"host": broker["host"], "port": broker["port"], "client-id": cid,
                        "clean-start": False},
        "targets": {"kafka": target},
        "subscriptions": {"bench/#": {"qos": 1, "target": "kafka"}},
        "dead-letter": {"path": str(workdir / "dead.jsonl")},
    }
    path = workdir / f"bench-{security}.json"
    path.write_text(json.dumps(config))
    preload(broker, cid, n)
    watch = Consumer({"bootstrap.servers": kafka["bootstrap"], "group.id": f"{topic}.watch"})
    proc = subprocess.Popen([sys.executable, "-m", "unsflow.cli", "run", str(path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "subscribing" in line:
                break
        t0 = time.perf_counter()
        produced = 0
        while produced < n and time.perf_counter() - t0 < 600:
            time.sleep(0.05)
            produced = high_watermarks(watch, topic)
        elapsed = time.perf_counter() - t0
        peak = peak_rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(60)
        watch.close()
    return {"msgs_per_s": round(n / elapsed), "records": produced, "peak_rss_mib": round(peak, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--security", nargs="+", default=["PLAINTEXT", "SASL_SSL"],
                        choices=["PLAINTEXT", "SASL_SSL"])
    args = parser.parse_args()
    if not shutil.which("mosquitto_sub"):
        sys.exit("mosquitto_sub not found: run scripts/services.sh up mosquitto first")
    workdir = Path(tempfile.mkdtemp(prefix="unsflow-bench-"))
    env = services_env(workdir)
    results: dict = {"benchmark": "mqtt_to_kafka", "messages": args.messages,
                     "payload_bytes": len(payload(123456)), "cpus": os.cpu_count(), "runs": []}
    try:
        broker = service("up", "mosquitto", env)
        kafka = service("up", "kafka", env)
        results["kafka_version"] = kafka["version"]
        raw_mqtt = raw_mqtt_rate(broker, args.messages)
        for security in args.security:
            raw_kafka = raw_kafka_rate(kafka, security, args.messages)
            ours = unsflow_rate(broker, kafka, security, args.messages, workdir)
            results["runs"].append({
                "security": security, "qos": 1,
                "raw_mosquitto_sub_msgs_per_s": round(raw_mqtt),
                "raw_confluent_producer_msgs_per_s": round(raw_kafka),
                "unsflow_msgs_per_s": ours["msgs_per_s"],
                "ratio_to_slower_raw": round(ours["msgs_per_s"] / min(raw_mqtt, raw_kafka), 3),
                "unsflow_records_in_kafka": ours["records"],
                "unsflow_peak_rss_mib": ours["peak_rss_mib"],
            })
    finally:
        service("down", "kafka", env)
        service("down", "mosquitto", env)
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
