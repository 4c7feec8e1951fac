"""The OPC UA source stops while it is connecting, even when a cancellation is lost.

On Python 3.11 a cancellation that arrives as an inner ``asyncio.wait_for`` completes
can be swallowed (asyncua's connect waits that way); the source then went on retrying
and ``stop()`` waited for it. The client here loses the first cancellation on purpose.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from unsflow.components import Context
from unsflow.config.loading import parse_config
from unsflow.sources.opcua import OpcuaSource

pytest.importorskip("asyncua")


class _LosesOneCancel:
    """A client whose connect hangs, swallows the first cancellation and then fails as a
    refused login would; the source retries it."""

    def __init__(self, attempts: list[float]) -> None:
        self.attempts = attempts
        self.lost = False

    async def connect(self) -> None:
        self.attempts.append(time.monotonic())
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if self.lost:
                raise
            self.lost = True
        raise RuntimeError("BadUserAccessDenied")


async def test_stop_ends_the_connect_loop_when_a_cancellation_is_lost(monkeypatch) -> None:
    cfg = parse_config({
        "sources": {"plc": {"type": "opcua", "endpoint": "opc.tcp://127.0.0.1:4840/x",
                            "target": "out", "nodes": [{"node-id": "ns=2;i=1"}]}},
        "targets": {"out": {"type": "file", "path": "/dev/null"}},
        "http": {"port": 0},
    }, env={})
    source = OpcuaSource("plc", cfg.sources["plc"], Context(env={}))
    attempts: list[float] = []
    client = _LosesOneCancel(attempts)

    async def client_for() -> Any:
        return client

    monkeypatch.setattr(source, "_client_for", client_for)
    await source.start()
    while not attempts:
        await asyncio.sleep(0.01)
    began = time.monotonic()
    await asyncio.wait_for(source.stop(), 5)
    assert time.monotonic() - began < 3
    assert client.lost  # the first cancellation was swallowed, and stop() still ended
    assert source._task is None and not source.ready
