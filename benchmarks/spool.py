"""The spool's own rate: how fast batches are spooled (durably) and read back.

Method (one run prints one JSON document): for each batch size, N messages
(~80-byte JSON payloads, as a source hands them; with ``--records`` also
their decoded record, as after a parse processor) are appended to a fresh
:class:`~unsflow.engine.spool.Spool` batch by batch (each append: encode,
write, fsync, rename, fsync the directory), then every file is read back and
decoded, as the drainer does. The clock covers the appends, then the reads.
The directory is a temporary one under ``--dir`` (default: the system's temp
directory; pass a directory on the disk you will spool to, fsync cost is the
disk's).

With ``--concurrency C``, C appends are in flight at once (as C delivery
tasks of the pipeline are), so group commit puts several batches in one file.

Run: python benchmarks/spool.py [--messages 200000] [--batch 1 100 2000] [--records]
                                [--concurrency 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO / "src"))

from common import payload  # noqa: E402

from unsflow.engine.spool import Spool  # noqa: E402
from unsflow.message import NOT_DECODED, Message  # noqa: E402


def messages(count: int, records: bool) -> list[Message]:
    out = []
    for seq in range(count):
        data = payload(seq)
        out.append(Message("bench/site1/line1/press/vibration", data, 1,
                           received_at=1_763_000_000.0 + seq, source_id="uns",
                           record=json.loads(data) if records else NOT_DECODED))
    return out


async def run(count: int, batch: int, records: bool, where: str | None,
              concurrency: int) -> dict:
    msgs = messages(count, records)
    with tempfile.TemporaryDirectory(dir=where) as tmp:
        spool = Spool(tmp, "bench", max_bytes=1 << 40, max_age=None)
        spool.open()
        started = time.perf_counter()
        batches = [msgs[i:i + batch] for i in range(0, count, batch)]
        for i in range(0, len(batches), concurrency):
            await asyncio.gather(*(spool.append(b) for b in batches[i:i + concurrency]))
        spooled = time.perf_counter() - started
        size = spool.bytes
        files = len(spool.entries)
        started = time.perf_counter()
        read = 0
        entries = list(spool.entries)
        for i in range(0, len(entries), 64):
            got, _ = await spool.read(entries[i:i + 64])
            read += len(got)
        reading = time.perf_counter() - started
        spool.close()
    assert read == count
    return {"batch": batch, "concurrency": concurrency, "messages": count, "records": records,
            "files": files,
            "spool_bytes_per_message": round(size / count, 1),
            "append_msgs_per_s": round(count / spooled),
            "append_batches_per_s": round(count / batch / spooled),
            "read_msgs_per_s": round(count / reading)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 100, 2000])
    parser.add_argument("--records", action="store_true", help="messages carry a decoded record")
    parser.add_argument("--dir", default=None, help="where the temporary spool goes")
    parser.add_argument("--concurrency", type=int, default=1, help="appends in flight at once")
    args = parser.parse_args()
    results = []
    for batch in args.batch:
        count = min(args.messages, batch * 2000)  # bounded time for tiny batches
        results.append(asyncio.run(run(count, batch, args.records, args.dir,
                                       args.concurrency)))
    print(json.dumps({"benchmark": "spool", "dir": args.dir or tempfile.gettempdir(),
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
