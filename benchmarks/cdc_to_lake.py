"""Change data capture into the core lake: sustained transactions/s and lag.

    PostgreSQL -> Debezium -> factory Kafka ═MM2═> core Kafka -> unsflow (parse: debezium) -> MinIO

Anchor: the Red Hat pattern's Debezium stream of about 5,000 transactions/s.

Method (one run prints one JSON document):

1. A topology of its own (tests/edge_core.py, a temporary directory, free
   ports): PostgreSQL (the line database), Debezium's PostgreSQL connector in
   Kafka Connect, a factory and a core Kafka, MirrorMaker 2 (SASL_SSL with
   SCRAM-SHA-512 everywhere), MinIO. One unsflow runs the `core-cdc` source of
   examples/core-kafka-to-lake.json (hosts aside; the lake flushing at 5,000
   rows or 1 s) for the whole run.
2. For each rate: `unsflow.testing.linedb` runs transactions (each one
   statement: a new work order, and with some probability its quality result,
   a maintenance event, a status update or a delete; 2.3 row changes on
   average) at R per second over 32 connections for S seconds. It records
   every committed change.
3. Lag of a change: the time its Parquet object is first seen in MinIO
   (listing every 0.2 s) minus its commit time in PostgreSQL
   (`__source_ts_ms`), split into commit -> Debezium (`__ts_ms`), Debezium ->
   factory Kafka (the record's timestamp, which MirrorMaker keeps) and
   factory Kafka -> lake (MirrorMaker, core, unsflow, the 1 s flush).
   Sustained transactions/s: the transactions committed over the time from
   the first commit to the last of their changes in the lake; it equals the
   offered rate when the path keeps up.

Run: python benchmarks/cdc_to_lake.py [--rates 500 1000 2000 5000] [--seconds 20] [--warmup 30]
     [--schemas]   (JSON envelopes with schemas; default without)
"""

from __future__ import annotations

import argparse
import json
import re
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
from unsflow.testing.linedb import LineDbGenerator  # noqa: E402

ANCHOR = 5000


def lake_config(ec: EdgeCore, bucket: str, work: Path) -> dict[str, Any]:
    minio = ec.extra["minio"]
    core = json.loads((REPO / "examples" / "core-kafka-to-lake.json").read_text())
    src = core["sources"]["core-cdc"]
    src.update({"bootstrap-servers": ec.core.sasl_bootstrap, "ca-file": ec.core.info["ca_file"],
                "group-id": f"bench-cdc-{ec.run_id}",
                "topic-pattern": re.escape(ec.core_topic(ec.cdc_prefix) + ".public.") + ".*"})
    lake = core["targets"]["cdc-lake"]
    lake.update({"s3-bucket": bucket, "endpoint": minio["endpoint"],
                 "batching": {"max-records": 5000, "max-age": 1.0}})
    return {"sources": {"core-cdc": src}, "processors": core["processors"],
            "targets": {"cdc-lake": lake}, "dead-letter": {"path": str(work / "dead.jsonl")}}


