"""Kafka source: a consumer group member that delivers batches and commits after acks.

Guarantees:

- At least once. Offsets are committed only for messages whose batch was
  acknowledged by the engine (every target durably accepted it or
  dead-lettered it), and only for a contiguous prefix of batches in the order
  they were delivered: a later batch acknowledged first waits for the earlier
  ones. Automatic commits and offset stores are off.
- Scaling is by group: members sharing ``group-id`` split the partitions.
  When a partition is revoked or lost (a rebalance), what this member read
  from it and has not acknowledged yet is forgotten: the new owner reads it
  again from the committed offset.
- Bounded: when the engine stops taking batches (its ``max-in-flight``
  budget of messages is spent) or ``max-pending`` batches are
  unacknowledged, the member pauses its partitions (it keeps polling, so it
  stays in the group however long the targets take) and resumes when acks
  catch up.
- A broker that is down is logged once and waited for (librdkafka
  reconnects). A refused login at start raises
  :class:`~unsflow.errors.NotConnected`; a fatal client error raises
  :class:`~unsflow.errors.ComponentError` from ``read``, which stops the
  pipeline.

Each message has the Kafka topic as ``topic`` (or the value of the
``topic-header`` header, e.g. the ``mqtt.topic`` that the Kafka target
writes), the record value as ``payload``, the record timestamp as
``received_at``, and ``headers``: ``kafka.topic``, ``kafka.partition``,
``kafka.offset``, ``kafka.key`` (bytes or None) and each record header (bytes;
of a repeated name, the last).

The consumer runs on a thread of the source; batches reach asyncio through
one call per batch.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections import deque
from typing import Any, Literal, Self

from pydantic import Field, field_validator, model_validator

from unsflow._kafka import (
    ClientValue,
    ErrorWatch,
    KafkaConnectionConfig,
    check_client_config,
    check_connection,
    client_settings,
    import_confluent,
)
from unsflow.components import Context
from unsflow.config.models import SourceConfig
from unsflow.engine.acks import InOrderAcks
from unsflow.errors import ComponentError
from unsflow.message import Message
from unsflow.sources.base import Source

__all__ = ["KafkaSource", "KafkaSourceConfig", "OffsetTracker"]

log = logging.getLogger("unsflow.sources.kafka")

Partition = tuple[str, int]
_POLL = 0.2  # seconds one consume() waits; also the longest an acked offset waits to be committed
_MAX_UNREAD = 64  # batches fetched ahead of read(); pausing often costs refetches


class KafkaSourceConfig(KafkaConnectionConfig, SourceConfig):
    """A consumer group member reading topics (or a topic pattern)."""

    type: Literal["kafka"] = Field(description="Source type: Kafka topics.")
    group_id: str = Field(min_length=1, description="Consumer group; members share partitions.")
    topics: list[str] | None = Field(None, min_length=1, description="Topics to read.")
    topic_pattern: str | None = Field(
        None, min_length=1, description="Regular expression of the topics to read (instead of "
        "topics); new matching topics are picked up. A leading ^ is added if missing.")
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="Where a group without a committed offset starts.")
    topic_header: str | None = Field(
        None, description="Use this record header as the message topic when present (e.g. "
        "mqtt.topic, written by the kafka target), so MQTT topic levels survive the trip.")
    max_poll_records: int = Field(1000, ge=1, le=100000, description="Most messages in a batch.")
    max_pending: int = Field(
        1024, ge=1, le=65536,
        description="Unacknowledged batches before the member pauses. The pipeline's "
        "max-in-flight (messages) usually binds first: the member also pauses while the "
        "engine takes no batches.")
    consumer_config: dict[str, ClientValue] = Field(
        default_factory=dict,
        description="Extra librdkafka consumer settings (e.g. session.timeout.ms, "
        "partition.assignment.strategy); commit, group and security keys are refused here.")

    @field_validator("consumer_config")
    @classmethod
    def _check_extra(cls, value: dict[str, ClientValue]) -> dict[str, ClientValue]:
        return check_client_config(value)

    @field_validator("topic_pattern")
    @classmethod
    def _check_pattern(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value if value.startswith("^") else "^" + value
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _one_of_topics(self) -> Self:
        if (self.topics is None) == (self.topic_pattern is None):
            raise ValueError("exactly one of topics and topic-pattern must be set")
        return self


class OffsetTracker:
    """Which offsets may be committed, given batches acked in any order.

    Batches are registered in delivery order with the next offset of each
    partition they hold; an ack releases the contiguous prefix of acked
    batches (:class:`~unsflow.engine.acks.InOrderAcks`). Revoking a partition
    forgets it in every batch not yet released.

    >>> t = OffsetTracker()
    >>> first, second = t.add({("a", 0): 11}), t.add({("a", 0): 21, ("a", 1): 5})
    >>> t.ack(second)
    {}
    >>> t.ack(first)
    {('a', 0): 21, ('a', 1): 5}
    >>> third = t.add({("a", 0): 30}); t.revoke([("a", 0)]); t.ack(third)
    {}
    """

    def __init__(self) -> None:
        self._acks: InOrderAcks[dict[Partition, int]] = InOrderAcks()

    def add(self, offsets: dict[Partition, int]) -> int:
        """Register the next delivered batch; returns its token."""
        return self._acks.add(offsets)

    def ack(self, seq: int) -> dict[Partition, int]:
        """Offsets to commit now (partition -> next offset); empty when none."""
        commit: dict[Partition, int] = {}
        for offsets in self._acks.done(seq):
            commit.update(offsets)
        return commit

    def revoke(self, partitions: list[Partition]) -> None:
        gone = set(partitions)
        for offsets in self._acks.items():
            for tp in gone & offsets.keys():
                del offsets[tp]

    def __len__(self) -> int:
        return len(self._acks)


class KafkaSource(Source[KafkaSourceConfig]):
    """Reads ``topics`` (or ``topic-pattern``) as member of ``group-id``.

    The consumer belongs to one thread of the source: confluent-kafka blocks a
    call from another thread (a commit, a metadata request) while ``consume``
    runs. ``ack`` therefore hands the offsets to that thread, which commits
    them between two polls (at most ``_POLL`` seconds later), several acks in
    one request.
    """

    config_class = KafkaSourceConfig

    def __init__(self, component_id: str, config: KafkaSourceConfig, context: Context) -> None:
        super().__init__(component_id, config, context)
        self._consumer: Any = None
        self._watch = ErrorWatch(component_id, log)
        self._lock = threading.Lock()
        self._tracker = OffsetTracker()
        self._batches: deque[tuple[list[Message], int]] = deque()
        self._sizes: dict[int, int] = {}
        # Offsets acked and not yet handed to librdkafka; all asked so far (for the last commit).
        self._to_commit: dict[Partition, int] = {}
        self._commit_asked: dict[Partition, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = asyncio.Event()
        self._thread: threading.Thread | None = None
        self._running = False
        self._error: BaseException | None = None
        self._assigned = threading.Event()
        self._has_partitions = threading.Event()
        self.received = 0
        self.acked = 0
        self.commits = 0
        self.pauses = 0  # times the member paused its partitions (backpressure)

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        confluent = import_confluent()
        c = self.config
        settings = await client_settings(c, self.context, self.id)
        settings.update({
            "group.id": c.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": c.auto_offset_reset,
            "error_cb": self._watch,
            "on_commit": self._on_commit,
        })
        settings.update(c.consumer_config)
        try:
            consumer = confluent.Consumer(settings)
        except (confluent.KafkaException, ValueError, TypeError) as exc:
            raise ComponentError(f"cannot create the Kafka consumer: {exc}",
                                 component_id=self.id) from exc
        try:
            # Before subscribing, poll() serves error callbacks and fetches nothing.
            reachable = await asyncio.to_thread(check_connection, consumer, self._watch, c,
                                                self.id, 5.0, lambda: consumer.poll(0))
        except BaseException:
            await asyncio.to_thread(consumer.close)
            raise
        topics = c.topics if c.topics is not None else [c.topic_pattern]
        consumer.subscribe(topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                           on_lost=self._on_lost)
        self._consumer = consumer
        self._loop = asyncio.get_running_loop()
        self._running = True
        self._thread = threading.Thread(target=self._consume_loop, args=(consumer,),
                                        name=f"kafka-consumer-{self.id}", daemon=True)
        self._thread.start()
        if reachable:
            log.info("[%s] connected to Kafka %s (%s), group %r, %s", self.id,
                     c.bootstrap_servers, c.security_protocol, c.group_id,
                     f"topics {c.topics}" if c.topics else f"pattern {c.topic_pattern!r}")
        else:
            log.warning("[%s] Kafka %s not reachable yet; waiting while librdkafka reconnects",
                        self.id, c.bootstrap_servers)

    async def stop(self) -> None:
        """Stop consuming, commit what is acknowledged, leave the group."""
        self._running = False
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.to_thread(thread.join, 30)
        self._consumer = None

    def describe_endpoint(self) -> str:
        return f"Kafka {self.config.bootstrap_servers}"

    @property
    def ready(self) -> bool:
        return self._consumer is not None and self._assigned.is_set()

    async def wait_assigned(self, timeout: float | None = None) -> None:
        """Until the group gave this member partitions (tests use it before producing)."""
        # Partitions, not only an assignment: a member joining a busy group may first get none.
        await asyncio.wait_for(asyncio.to_thread(self._has_partitions.wait), timeout)

    # -- the consumer thread ------------------------------------------------

    def _consume_loop(self, consumer: Any) -> None:
        try:
            self._consume(consumer)
        except BaseException as exc:  # noqa: BLE001 - handed to read(); the pipeline stops on it
            self._fail(exc)
        finally:
            self._close(consumer)

    def _consume(self, consumer: Any) -> None:
        c = self.config
        paused = False
        while self._running:
            self._commit(consumer, asynchronous=True)
            with self._lock:
                # Unacked batches, or batches the engine does not take (its budget is spent).
                full = len(self._tracker) >= c.max_pending or len(self._batches) >= _MAX_UNREAD
            if full:
                # Keep polling (group membership, rebalances, commits) but fetch nothing.
                assignment = consumer.assignment()
                if assignment:
                    consumer.pause(assignment)
                if not paused:
                    self.pauses += 1
                paused = True
            elif paused:
                assignment = consumer.assignment()
                if assignment:
                    consumer.resume(assignment)
                paused = False
            # The first message returns at once; what is already fetched joins it. Paused,
            # a shorter wait notices acks (and resumes) sooner.
            records = consumer.consume(1, _POLL / 4 if full else _POLL)
            if records and not full and c.max_poll_records > 1:
                records.extend(consumer.consume(c.max_poll_records - 1, 0))
            if records:
                self._add(records)

    def _commit(self, consumer: Any, *, asynchronous: bool) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        with self._lock:
            if asynchronous:
                todo, self._to_commit = self._to_commit, {}
            else:
                todo, self._to_commit = dict(self._commit_asked), {}
        if not todo:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in todo.items()]
        try:
            consumer.commit(offsets=offsets, asynchronous=asynchronous)
            self.commits += 1
        except KafkaException as exc:
            # A later commit covers these offsets; until then they would be read again.
            log.warning("[%s] offset commit failed: %s; messages after the last successful "
                        "commit may be read again", self.id, exc.args[0].str())

    def _close(self, consumer: Any) -> None:
        try:
            # Asynchronous commits may still be on their way: make sure they landed.
            self._commit(consumer, asynchronous=False)
        finally:
            consumer.close()

    def _add(self, records: list[Any]) -> None:
        from confluent_kafka import TIMESTAMP_NOT_AVAILABLE

        messages: list[Message] = []
        offsets: dict[Partition, int] = {}
        now = time.time()
        topic_header = self.config.topic_header
        for rec in records:
            err = rec.error()
            if err is not None:
                if err.fatal():
                    raise ComponentError(f"fatal Kafka consumer error: {err.str()}",
                                         component_id=self.id)
                self._watch(err)
                continue
            topic, partition, offset = rec.topic(), rec.partition(), rec.offset()
            headers: dict[str, Any] = {"kafka.topic": topic, "kafka.partition": partition,
                                       "kafka.offset": offset, "kafka.key": rec.key()}
            record_headers = rec.headers()
            if record_headers:
                headers.update(record_headers)
            ts_type, ts = rec.timestamp()
            msg_topic = topic
            if topic_header is not None:
                value = headers.get(topic_header)
                if isinstance(value, bytes) and value:
                    msg_topic = value.decode("utf-8", "replace")
            messages.append(Message(msg_topic, rec.value() or b"", 0, False,
                                    ts / 1000 if ts_type != TIMESTAMP_NOT_AVAILABLE else now,
                                    None, source_id=self.id, headers=headers))
            offsets[(topic, partition)] = offset + 1
        if not messages:
            return
        self._watch.clear()
        with self._lock:
            seq = self._tracker.add(offsets)
            self._batches.append((messages, seq))
            self._sizes[seq] = len(messages)
            self.received += len(messages)
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._ready.set)

    def _fail(self, exc: BaseException) -> None:
        if not isinstance(exc, ComponentError):
            exc = ComponentError(f"Kafka consumer failed: {exc!r}", component_id=self.id)
        self._error = exc
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._ready.set)

    # librdkafka calls these from consume(), on the consumer thread.

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        log.info("[%s] assigned %s", self.id, _names(partitions))
        self._assigned.set()  # ready: a member of its group, even one with no partitions
        if partitions:
            self._has_partitions.set()

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        # What was acked for them is committed before they go (the new owner starts there).
        self._commit(consumer, asynchronous=False)
        self._forget(partitions, "revoked")

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        self._forget(partitions, "lost")

    def _forget(self, partitions: list[Any], how: str) -> None:
        gone = [(p.topic, p.partition) for p in partitions]
        with self._lock:
            self._tracker.revoke(gone)
            for tp in gone:
                self._commit_asked.pop(tp, None)
                self._to_commit.pop(tp, None)
        log.info("[%s] %s %s; unacknowledged messages of them are left to the next owner",
                 self.id, how, _names(partitions))

    def _on_commit(self, err: Any, partitions: list[Any]) -> None:
        from confluent_kafka import KafkaError

        if err is not None:
            if err.code() != KafkaError._NO_OFFSET:  # nothing new to commit
                log.warning("[%s] offset commit failed: %s", self.id, err.str())
            return
        bad = [p for p in partitions if p.error is not None]
        if bad:
            log.warning("[%s] offset commit failed for %s: %s", self.id, _names(bad),
                        bad[0].error.str())

    # -- engine side ---------------------------------------------------------

    async def read(self) -> tuple[list[Message], int]:
        while True:
            if self._error is not None:
                raise self._error
            with self._lock:
                if self._batches:
                    return self._batches.popleft()
                self._ready.clear()
            await self._ready.wait()

    def ack(self, token: int) -> None:
        """Batch ``token`` is durable everywhere; its offsets go to the next commit."""
        with self._lock:
            commit = self._tracker.ack(token)
            self._to_commit.update(commit)
            self._commit_asked.update(commit)
            self.acked += self._sizes.pop(token, 0)

    @property
    def in_flight(self) -> int:
        """Messages delivered (or fetched for delivery) and not acknowledged yet."""
        with self._lock:
            return sum(self._sizes.values())


def _names(partitions: list[Any]) -> str:
    return ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "nothing"
