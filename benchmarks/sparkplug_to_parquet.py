"""Sparkplug B -> Parquet: metrics per second decoded by the sparkplug processor and durably
written to a local lake, for NDATA messages of 10 and of 100 metrics.

Method (one run prints one JSON document):

1. Payloads are built once, before the clock: an NBIRTH announcing M metrics with
   aliases (Double, Int32, Boolean, String in turn, as a PLC's tags are), then N NDATA
   messages carrying all M metrics by alias only (no names, no datatypes: what an edge
   node sends after its BIRTH), with seq 1..255 wrapping.
2. ``decode``: the processor alone (``SparkplugProcessor.process``), batches of 2,000
   messages (a source's batch), typed value columns. Metrics decoded per second.
3. ``lake``: a pipeline in this process (the engine, the sparkplug processor, the s3
   target on a local directory, every object fsynced, flush at 50,000 rows), fed by an
   in-memory source in batches of 2,000 messages; the clock runs from the first batch
   to the last acknowledgement (every row durably written; the rows are counted in the
   Parquet files afterwards). Metrics (rows) per second.
   ``lake`` is ``output: metric`` (one engine message per metric, as for UNS bridging);
   ``lake_output_message`` is ``output: message`` with the target's ``event-type: batch``
   (one engine message per NDATA, the same rows). The MQTT leg is left out:
   benchmarks/mqtt_to_parquet.py measures it.

Run: python benchmarks/sparkplug_to_parquet.py [--messages 20000] [--metrics 10 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from unsflow.components import Context
from unsflow.config.loading import parse_config
from unsflow.engine.pipeline import Pipeline
from unsflow.message import Message
from unsflow.processors.sparkplug import SparkplugProcessor, SparkplugProcessorConfig
from unsflow.codecs.sparkplug import encode_payload
from unsflow.testing import MemorySource

KINDS = [("Double", lambda i, k: i * 0.5 + k), ("Int32", lambda i, k: i - k),
         ("Boolean", lambda i, k: (i + k) % 2 == 0), ("String", lambda i, k: f"s{i % 97}")]
TOPIC = "spBv1.0/plant1/{kind}/edge1"
BATCH = 2000


def messages(count: int, metrics: int) -> list[Message]:
    now = int(time.time() * 1000)
    birth = encode_payload(seq=0, timestamp=now, metrics=[
        {"name": f"Line1/Tag{k}", "alias": k + 1, "datatype": KINDS[k % 4][0],
         "value": KINDS[k % 4][1](0, k)} for k in range(metrics)])
    out = [Message(TOPIC.format(kind="NBIRTH"), birth, 0, received_at=time.time())]
    for i in range(count):
        payload = encode_payload(seq=(i + 1) % 256, timestamp=now + i, metrics=[
            {"alias": k + 1, "datatype": KINDS[k % 4][0], "value": KINDS[k % 4][1](i, k)}
            for k in range(metrics)])
        out.append(Message(TOPIC.format(kind="NDATA"), payload, 0, received_at=time.time()))
    return out


def fresh(batch: list[Message]) -> list[Message]:
    return [Message(m.topic, m.payload, 0, received_at=m.received_at) for m in batch]


async def decode_rate(msgs: list[Message], metrics: int) -> dict[str, Any]:
    proc = SparkplugProcessor("bench", SparkplugProcessorConfig(
        type="sparkplug", value_columns="typed"), Context(env={}))
    await proc.start()
    batches = [fresh(msgs[i:i + BATCH]) for i in range(0, len(msgs), BATCH)]
    started = time.perf_counter()
    rows = 0
    for batch in batches:
        out, failures = await proc.process(batch)
        assert not failures, failures[0].error
        rows += len(out)
    seconds = time.perf_counter() - started
    await proc.stop()
    data_rows = rows - metrics  # the NBIRTH's
    return {"rows": rows, "seconds": round(seconds, 3),
            "metrics_per_s": round(rows / seconds), "ndata_per_s": round(
                (data_rows / metrics) / seconds)}


async def lake_rate(msgs: list[Message], metrics: int, workdir: Path, output: str
                    ) -> dict[str, Any]:
    lake = workdir / f"lake-{metrics}-{output}"
    cfg = parse_config({
        "processors": {"spb": {"type": "sparkplug", "value-columns": "typed", "output": output}},
        "targets": {"lake": {"type": "s3", "local-path": str(lake), "processors": ["spb"],
                             "event-type": "batch" if output == "message" else "single",
                             "batching": {"max-records": 50000, "max-age": 1.0}}},
        "subscriptions": {"spBv1.0/#": {"qos": 1, "target": "lake"}},
        "dead-letter": {"path": str(workdir / "dead.jsonl")},
        "spool": {"path": str(workdir / "spool")},
        "http": {"port": 0},
    }, env={})
    source = MemorySource("bench")
    pipeline = Pipeline(cfg, Context(env={}), source=source)
    batches = [fresh(msgs[i:i + BATCH]) for i in range(0, len(msgs), BATCH)]
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    while not pipeline.running:
        await asyncio.sleep(0.01)
    started = time.perf_counter()
    for batch in batches:
        source.push(batch)
    while source.acked_batches < len(batches):
        await asyncio.sleep(0.005)
    seconds = time.perf_counter() - started
    stop.set()
    await task
    import pyarrow.dataset as ds

    rows = ds.dataset(lake, format="parquet", partitioning="hive").count_rows()
    expected = metrics * len(msgs)
    assert rows == expected, f"{rows} rows in the lake, expected {expected}"
    return {"rows": rows, "seconds": round(seconds, 3), "metrics_per_s": round(rows / seconds),
            "ndata_per_s": round(len(msgs) / seconds),
            "dead_lettered": pipeline.dead_letter.count}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20000, help="NDATA messages per run")
    parser.add_argument("--metrics", type=int, nargs="+", default=[10, 100])
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="unsflow-bench-spb-"))
    results: list[dict[str, Any]] = []
    try:
        for metrics in args.metrics:
            # Fewer messages when they are larger: the same order of rows per run.
            count = max(1000, args.messages * 10 // metrics)
            msgs = messages(count, metrics)
            results.append({"metrics_per_ndata": metrics, "ndata_messages": count,
                            "payload_bytes": len(msgs[-1].payload),
                            "decode": await decode_rate(msgs, metrics),
                            "lake": await lake_rate(msgs, metrics, workdir, "metric"),
                            "lake_output_message": await lake_rate(msgs, metrics, workdir,
                                                                   "message")})
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps({"benchmark": "sparkplug_to_parquet", "python": platform.python_version(),
                      "cpus": os.cpu_count(), "results": results}, indent=2))


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
