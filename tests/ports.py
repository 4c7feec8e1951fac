"""Ports for the services and servers a test starts, chosen so that nothing else takes them.

Binding to port 0 and releasing it hands out a port from the kernel's ephemeral
range (``/proc/sys/net/ipv4/ip_local_port_range``, 32768–60999 by default),
the same range every outgoing connection draws its local port from. Between
the release and the service's own bind, any client socket on the machine
(Kafka's, a test's MQTT client, another pytest worker's) may be given that port,
and the service then fails with "Address already in use". CI saw this once: a
core Kafka of the edge-to-core topology failed to start.

So ports come from below the ephemeral range instead, from a block of its own
for each pytest-xdist worker (``PYTEST_XDIST_WORKER``, ``gw0``…), handed out in
turn within the block and checked free by a bind first. No client socket is
ever given one of them, no other worker hands them out, and this process does
not hand the same one out twice before it has gone through the whole block.
"""

from __future__ import annotations

import os
import socket
import threading

__all__ = ["free_ports"]

FIRST = 20000  # below the ephemeral range; above the services' default ports
BLOCK = 1500  # ports per worker: workers gw0..gw7 fit below 32000
_lock = threading.Lock()
_next: dict[int, int] = {}  # block start: the next port to try in it


def _block() -> tuple[int, int]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index = int(worker) if worker.isdigit() else 0
    start = FIRST + (index % 8) * BLOCK
    return start, start + BLOCK


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that nothing listens on (module docstring)."""
    start, end = _block()
    ports: list[int] = []
    with _lock:
        # A different start per process, so that a test run after another does not begin
        # with the ports its predecessor's services may still hold.
        port = _next.get(start, start + os.getpid() % BLOCK)
        for _ in range(BLOCK):
            following = start if port + 1 >= end else port + 1
            _next[start] = following
            if _bindable(port):
                ports.append(port)
                if len(ports) == count:
                    return ports
            port = following
    raise RuntimeError(f"no {count} free ports in {start}-{end - 1}")
