"""What the benchmarks share: ports, the payload, peak memory."""

from __future__ import annotations

import socket
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def payload(seq: int) -> bytes:
    return b'{"seq":%d,"value":%.3f,"ts":%d,"machine":"press-07"}' % (
        seq, 12.0 + (seq % 600) / 100, 1_763_000_000_000 + seq)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")
