"""MQTT -> core lake, the whole path: delivered msg/s and end-to-end latency p50/p99.

    unsflow simulate -> Mosquitto -> unsflow -> factory Kafka ═MM2═> core Kafka -> unsflow -> MinIO

Method (one run prints one JSON document):

1. A topology of its own (tests/edge_core.py, a temporary directory, free
   ports): Mosquitto, a factory and a core Kafka, MirrorMaker 2 (SASL_SSL with
   SCRAM-SHA-512 on both sides), MinIO. The two unsflow processes run the
   examples' configs (examples/mqtt-to-kafka.json, the `core-uns` source of
   examples/core-kafka-to-lake.json), hosts aside, the lake flushing at
   5,000 rows or 1 s.
2. For each rate: the simulator's MQTT publisher (paho, QoS 1, every PUBACK
   awaited) sends R readings per second for S seconds over 100 topics
   (`bench<R>/site1/line1/m<i>/vibration`), each payload stamped with the
   time it was handed to the client (`t`, epoch seconds), into a new factory
   topic (3 partitions) that MirrorMaker already mirrors.
3. A reading's latency is the time its Parquet object is first seen in MinIO
   (a listing every 0.2 s; the object is durable then) minus its `t`: the
   whole path, the lake's 1 s flush age included; split at the factory
   bridge's receive time (the Kafka record timestamp, which MirrorMaker keeps,
   is the row's `_received_at`). Delivered msg/s is the
   readings over the time from the first publish to the last arrival. The
   machine's load average is printed too: the run shares 2 cores with every
   process of the topology (and anything else running).

Run: python benchmarks/edge_to_core.py [--rates 1000 3000 6000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))

from lakewatch import LakeWatch, make_bucket, percentiles  # noqa: E402

from tests.e2e.helpers import UnsflowProcess  # noqa: E402
from tests.edge_core import EdgeCore  # noqa: E402
from unsflow._paho import Publisher  # noqa: E402

MAX_AGE = [1.0]


def example(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((REPO / "examples" / name).read_text())
    return loaded


def configs(ec: EdgeCore, topic: str, prefix: str, bucket: str,
            work: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    mqtt, minio = ec.extra["mosquitto"], ec.extra["minio"]
    bridge = example("mqtt-to-kafka.json")
    bridge["mqtt-broker"].update(host=mqtt["host"], port=mqtt["port"],
                                 **{"client-id": f"bench-bridge-{topic}"})
    bridge["targets"]["kafka-bridge"].update(
        topic=topic, **{"bootstrap-servers": ec.factory.sasl_bootstrap,
                        "ca-file": ec.factory.info["ca_file"]})
    bridge["subscriptions"] = {f"{prefix}/#": {"qos": 1, "target": "kafka-bridge"}}
    bridge["dead-letter"] = {"path": str(work / "bridge-dead.jsonl")}
    core = example("core-kafka-to-lake.json")
    src = core["sources"]["core-uns"]
    src.update(topics=[ec.core_topic(topic)], **{
        "bootstrap-servers": ec.core.sasl_bootstrap, "ca-file": ec.core.info["ca_file"],
        "group-id": f"bench-{topic}"})
    lake = core["targets"]["uns-lake"]
    lake.update({"s3-bucket": bucket, "endpoint": minio["endpoint"],
                 "batching": {"max-records": 5000, "max-age": MAX_AGE[0]}})
    return bridge, {"sources": {"core-uns": src}, "targets": {"uns-lake": lake},
                    "dead-letter": {"path": str(work / "lake-dead.jsonl")}}


def start(config: dict[str, Any], work: Path, name: str, env: dict[str, str]) -> UnsflowProcess:
    path = work / f"{name}.json"
    path.write_text(json.dumps(config, indent=2))
    return UnsflowProcess(["run", str(path)], cwd=work, env=env).start()


def one_rate(ec: EdgeCore, rate: int, seconds: float, work: Path) -> dict[str, Any]:
    topic = ec.factory_topic(f"bench{rate}")
    ec.factory.create_topic(topic, 3)
    deadline = time.monotonic() + 60
    while ec.core_topic(topic) not in ec.core.topics():
        assert time.monotonic() < deadline, "MirrorMaker did not mirror the topic"
        time.sleep(0.5)
    prefix = f"bench{rate}"
    minio, mqtt = ec.extra["minio"], ec.extra["mosquitto"]
    bucket = make_bucket(minio, f"bench-{ec.run_id}-{rate}")
    env = {**ec.secrets_env(), "MINIO_CREDENTIAL": json.dumps(
        {"username": minio["access_key"], "password": minio["secret_key"]})}
    bridge_cfg, lake_cfg = configs(ec, topic, prefix, bucket, work)
    procs = [start(bridge_cfg, work, f"bridge{rate}", env), start(lake_cfg, work, f"lake{rate}", env)]
    watch = LakeWatch(minio, bucket, ["t", "_received_at"])
    count = int(rate * seconds)
    try:
        procs[0].wait_for_log("subscribing", timeout=60)
        procs[1].wait_for_log("assigned", timeout=60)
        time.sleep(2)  # the bridge's SUBACK
        load_before = os.getloadavg()[0]
        # Published from a thread while this one watches the lake: a row's arrival is
        # when it is first seen, so the watching must go on during the publishing.
        result: list[tuple[float, float]] = []
        publisher = threading.Thread(
            target=lambda: result.append(publish_paced(mqtt, prefix, rate, count)))
        began = time.time()
        publisher.start()
        ok = watch.wait(count, timeout=seconds * 4 + 120)
        publisher.join(120)
        published = result[0][0] if result else 0.0
    finally:
        for p in procs:
            p.terminate()
    last = max((a[0] for a in watch.arrivals), default=time.time())
    latencies = [arrived - t for arrived, t, _ in watch.arrivals if t is not None]
    # The factory bridge's receive time travels as the Kafka record timestamp (kept by
    # MirrorMaker) into the row's _received_at: MQTT + bridge | Kafka, MM2, core, lake.
    to_bridge = [got.timestamp() - t for _, t, got in watch.arrivals if got is not None]
    to_lake = [arrived - got.timestamp() for arrived, _, got in watch.arrivals
               if got is not None]
    return {"offered_msg_per_s": rate, "messages": count, "all_arrived": ok,
            "published_msg_per_s": round(published),
            "rows_in_lake": watch.rows,
            "delivered_msg_per_s": round(watch.rows / (last - began)) if watch.rows else 0,
            "latency_s": percentiles(latencies),
            "latency_parts_s": {"publish_to_factory_bridge": percentiles(to_bridge),
                                "factory_bridge_to_core_lake": percentiles(to_lake)},
            "load_average_1m": [round(load_before, 1), round(os.getloadavg()[0], 1)]}


def publish_paced(mqtt: dict[str, Any], prefix: str, rate: int, count: int) -> tuple[float, float]:
    """``count`` QoS 1 messages at ``rate`` per second, each stamped when sent; (rate, start)."""
    pub = Publisher(mqtt["host"], int(mqtt["port"]), qos=1)
    pub.open()
    began = time.time()
    start = time.monotonic()
    for seq in range(count):
        due = start + seq / rate
        while (now := time.monotonic()) < due:
            pub.pump(min(due - now, 0.01))
        topic = f"{prefix}/site1/line1/m{seq % 100}/vibration"
        pub.publish(topic, b'{"seq":%d,"value":%.3f,"t":%.6f}' % (seq, 12 + seq % 50 / 10,
                                                                  time.time()))
    pub.flush(120)
    elapsed = time.monotonic() - start
    pub.close()
    return count / elapsed, began


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rates", type=int, nargs="+", default=[1000, 3000, 6000])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--max-age", type=float, default=1.0,
                        help="the lake's batching max-age (seconds)")
    args = parser.parse_args()
    MAX_AGE[0] = args.max_age
    ec = EdgeCore(own_factory=True, quick_jvm=False, cdc=False, extras=("mosquitto", "minio"))
    try:
        ec.start()
        runs = [one_rate(ec, rate, args.seconds, ec.workdir) for rate in args.rates]
        print(json.dumps({"benchmark": "edge_to_core", "seconds_per_rate": args.seconds,
                          "path": "simulate -> mosquitto -> unsflow -> factory kafka -> mm2 "
                                  "(SASL_SSL) -> core kafka -> unsflow -> minio parquet",
                          "lake_batching": {"max-records": 5000, "max-age": args.max_age},
                          "runs": runs}, indent=2))
    finally:
        ec.close()


if __name__ == "__main__":
    main()
