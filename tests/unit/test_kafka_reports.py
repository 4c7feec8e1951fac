"""The Kafka target's delivery reports: one callback for a whole batch, and a failed
message found again by its topic, key and value (no closure per message)."""

from __future__ import annotations

import asyncio

from unsflow.message import Message
from unsflow.targets.kafka import _Reports


class Delivered:
    """What confluent-kafka hands a delivery callback (the parts the target reads)."""

    def __init__(self, topic: str, key: bytes | None, value: bytes) -> None:
        self._t, self._k, self._v = topic, key, value

    def topic(self) -> str:
        return self._t

    def key(self) -> bytes | None:
        return self._k

    def value(self) -> bytes:
        return self._v


async def test_failed_deliveries_map_back_to_their_messages_once_each() -> None:
    reports = _Reports(asyncio.get_running_loop())
    items = [(Message("a", b"1"), "t", "k1", b"1", []), (Message("a", b"2"), "t", "k1", b"2", []),
             (Message("a", b"2"), "t", "k1", b"2", []), (Message("a", b"3"), "t", None, b"3", [])]
    reports.report(None, Delivered("t", b"k1", b"1"))
    reports.report("err-a", Delivered("t", b"k1", b"2"))
    reports.report("err-b", Delivered("t", b"k1", b"2"))
    reports.report("err-c", Delivered("t", None, b"3"))
    reports.all_produced(4)
    await asyncio.wait_for(reports.future, 1)
    assert reports.failed(items) == [(1, "err-a"), (2, "err-b"), (3, "err-c")]


async def test_a_report_that_matches_no_message_fails_the_batch() -> None:
    reports = _Reports(asyncio.get_running_loop())
    items = [(Message("a", b"1"), "t", "k", b"1", [])]
    reports.report("err", Delivered("other", b"k", b"1"))
    assert reports.failed(items) == [(-1, "err")]