def one_rate(ec: EdgeCore, watch: LakeWatch, rate: int, seconds: float,
             expected_before: int) -> tuple[dict[str, Any], int]:
    gen = LineDbGenerator(ec.postgres["dsn"], rate=rate, workers=32, seed=rate)
    started = time.time()
    # Transactions from threads while this one watches the lake (arrival = first seen).
    runner = threading.Thread(target=gen.run, kwargs={"seconds": seconds})
    runner.start()
    while runner.is_alive():
        watch.poll()
        time.sleep(0.2)
    stats = gen.stats
    changes = len(gen.committed)
    expected = expected_before + changes
    ok = watch.wait(expected, timeout=seconds * 6 + 120)
    mine = [(arrived, ts, read, kafka) for arrived, ts, read, kafka in watch.arrivals
            if ts is not None and started * 1000 - 1000 <= ts]
    last = max((m[0] for m in mine), default=time.time())
    lags = [arrived - ts / 1000 for arrived, ts, _, _ in mine]
    # Where the time goes: commit -> Debezium read it (the envelope's ts_ms); -> its
    # record in the factory cluster (the record timestamp, kept by MirrorMaker); -> lake.
    capture = [(read - ts) / 1000 for _, ts, read, _ in mine if read is not None]
    to_kafka = [kafka.timestamp() - read / 1000 for _, _, read, kafka in mine
                if read is not None and kafka is not None]
    to_lake = [arrived - kafka.timestamp() for arrived, _, _, kafka in mine if kafka is not None]
    result = {
        "offered_tx_per_s": rate,
        "committed_tx_per_s": round(stats.rate),
        "transactions": stats.transactions, "row_changes": changes,
        "changes_by_op": stats.changes,
        "all_in_lake": ok,
        "sustained_tx_per_s": round(stats.transactions / (last - started)) if mine else 0,
        "sustained_changes_per_s": round(changes / (last - started)) if mine else 0,
        "lag_s": percentiles(lags),
        "lag_parts_s": {"commit_to_debezium": percentiles(capture),
                        "debezium_to_factory_kafka": percentiles(to_kafka),
                        "factory_kafka_to_lake": percentiles(to_lake)},
        "vs_anchor": round(stats.transactions / (last - started) / ANCHOR, 2) if mine else 0,
    }
    return result, expected


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rates", type=int, nargs="+", default=[500, 1000, 2000, 5000])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--warmup", type=float, default=30,
                        help="seconds of 1,000 tx/s before the measured rates (0: none)")
    parser.add_argument("--schemas", action="store_true",
                        help="JSON envelopes with schemas (schemas.enable=true)")
    args = parser.parse_args()
    ec = EdgeCore(own_factory=True, quick_jvm=False, cdc=True, extras=("minio",),
                  debezium_schemas=args.schemas)
    proc = None
    try:
        ec.start()
        minio = ec.extra["minio"]
        for topic in ec.cdc_topics(core=False):
            ec.factory.create_topic(topic)
        deadline = time.monotonic() + 60
        while not set(ec.cdc_topics(core=True)) <= ec.core.topics():
            assert time.monotonic() < deadline, "MirrorMaker did not mirror the CDC topics"
            time.sleep(0.5)
        bucket = make_bucket(minio, f"bench-cdc-{ec.run_id}")
        config = lake_config(ec, bucket, ec.workdir)
        path = ec.workdir / "cdc.json"
        path.write_text(json.dumps(config, indent=2))
        env = {**ec.secrets_env(), "MINIO_CREDENTIAL": json.dumps(
            {"username": minio["access_key"], "password": minio["secret_key"]})}
        proc = UnsflowProcess(["run", str(path)], cwd=ec.workdir, env=env).start()
        proc.wait_for_log("assigned", timeout=60)
        watch = LakeWatch(minio, bucket, ["__source_ts_ms", "__ts_ms", "_received_at"])
        runs, expected = [], 0
        if args.warmup:
            # The JVMs' JIT compilers warm up under load: Debezium's capture lag
            # falls from ~9 s to ~3 s over the first minute. Not measured.
            _, expected = one_rate(ec, watch, 1000, args.warmup, expected)
        for rate in args.rates:
            result, expected = one_rate(ec, watch, rate, args.seconds, expected)
            runs.append(result)
        print(json.dumps({"benchmark": "cdc_to_lake", "seconds_per_rate": args.seconds,
                          "schemas": args.schemas, "anchor_tx_per_s": ANCHOR,
                          "warmup_s": args.warmup,
                          "path": "postgres -> debezium -> factory kafka -> mm2 (SASL_SSL) -> "
                                  "core kafka -> unsflow parse debezium -> minio parquet",
                          "runs": runs}, indent=2))
    finally:
        if proc is not None:
            proc.terminate()
        ec.close()


if __name__ == "__main__":
    main()
