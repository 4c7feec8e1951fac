"""A fast lossless MQTT publisher for the live scenarios, in a process of its own.

``python -m benchmarks.publisher --host H --port P --count N [--size B] [--qos 1]
[--window 1000] [--rate R] [--topic T]`` publishes N numbered JSON payloads
(:func:`benchmarks.common.payload`), QoS 1 with every PUBACK awaited and at
most WINDOW unacknowledged, and prints ``{"seconds": ..., "cpu_s": ...}``.
It is a separate process so that its CPU is not the benchmark's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time

from benchmarks.common import TOPIC, encode_stream, publish_packets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--size", type=int, default=80)
    parser.add_argument("--qos", type=int, default=1, choices=[0, 1])
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=None)
    parser.add_argument("--topic", default=TOPIC)
    parser.add_argument("--start-at", type=float, default=None,
                        help="time.time() at which to start (the caller's clock)")
    args = parser.parse_args()
    packets = encode_stream(args.count, args.size, args.qos, args.topic)
    if args.start_at is not None:
        time.sleep(max(0.0, args.start_at - time.time()))
    started = time.time()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    seconds = asyncio.run(publish_packets(args.host, args.port, packets, qos=args.qos,
                                          window=args.window, rate=args.rate))
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"started": started, "seconds": seconds,
                      "cpu_s": round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 3)}))


if __name__ == "__main__":
    main()
