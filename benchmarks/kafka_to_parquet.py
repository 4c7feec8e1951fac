"""Kafka -> local Parquet: unsflow's consumer-group rate against a raw consumer's.

Method (one run prints one JSON document):

1. A Kafka of its own, started by ``scripts/services.sh`` in a temporary
   directory on free ports (so nothing else shares it): the project's test
   Kafka (KRaft, one node, 512 MiB heap).
2. N records (~80-byte JSON, an ``mqtt.topic`` header, keyed by site) are
   produced into a new 3-partition topic before anything reads them.
3. Raw: one confluent-kafka consumer in this process reads the N records in
   batches (``consume(1000)``) and commits once at the end; the clock runs
   from its first record to its last. unsflow can be no faster than this plus
   the Parquet encoding.
4. unsflow: ``unsflow run`` on a config like examples/kafka-to-datalake.json
   (a new group, ``topic-header: mqtt.topic``), for each store (``local``: a
   directory, every object fsynced; ``minio``: a bucket of a MinIO of its own,
   started by ``scripts/services.sh`` beside Kafka) and each ``--max-records``
   (the flush size of the lake: 50000 for throughput; 50 is the Red Hat
   pattern's objects of 50 messages). The clock runs from the "assigned" log
   line (the member owns the partitions) until N rows are in Parquet (read
   from the objects' footers), i.e. durably written; the offsets are
   committed after that. Peak memory is the process's VmHWM.

Run: python benchmarks/kafka_to_parquet.py [--messages 200000] [--max-records 50000 50]
     [--store local minio]
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

from common import free_port, payload, peak_rss_mib  # noqa: E402

SITES = ["site1", "site2", "site3"]


def services_env(workdir: Path) -> dict[str, str]:
    return {**os.environ, "UNSFLOW_SERVICES_DIR": str(workdir / "services"),
            "UNSFLOW_KAFKA_PORT": str(free_port()), "UNSFLOW_KAFKA_SASL_PORT": str(free_port()),
            "UNSFLOW_KAFKA_CONTROLLER_PORT": str(free_port()),
            "UNSFLOW_MINIO_PORT": str(free_port())}


def service(command: str, name: str, env: dict[str, str]) -> dict[str, Any]:
    result = subprocess.run(["bash", str(REPO / "scripts" / "services.sh"), command, name],
                            env=env, capture_output=True, text=True, timeout=900, check=False)
    if command != "up":
        return {}
    if result.returncode != 0:
        sys.exit(f"services.sh up {name} failed:\n{result.stderr}")
    return json.loads((Path(env["UNSFLOW_SERVICES_DIR"]) / name / "info.json").read_text())


def preload(kafka: dict, topic: str, n: int) -> None:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": kafka["bootstrap"]})
    admin.create_topics([NewTopic(topic, 3, 1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": kafka["bootstrap"], "linger.ms": 20,
                         "compression.type": "lz4", "enable.idempotence": True})
    headers = [[("mqtt.topic", f"acme/{site}/line1/press".encode())] for site in SITES]
    for i in range(n):
        while True:
            try:
                producer.produce(topic, payload(i), SITES[i % 3].encode(), headers=headers[i % 3])
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(120) == 0


def raw_rate(kafka: dict, topic: str, n: int) -> float:
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": kafka["bootstrap"], "group.id": f"{topic}.raw",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    got = 0
    t0 = None
    while got < n:
        records = consumer.consume(1000, 1.0)
        if records and t0 is None:
            t0 = time.perf_counter()
        got += sum(r.error() is None for r in records)
    consumer.commit(asynchronous=False)
    elapsed = time.perf_counter() - (t0 or time.perf_counter())
    consumer.close()
    return n / elapsed


class LocalLake:
    def __init__(self, root: Path) -> None:
        self.root = root

    def target(self) -> dict[str, Any]:
        return {"local-path": str(self.root)}

    def count(self) -> tuple[int, int]:
        """(rows, objects) from the Parquet footers."""
        import pyarrow.parquet as pq

        rows = objects = 0
        for f in self.root.rglob("*.parquet"):
            try:
                rows += pq.read_metadata(f).num_rows
                objects += 1
            except OSError:
                pass
        return rows, objects


class MinioLake:
    def __init__(self, minio: dict, bucket: str) -> None:
        import pyarrow.fs

        self.minio = minio
        self.bucket = bucket
        self.fs = pyarrow.fs.S3FileSystem(
            endpoint_override=f"{minio['host']}:{minio['port']}", scheme="http",
            region=minio["region"], access_key=minio["access_key"], secret_key=minio["secret_key"],
            allow_bucket_creation=True)
        self.fs.create_dir(bucket)
        self.footers: dict[str, int] = {}

    def target(self) -> dict[str, Any]:
        return {"s3-bucket": self.bucket, "endpoint": self.minio["endpoint"], "allow-http": True,
                "region": self.minio["region"],
                "credential": {"secret-name": "bench-minio", "provider": "env"}}

    def env(self) -> dict[str, str]:
        return {"BENCH_MINIO_USERNAME": self.minio["access_key"],
                "BENCH_MINIO_PASSWORD": self.minio["secret_key"]}

    def count(self) -> tuple[int, int]:
        import pyarrow.fs
        import pyarrow.parquet as pq

        infos = self.fs.get_file_info(pyarrow.fs.FileSelector(self.bucket, recursive=True))
        for info in infos:
            if info.type == pyarrow.fs.FileType.File and info.path.endswith(".parquet") \
                    and info.path not in self.footers:
                with self.fs.open_input_file(info.path) as f:
                    self.footers[info.path] = pq.read_metadata(f).num_rows
        return sum(self.footers.values()), len(self.footers)


def unsflow_rate(kafka: dict, topic: str, n: int, max_records: int, lake: Any,
                 workdir: Path, name: str) -> dict:
    config = {
        "sources": {"plant-kafka": {"type": "kafka", "bootstrap-servers": kafka["bootstrap"],
                                    "group-id": f"{topic}.unsflow-{name}",
                                    "topics": [topic], "topic-header": "mqtt.topic",
                                    "target": "lake"}},
        "targets": {"lake": {"type": "s3", "format": "parquet", **lake.target(),
                             "partition-by": ["date", "hour", "topic-levels"],
                             "topic-levels": ["enterprise", "site"],
                             "batching": {"max-records": max_records, "max-age": 0.5}}},
        "dead-letter": {"path": str(workdir / "dead.jsonl")},
    }
    path = workdir / f"bench-{name}.json"
    path.write_text(json.dumps(config))
    env = {**os.environ, **(lake.env() if hasattr(lake, "env") else {})}
    proc = subprocess.Popen([sys.executable, "-m", "unsflow.cli", "run", str(path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "assigned" in line:
                break
        t0 = time.perf_counter()
        rows = objects = 0
        while rows < n and time.perf_counter() - t0 < 900:
            time.sleep(0.1)
            rows, objects = lake.count()
        elapsed = time.perf_counter() - t0
        peak = peak_rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(60)
    return {"msgs_per_s": round(n / elapsed), "rows": rows, "objects": objects,
            "peak_rss_mib": round(peak, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--max-records", type=int, nargs="+", default=[50000, 50])
    parser.add_argument("--store", nargs="+", default=["local", "minio"],
                        choices=["local", "minio"])
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="unsflow-bench-"))
    env = services_env(workdir)
    topic = f"bench.lake.{os.getpid()}"
    results: dict = {"benchmark": "kafka_to_parquet", "messages": args.messages,
                     "payload_bytes": len(payload(123456)), "cpus": os.cpu_count(),
                     "partitions": 3, "runs": []}
    started = []
    try:
        kafka = service("up", "kafka", env)
        started.append("kafka")
        results["kafka_version"] = kafka["version"]
        minio = None
        if "minio" in args.store:
            minio = service("up", "minio", env)
            started.append("minio")
        preload(kafka, topic, args.messages)
        raw = raw_rate(kafka, topic, args.messages)
        for store in args.store:
            for max_records in args.max_records:
                name = f"{store}-{max_records}"
                lake = (LocalLake(workdir / f"lake-{name}") if store == "local"
                        else MinioLake(minio, f"bench-{name}-{os.getpid()}"))  # type: ignore[arg-type]
                ours = unsflow_rate(kafka, topic, args.messages, max_records, lake, workdir, name)
                results["runs"].append({
                    "store": store,
                    "max_records": max_records,
                    "raw_confluent_consumer_msgs_per_s": round(raw),
                    "unsflow_msgs_per_s": ours["msgs_per_s"],
                    "ratio": round(ours["msgs_per_s"] / raw, 3),
                    "unsflow_rows_written": ours["rows"],
                    "unsflow_objects_written": ours["objects"],
                    "unsflow_peak_rss_mib": ours["peak_rss_mib"],
                })
    finally:
        for name in reversed(started):
            service("down", name, env)
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
