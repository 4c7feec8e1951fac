"""Kafka target: produces each message to a Kafka topic.

Guarantees:

- The producer is idempotent with ``acks=all``: a message counts as accepted
  only when its delivery report says the partition leader and its in-sync
  replicas have it. ``write`` returns after every message of the batch has
  its report.
- A full local queue (librdkafka's ``queue.buffering.max.*``) is
  backpressure: ``write`` waits for reports to drain it and produces again;
  nothing is dropped.
- A batch whose report says a retriable error or a timeout
  (``delivery-timeout``) raises :class:`~unsflow.errors.TransientError`: the
  engine produces it again (at least once; with the record key fixed, a
  compacted topic keeps one copy). A message Kafka can never take (too large,
  invalid topic, topic authorization failed) and a message whose topic or key
  template cannot be filled is a :class:`~unsflow.message.Failure` for the
  dead letter; the rest of the batch is written.
- A refused login at start raises :class:`~unsflow.errors.NotConnected`; an
  unreachable cluster does not stop the start (librdkafka keeps reconnecting
  and batches wait, then time out and are retried).

What is sent: the payload unchanged when no processor decoded it, else the
record as JSON. The key is the ``key`` template (the MQTT topic by default,
so one topic's messages stay in order on one partition); partitions are chosen
by murmur2 of the key, as the Java client does. Headers carry the MQTT origin:
``mqtt.topic``, ``mqtt.qos``, ``mqtt.retain``, ``mqtt.content_type`` and the MQTT 5
user properties, each as a header of its own name. A message that came from
Kafka carries its record headers on instead. The record timestamp is the
time the source received the message.

``produce`` only enqueues, so it runs on the event loop (a thread hop per
batch costs more); only a full local queue moves the rest of a batch to a
worker thread that waits for room. Delivery reports run on a poller thread of
the target and resolve one asyncio future per batch, not one per message.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Literal

import orjson
from pydantic import Field, field_validator

from unsflow._kafka import (
    TOPIC_NAME,
    ClientValue,
    ErrorWatch,
    KafkaConnectionConfig,
    check_client_config,
    check_connection,
    client_settings,
    import_confluent,
)
from unsflow.config.models import TargetConfig
from unsflow.engine.topics import TEMPLATE_FIELDS, compile_template, topic_only
from unsflow.errors import ComponentError, NotConnected, TransientError
from unsflow.message import NOT_DECODED, Failure, Message
from unsflow.targets.base import Target

__all__ = ["KafkaTarget", "KafkaTargetConfig", "mqtt_headers"]

log = logging.getLogger("unsflow.targets.kafka")

_CACHE_SIZE = 65536  # distinct MQTT topics remembered for keys, topics and headers


class KafkaTargetConfig(KafkaConnectionConfig, TargetConfig):
    """Where and how messages are produced."""

    type: Literal["kafka"] = Field(description="Target type: a Kafka topic.")
    topic: str = Field(
        "{target}", min_length=1,
        description="Kafka topic template; default the target's name. Fields: " + TEMPLATE_FIELDS
        + ". The result must be a valid Kafka topic name (letters, digits, '.', '_', '-').")
    key: str | None = Field(
        "{topic}",
        description="Record key template (same fields as topic); default the MQTT topic. "
        "Messages with one key go to one partition, in order. null: no key.")
    compression: Literal["zstd", "lz4", "snappy", "gzip", "none"] = Field(
        "lz4", description="Compression of record batches.")
    linger_ms: int = Field(
        5, ge=0, le=900000, description="Milliseconds the producer waits to fill a batch.")
    batch_size: int = Field(
        1000000, ge=1, le=2147483647, description="Most bytes in one record batch per partition.")
    delivery_timeout: float = Field(
        30.0, gt=0, le=3600,
        description="Seconds a message may take to be acknowledged, retries included; then the "
        "batch is retried by the engine.")
    producer_config: dict[str, ClientValue] = Field(
        default_factory=dict,
        description="Extra librdkafka producer settings (e.g. queue.buffering.max.messages); "
        "acks, idempotence, security and bootstrap keys are set by unsflow and refused here.")

    @field_validator("producer_config")
    @classmethod
    def _check_extra(cls, value: dict[str, ClientValue]) -> dict[str, ClientValue]:
        return check_client_config(value)

    @field_validator("topic", "key")
    @classmethod
    def _check_template(cls, value: str | None) -> str | None:
        if value is not None:
            compile_template(value, "t")  # raises ValueError for a broken template
        return value


def mqtt_headers(msg: Message, cache: dict[tuple[str, int, bool], list[Any]] | None = None
                 ) -> list[tuple[str, bytes | None]]:
    """Headers for a message: its MQTT origin, or the record headers of a Kafka message.

    ``cache`` keeps the fixed part per (topic, qos, retain); lists from it are
    shared, so callers must not change them.
    """
    if msg.headers is not None:
        return [(k, v.encode() if isinstance(v, str) else v) for k, v in msg.headers.items()
                if not k.startswith("kafka.") and (v is None or isinstance(v, (bytes, str)))]
    ident = (msg.topic, msg.qos, msg.retain)
    headers = cache.get(ident) if cache is not None else None
    if headers is None:
        headers = [("mqtt.topic", msg.topic.encode()), ("mqtt.qos", b"%d" % msg.qos),
                   ("mqtt.retain", b"true" if msg.retain else b"false")]
        if cache is not None and len(cache) < _CACHE_SIZE:
            cache[ident] = headers
    props = msg.properties
    if isinstance(props, dict) and (props.get("content_type") or props.get("user_property")):
        headers = list(headers)
        content_type = props.get("content_type")
        if content_type:
            headers.append(("mqtt.content_type", str(content_type[0]).encode()))
        for pair in props.get("user_property") or ():
            if isinstance(pair, (tuple, list)) and len(pair) == 2:
                headers.append((str(pair[0]), str(pair[1]).encode()))
    return headers


class _Reports:
    """Delivery reports of one batch; resolves its future when the last arrives.

    One callback (``report``) serves every message of the batch: a failed
    message is recognised by its topic, key and value, not by a closure per
    message (cheaper; messages with the same three are interchangeable).
    """

    __slots__ = ("done", "errors", "expected", "future", "lock", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.lock = threading.Lock()
        self.done = 0
        self.expected: int | None = None
        self.errors: list[tuple[Any, Any]] = []

    def report(self, err: Any, msg: Any) -> None:
        # librdkafka's thread that polls (the poller, or stop()'s flush).
        with self.lock:
            if err is not None:
                self.errors.append((err, msg))
            self.done += 1
            finished = self.done == self.expected
        if finished:
            self.loop.call_soon_threadsafe(_resolve, self.future)

    def all_produced(self, count: int) -> None:
        with self.lock:
            self.expected = count
            finished = self.done == count
        if finished:
            self.loop.call_soon_threadsafe(_resolve, self.future)

    def failed(self, items: list[Any]) -> list[tuple[int, Any]]:
        """(index in ``items``, error) of each failed delivery."""
        if not self.errors:
            return []
        where: dict[tuple[Any, ...], list[int]] = {}
        for i, (_, topic, key, value, _) in enumerate(items):
            where.setdefault((topic, _bytes(key), value), []).append(i)
        out = []
        for err, msg in self.errors:
            candidates = where.get((msg.topic(), msg.key(), msg.value()))
            # Unknown (never expected): -1, which fails the whole batch for a retry.
            out.append((candidates.pop(0) if candidates else -1, err))
        return out


def _bytes(key: Any) -> bytes | None:
    return key.encode() if isinstance(key, str) else key


class KafkaTarget(Target[KafkaTargetConfig]):
    config_class = KafkaTargetConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        c = self.config
        self._topic = compile_template(c.topic, self.id)
        self._key = compile_template(c.key, self.id) if c.key is not None else None
        self._valid_topics: set[str] = set()
        self._headers: dict[tuple[str, int, bool], list[Any]] = {}
        # QoS, retain, Kafka topic, key and headers by MQTT topic, when the templates use
        # only the topic (not the record or Kafka headers).
        self._topic_only = topic_only(c.topic) and (c.key is None or topic_only(c.key))
        self._per_topic: dict[str, tuple[int, bool, str, str | None, list[Any]]] = {}
        self._producer: Any = None
        self._settings: dict[str, Any] = {}
        self._watch = ErrorWatch(self.id, log)
        self._poller: threading.Thread | None = None
        self._polling = False
        self._drained = threading.Event()
        self._produce_lock: asyncio.Lock | None = None
        self._fatal: Any = None
        self._stopped = False
        self.produced = 0
        self.delivered = 0

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        import_confluent()
        self._stopped = False
        c = self.config
        settings = await client_settings(c, self.context, self.id)
        settings.update({
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": c.compression,
            "linger.ms": c.linger_ms,
            "batch.size": c.batch_size,
            "message.timeout.ms": int(c.delivery_timeout * 1000),
            # The Java client's partitioner: one key, one partition, whoever produces it.
            "partitioner": "murmur2_random",
            "error_cb": self._watch,
        })
        settings.update(c.producer_config)
        self._settings = settings
        self._produce_lock = asyncio.Lock()
        self._open()
        reachable = await asyncio.to_thread(check_connection, self._producer, self._watch, c,
                                            self.id, 5.0)
        if reachable:
            log.info("[%s] connected to Kafka %s (%s)", self.id, c.bootstrap_servers,
                     c.security_protocol)
        else:
            log.warning("[%s] Kafka %s not reachable yet; batches wait while librdkafka "
                        "reconnects", self.id, c.bootstrap_servers)

    def _open(self) -> None:
        from confluent_kafka import KafkaException, Producer

        try:
            self._producer = Producer(self._settings)
        except (KafkaException, ValueError, TypeError) as exc:
            raise ComponentError(f"cannot create the Kafka producer: {exc}",
                                 component_id=self.id) from exc
        self._fatal = None
        self._polling = True
        self._poller = threading.Thread(target=self._poll_loop, args=(self._producer,),
                                        name=f"kafka-poller-{self.id}", daemon=True)
        self._poller.start()

    def _poll_loop(self, producer: Any) -> None:
        while self._polling:
            if producer.poll(0.1):
                self._drained.set()

    async def _close(self, timeout: float, *, purge: bool = False) -> int:
        """Flush (reports still resolve their batches), stop the poller; messages left.

        ``purge`` first fails what is queued or in flight, so that its batches
        learn at once that they must be retried.
        """
        producer, self._producer = self._producer, None
        if producer is None:
            return 0
        if purge:
            producer.purge()
        left = await asyncio.to_thread(producer.flush, timeout)
        if left:
            # Fail what is still queued so that its writers hear it now (their batches are
            # not acknowledged; the source redelivers them).
            producer.purge()
            await asyncio.to_thread(producer.flush, 1.0)
        self._polling = False
        if self._poller is not None:
            await asyncio.to_thread(self._poller.join, 5)
        return int(left)

    async def stop(self) -> None:
        # Short: writers had the pipeline's shutdown time; what is left is redelivered.
        self._stopped = True
        left = await self._close(min(self.config.delivery_timeout, 5.0))
        if left:
            log.warning("[%s] stopped with %d message(s) not acknowledged by Kafka; their "
                        "batches are not acknowledged to the source either", self.id, left)

    # -- writing -----------------------------------------------------------

    async def write(self, batch: list[Message]) -> list[Failure]:
        assert self._produce_lock is not None
        failures: list[Failure] = []
        items = self._items(batch, failures)
        if not items:
            return failures
        reports = _Reports(asyncio.get_running_loop())
        async with self._produce_lock:
            # FIFO lock: batches are produced in the order write() was called, so one key's
            # messages keep their order across batches.
            if self._stopped:
                raise NotConnected("target stopped", component_id=self.id)
            if self._fatal is not None or self._producer is None:
                await self._reopen()
            # produce() only enqueues: on the event loop it costs less than a thread hop. Only
            # a full local queue (a wait for delivery reports) moves the rest to a thread.
            producer = self._producer
            refused: list[tuple[int, str]] = []
            stopped = self._produce_all(producer, items, reports, 0, refused, wait=False)
            if stopped < len(items):
                await asyncio.to_thread(self._produce_all, producer, items, reports, stopped,
                                        refused, wait=True)
            reports.all_produced(len(items) - len(refused))
            self.produced += len(items) - len(refused)
        deadline = self.config.delivery_timeout + 10
        try:
            await asyncio.wait_for(asyncio.shield(reports.future), deadline)
        except TimeoutError:
            raise TransientError(f"no delivery report for {len(items) - reports.done} of "
                                 f"{len(items)} messages within {deadline:.0f}s",
                                 component_id=self.id) from None
        failures.extend(Failure(items[i][0], why, self.stage) for i, why in refused)
        errors = reports.failed(items)
        failures.extend(self._classify(items, errors))
        self.delivered += len(items) - len(refused) - len(errors)
        return failures

    def _items(self, batch: list[Message], failures: list[Failure]
               ) -> list[tuple[Message, str, str | None, bytes, list[Any]]]:
        """(message, topic, key, value, headers) per message; template failures to
        ``failures``. Topic, key and headers that depend on the MQTT topic alone are
        computed once per topic (a UNS repeats a bounded set of topics)."""
        items: list[tuple[Message, str, str | None, bytes, list[Any]]] = []
        append = items.append
        per_topic = self._per_topic
        cacheable = self._topic_only
        for msg in batch:
            props = msg.properties
            plain = msg.headers is None and (props is None or (
                "content_type" not in props and "user_property" not in props))
            known = per_topic.get(msg.topic) if plain else None
            if known is not None and known[0] == msg.qos and known[1] == msg.retain:
                value = msg.payload if msg.record is NOT_DECODED else orjson.dumps(msg.record)
                append((msg, known[2], known[3], value, known[4]))
                continue
            try:
                topic = self._topic(msg)
                key = self._key(msg) if self._key is not None else None
            except (KeyError, IndexError, AttributeError) as exc:
                failures.append(Failure(msg, f"topic or key template ({self.config.topic!r}, "
                                             f"{self.config.key!r}) needs {exc}", self.stage))
                continue
            if topic not in self._valid_topics:
                if not TOPIC_NAME.match(topic) or topic in (".", ".."):
                    failures.append(Failure(msg, f"Kafka topic {topic!r}: expected 1-249 "
                                                 "letters, digits, '.', '_' or '-'", self.stage))
                    continue
                if len(self._valid_topics) < _CACHE_SIZE:
                    self._valid_topics.add(topic)
            headers = mqtt_headers(msg, self._headers)
            if plain and cacheable and len(per_topic) < _CACHE_SIZE:
                per_topic[msg.topic] = (msg.qos, msg.retain, topic, key, headers)
            value = msg.payload if msg.record is NOT_DECODED else orjson.dumps(msg.record)
            append((msg, topic, key, value, headers))
        return items

    def _produce_all(self, producer: Any, items: list[tuple[Message, str, str | None, bytes,
                                                          list[Any]]],
                     reports: _Reports, start: int, refused: list[tuple[int, str]], *,
                     wait: bool) -> int:
        """Enqueue items from ``start``; add those refused at once to ``refused``.

        Returns where it stopped: ``len(items)``, or without ``wait`` the first
        item the full local queue did not take. With ``wait`` (a worker thread)
        it waits for delivery reports to make room: backpressure, never a drop.
        """
        from confluent_kafka import KafkaException

        produce = producer.produce
        report = reports.report
        stamps: dict[float, int] = {}  # a read's messages share one receive time
        for i in range(start, len(items)):
            msg, topic, key, value, headers = items[i]
            at = msg.received_at
            ts = stamps.get(at)
            if ts is None:
                ts = stamps[at] = int(at * 1000) if at > 0 else 0
            while True:
                try:
                    produce(topic, value, key, headers=headers, timestamp=ts, on_delivery=report)
                    break
                except BufferError:
                    if not wait:
                        return i
                    self._drained.clear()
                    self._drained.wait(0.1)
                except KafkaException as exc:
                    why = f"Kafka refused the message for topic {topic!r}: {exc.args[0].str()}"
                    refused.append((i, why))
                    break
        return len(items)

    def _classify(self, items: list[Any], errors: list[tuple[int, Any]]) -> list[Failure]:
        """Per-message failures from delivery errors; raise when a retry may fix them."""
        if not errors:
            return []
        from confluent_kafka import KafkaError

        permanent = {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE,
                     KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.INVALID_RECORD,
                     KafkaError.TOPIC_EXCEPTION, KafkaError._INVALID_ARG}
        failures: list[Failure] = []
        transient: list[Any] = []
        for index, err in errors:
            if err.fatal():
                self._fatal = err
                transient.append(err)
            elif index < 0:
                transient.append(err)
            elif err.code() in permanent and not err.retriable():
                topic = items[index][1]
                failures.append(Failure(items[index][0], f"Kafka refused the message for topic "
                                        f"{topic!r}: {err.str()}", self.stage))
            else:
                transient.append(err)
        if transient:
            first = transient[0]
            hint = ""
            if self._watch.auth is not None:
                hint = f" (last client error: {self._watch.auth.str()})"
            what = "fatal producer error, the producer is recreated: " if first.fatal() else ""
            raise TransientError(f"{len(transient)} of {len(items)} messages not delivered: "
                                 f"{what}{first.str()}{hint}", component_id=self.id)
        return failures

    async def _reopen(self) -> None:
        if self._fatal is not None:
            log.warning("[%s] recreating the producer after a fatal error: %s", self.id,
                        self._fatal.str())
        await self._close(5, purge=True)
        self._open()


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
