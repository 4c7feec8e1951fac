"""sparkplug: Sparkplug B messages (Eclipse Sparkplug 3.0) to one record per metric.

Contract:

- Each NBIRTH, NDATA, DBIRTH, DDATA, NCMD and DCMD message gives one output
  message per metric, with the record::

      {"group": "plant1", "edge_node": "edge7", "device": "press-3" | None,
       "message_type": "DDATA", "seq": 12, "metric": "Inputs/Temperature",
       "alias": 4 | None, "datatype": "Float", "value": 21.5,
       "timestamp": 1700000000000, "is_historical": false, "is_transient": false,
       "quality": 192 | None, "properties": {...} | None}

  ``timestamp`` is the metric's (epoch ms), else the payload's. BIRTH records
  carry ``"online": true``. With ``value-columns: typed`` the value goes to
  ``value_int``, ``value_float``, ``value_bool``, ``value_string`` or
  ``value_json`` instead of ``value`` (see docs/components/sparkplug.md), so
  that a Parquet file holding many metrics keeps each type in its own column.
  With ``output: message`` a Sparkplug message gives one output message whose
  record is the list of its metric records (for a target with ``event-type:
  batch``: the same rows with far less work per metric).
- NDEATH and DDEATH give one record each with ``"online": false`` (NDEATH:
  ``bd_seq``), and mark the node (with its devices) or the device offline in
  the ``unsflow_sparkplug_online`` metric. An NDEATH whose bdSeq is not the
  one of the node's last NBIRTH (the will of an older session) changes
  nothing and says ``"stale": true``.
- Aliases and datatypes announced in BIRTH certificates are kept per edge
  node and device, across batches, until the next BIRTH replaces them (an
  NBIRTH forgets the node's devices: a new session births them again).
  Batches of one target path reach the processor in source order.
- A DATA message with an alias no BIRTH announced (the BIRTH was missed) is
  not dropped: the whole message goes to the dead letter with the unknown
  aliases named, and with ``rebirth`` set unsflow publishes an NCMD
  ``Node Control/Rebirth = true`` to that edge node (at most once per
  ``rebirth.min-interval`` per node). So does a message from an edge node whose
  NBIRTH was never seen.
- A ``seq`` that does not follow the node's previous one (mod 256) is a gap:
  counted in ``unsflow_sparkplug_sequence_gaps_total`` and logged; the
  message is decoded all the same.
- STATE messages of host applications (``spBv1.0/STATE/host``, JSON) become
  ``{"message_type": "STATE", "host_id": ..., "online": ..., "timestamp": ...}``.
- A topic outside the Sparkplug namespace or a payload that is not a
  Sparkplug B protobuf is a failure for the dead letter, with the reason.

Example::

    "processors": {"spb": {"type": "sparkplug", "value-columns": "typed",
                           "rebirth": {"host": "broker.plant.local"}}}
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, field_validator

from unsflow.codecs import decode_json, value_column
from unsflow.codecs.sparkplug import (
    DATATYPES,
    SparkplugTopic,
    decode_payload,
    metric_value,
    parse_topic,
    property_set,
    rebirth_payload,
)
from unsflow.config.models import Model, ProcessorConfig, SecretRef, TlsConfig
from unsflow.engine.topics import check_fields
from unsflow.errors import DecodeError, UnsflowError
from unsflow.message import Failure, Message
from unsflow.processors.base import Processor, ProcessResult

__all__ = ["RebirthConfig", "SparkplugProcessor", "SparkplugProcessorConfig"]

_DATATYPE_NAMES = [DATATYPES[i] for i in range(len(DATATYPES))]

log = logging.getLogger("unsflow.processors.sparkplug")

# Decoding costs ~10 us a metric: a batch of this many messages goes to a worker thread.
_THREAD_MIN = 50
_TOPIC_FIELDS = {"group", "edge_node", "device", "metric", "message_type"}
# Seconds between two sequence-gap warnings (a flapping link would flood the log).
_GAP_LOG_INTERVAL = 10.0


class RebirthConfig(Model):
    """Where unsflow publishes Rebirth requests (NCMD) to edge nodes whose BIRTH it missed."""

    host: str | None = Field(None, description="Broker of the edge nodes; default "
                             "EDGE_BROKER_HOST or localhost.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port.")
    credential: SecretRef | None = Field(None, description="Username/password reference.")
    tls: TlsConfig | None = Field(None, description="Use TLS with these settings.")
    client_id: str | None = Field(None, description="Client id (default: random).")
    min_interval: float = Field(
        10.0, ge=0, description="Seconds between two Rebirth requests to the same edge node "
        "(a burst of DATA with unknown aliases asks once).")


class SparkplugProcessorConfig(ProcessorConfig):
    """Decode Sparkplug B payloads into one record per metric."""

    type: Literal["sparkplug"] = Field(description="Processor type: sparkplug (Sparkplug B).")
    value_columns: Literal["single", "typed"] = Field(
        "single", description="single: the value in `value` (plain JSON for the UNS); typed: "
        "in value_int, value_float, value_bool, value_string or value_json by type (a "
        "Parquet lake with many metrics per file).")
    topic: str | None = Field(
        None, description="Topic of each output message, a template of {group}, {edge_node}, "
        "{device}, {metric}, {message_type} (an empty {device} level is dropped), e.g. "
        "acme/{group}/{edge_node}/{device}/{metric}. Default: the Sparkplug topic as received.")
    output: Literal["metric", "message"] = Field(
        "metric", description="metric: one output message per metric (UNS bridging, "
        "per-metric topics); message: one output message per Sparkplug message whose record "
        "is the list of its metric records (a lake target with event-type batch; much "
        "less per-message work).")
    rebirth: RebirthConfig | None = Field(
        None, description="Publish NCMD Node Control/Rebirth to an edge node whose aliases "
        "are unknown (its BIRTH was missed); unset: no requests, the messages still go to "
        "the dead letter.")

    @field_validator("topic")
    @classmethod
    def _check_topic(cls, value: str | None) -> str | None:
        if value is None:
            return None
        check_fields(value, _TOPIC_FIELDS)
        return value


@dataclass
class _Births:
    """What a BIRTH certificate announced: alias -> name, name -> datatype."""

    names: dict[int, str] = field(default_factory=dict)
    types: dict[str, int] = field(default_factory=dict)
    online: bool = True

    def learn(self, metrics: Any) -> None:
        for m in metrics:
            if m.HasField("name"):
                self.types[m.name] = m.datatype
                if m.HasField("alias"):
                    self.names[m.alias] = m.name


@dataclass
class _Node(_Births):
    born: bool = False
    bd_seq: int | None = None
    seq: int | None = None
    devices: dict[str, _Births] = field(default_factory=dict)


@dataclass
class SparkplugStats:
    """Counters behind the unsflow_sparkplug_* metrics, keyed by (group, edge node)."""

    gaps: dict[tuple[str, str], int] = field(default_factory=dict)
    rebirths: dict[tuple[str, str], int] = field(default_factory=dict)
    rebirth_errors: int = 0
    unknown_alias: int = 0
    no_metrics: int = 0


class SparkplugProcessor(Processor[SparkplugProcessorConfig]):
    """Decodes Sparkplug B, keeping each edge node's BIRTH state across batches."""

    config_class = SparkplugProcessorConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._nodes: dict[tuple[str, str], _Node] = {}
        self._lock = threading.Lock()  # a processor shared by paths decodes one batch at a time
        self.stats = SparkplugStats()
        self._rebirth_at: dict[tuple[str, str], float] = {}
        self._rebirth_queue: asyncio.Queue[SparkplugTopic] | None = None
        self._rebirth_task: asyncio.Task[None] | None = None
        self._publisher: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_gap_log = 0.0

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        from unsflow.codecs.sparkplug import _build

        _build()  # a missing protobuf fails here, naming the extra, not on the first batch
        self._loop = asyncio.get_running_loop()
        rb = self.config.rebirth
        if rb is None:
            return
        # The mqtt target's publisher, not a client of our own: one MQTT publisher.
        from unsflow.targets.mqtt import MqttTarget, MqttTargetConfig

        tcfg = MqttTargetConfig(type="mqtt", mqtt_broker_host=rb.host, mqtt_broker_port=rb.port,
                                mqtt_credential=rb.credential, tls=rb.tls,
                                client_id=rb.client_id, topic="{topic}", qos=0,
                                publish_timeout=10.0)
        self._publisher = MqttTarget(f"{self.id}-rebirth", tcfg, self.context)
        await self._publisher.start()
        self._rebirth_queue = asyncio.Queue(maxsize=1000)
        self._rebirth_task = asyncio.create_task(self._send_rebirths(),
                                                 name=f"sparkplug:{self.id}:rebirth")

    async def stop(self) -> None:
        task, self._rebirth_task = self._rebirth_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._publisher is not None:
            await self._publisher.stop()
            self._publisher = None

    # -- decoding ----------------------------------------------------------------

    async def process(self, batch: list[Message]) -> ProcessResult:
        if len(batch) >= _THREAD_MIN:
            return await asyncio.to_thread(self._process_all, batch)
        return self._process_all(batch)

    def _process_all(self, batch: list[Message]) -> ProcessResult:
        outputs: list[Message] = []
        failures: list[Failure] = []
        per_message = self.config.output == "message"
        template = self.config.topic
        with self._lock:
            for msg in batch:
                try:
                    topic = parse_topic(msg.topic)
                    if topic.message_type == "STATE":
                        outputs.append(msg.derive(record=self._state(topic, msg.payload)))
                        continue
                    records = self._decode(topic, msg.payload)
                    if not records:
                        self.stats.no_metrics += 1  # a BIRTH or DATA without metrics
                        continue
                    if per_message:
                        outputs.append(msg.derive(record=records))
                    elif template is None:
                        outputs.extend(msg.derive(record=r) for r in records)
                    else:
                        outputs.extend(msg.derive(record=r, topic=self._topic(r, msg.topic))
                                       for r in records)
                except DecodeError as exc:
                    failures.append(Failure(msg, str(exc), self.stage))
        return outputs, failures

    def _decode(self, topic: SparkplugTopic, payload_bytes: bytes) -> list[dict[str, Any]]:
        payload = decode_payload(payload_bytes)
        key = (topic.group, topic.edge_node)
        kind = topic.message_type
        seq = payload.seq if payload.HasField("seq") else None
        node = self._nodes.get(key)
        if kind == "NBIRTH":
            node = self._nodes[key] = _Node(born=True, seq=seq)
            node.learn(payload.metrics)
            for m in payload.metrics:
                if m.HasField("name") and m.name == "bdSeq":
                    node.bd_seq = int(metric_value(m, m.datatype or 8))
            return self._records(topic, payload, seq, node, online=True)
        if node is None or not node.born:
            if node is None:
                node = self._nodes[key] = _Node()
            if kind not in ("NDEATH", "NCMD", "DCMD"):
                self._ask_rebirth(topic, "no NBIRTH seen from this edge node")
        if kind == "NDEATH":
            return [self._death(topic, payload, node)]
        births: _Births = node
        if kind in ("NCMD", "DCMD"):
            if topic.device is not None:
                births = node.devices.get(topic.device, _Births())
            return self._records(topic, payload, seq, births, lenient=True)
        self._check_seq(topic, node, seq)
        if kind == "DBIRTH":
            assert topic.device is not None
            device = node.devices[topic.device] = _Births()
            device.learn(payload.metrics)
            return self._records(topic, payload, seq, device, online=True)
        if topic.device is not None:
            births = node.devices.get(topic.device) or _Births(online=False)
        if kind == "DDEATH":
            births.online = False
            return [self._base(topic, seq, payload.timestamp) | {"online": False}]
        return self._records(topic, payload, seq, births)

    def _records(self, topic: SparkplugTopic, payload: Any, seq: int | None, births: _Births,
                 *, online: bool | None = None, lenient: bool = False) -> list[dict[str, Any]]:
        """One record per metric; aliases resolved first, so a message fails whole."""
        resolved: list[tuple[Any, str | None]] = []
        unknown: list[int] = []
        for m in payload.metrics:
            if m.HasField("name"):
                resolved.append((m, m.name))
            elif m.HasField("alias") and m.alias in births.names:
                resolved.append((m, births.names[m.alias]))
            elif lenient:
                resolved.append((m, None))
            else:
                unknown.append(m.alias)
        if unknown:
            self.stats.unknown_alias += 1
            where = f"device {topic.device!r} of " if topic.device else ""
            asked = self._ask_rebirth(topic, f"unknown alias(es) {unknown[:10]}")
            raise DecodeError(
                f"{topic.message_type} from {where}edge node {topic.group}/{topic.edge_node}: "
                f"unknown metric alias(es) {', '.join(map(str, unknown[:10]))}"
                f"{' ...' if len(unknown) > 10 else ''} (no BIRTH announced them; "
                f"{'Rebirth requested' if asked else 'no Rebirth requested'})")
        base = self._base(topic, seq, payload.timestamp if payload.HasField("timestamp") else None)
        return self._emit(base, resolved, births, online)

    def _emit(self, base: dict[str, Any], resolved: list[tuple[Any, str | None]],
              births: _Births, online: bool | None) -> list[dict[str, Any]]:
        typed = self.config.value_columns == "typed"
        types = births.types
        names = _DATATYPE_NAMES
        out = []
        for m, name in resolved:
            has = m.HasField
            datatype = m.datatype if has("datatype") else types.get(name or "", 0)
            props = property_set(m.properties) if has("properties") else None
            value = metric_value(m, datatype)
            record = {**base, "metric": name, "alias": m.alias if has("alias") else None,
                      "datatype": names[datatype] if datatype < len(names) else str(datatype),
                      "is_historical": m.is_historical, "is_transient": m.is_transient,
                      "quality": props.get("Quality") if props else None, "properties": props}
            if typed:
                if value is not None:
                    column, stored = value_column(value)
                    record[column] = stored
            else:
                record["value"] = value
            if has("timestamp"):
                record["timestamp"] = m.timestamp
            if online is not None:
                record["online"] = online
            out.append(record)
        return out

    @staticmethod
    def _base(topic: SparkplugTopic, seq: int | None, timestamp: int | None) -> dict[str, Any]:
        return {"group": topic.group, "edge_node": topic.edge_node, "device": topic.device,
                "message_type": topic.message_type, "seq": seq, "timestamp": timestamp}

    def _death(self, topic: SparkplugTopic, payload: Any, node: _Node) -> dict[str, Any]:
        bd_seq = None
        for m in payload.metrics:
            if m.HasField("name") and m.name == "bdSeq":
                bd_seq = metric_value(m, m.datatype or 8)
        record = self._base(topic, None, payload.timestamp if payload.HasField("timestamp")
                            else None) | {"online": False, "bd_seq": bd_seq}
        if bd_seq is not None and node.bd_seq is not None and bd_seq != node.bd_seq:
            # The will of an earlier session, delivered after the new NBIRTH.
            log.info("[%s] stale NDEATH of %s/%s (bdSeq %s, current %s) ignored", self.id,
                     topic.group, topic.edge_node, bd_seq, node.bd_seq)
            record["stale"] = True
            return record
        node.online = False
        for device in node.devices.values():
            device.online = False
        return record

    def _state(self, topic: SparkplugTopic, payload: bytes) -> dict[str, Any]:
        body = decode_json(payload)
        if not isinstance(body, dict):
            raise DecodeError(f"STATE payload of host {topic.edge_node!r}: expected a JSON "
                              f"object with online and timestamp")
        return {"message_type": "STATE", "host_id": topic.edge_node,
                "online": body.get("online"), "timestamp": body.get("timestamp")}

    def _topic(self, record: dict[str, Any], received: str) -> str | None:
        template = self.config.topic
        if template is None or record.get("metric") is None:
            return None if template is None else received
        filled = template.format(
            group=record["group"], edge_node=record["edge_node"], device=record["device"] or "",
            metric=record["metric"], message_type=record["message_type"])
        return "/".join(level for level in filled.split("/") if level) or received

    def _check_seq(self, topic: SparkplugTopic, node: _Node, seq: int | None) -> None:
        if seq is None:
            return
        last, node.seq = node.seq, seq
        if last is None:
            return
        expected = (last + 1) % 256
        if seq == expected:
            return
        key = (topic.group, topic.edge_node)
        self.stats.gaps[key] = self.stats.gaps.get(key, 0) + 1
        now = time.monotonic()
        if now - self._last_gap_log >= _GAP_LOG_INTERVAL:
            self._last_gap_log = now
            log.warning("[%s] sequence gap from %s/%s: expected seq %d, got %d (%d message(s) "
                        "missing or out of order)", self.id, topic.group, topic.edge_node,
                        expected, seq, (seq - expected) % 256)

    # -- rebirth requests ---------------------------------------------------------

    def _ask_rebirth(self, topic: SparkplugTopic, why: str) -> bool:
        """Queue a Rebirth request for ``topic``'s edge node (rate-limited); True if asked
        now or lately."""
        queue, loop = self._rebirth_queue, self._loop
        rb = self.config.rebirth
        if queue is None or loop is None or rb is None:
            return False
        key = (topic.group, topic.edge_node)
        now = time.monotonic()
        last = self._rebirth_at.get(key)
        if last is not None and now - last < rb.min_interval:
            return True
        self._rebirth_at[key] = now
        log.warning("[%s] asking edge node %s/%s to rebirth: %s", self.id, topic.group,
                    topic.edge_node, why)
        # process() may run on a worker thread; the queue belongs to the loop.
        loop.call_soon_threadsafe(_put, queue, topic)
        return True

    async def _send_rebirths(self) -> None:
        assert self._rebirth_queue is not None
        while True:
            topic = await self._rebirth_queue.get()
            cmd = topic.command_topic()
            msg = Message(cmd, rebirth_payload(int(time.time() * 1000)))
            key = (topic.group, topic.edge_node)
            try:
                failures = await self._publisher.write([msg])
                if failures:
                    raise UnsflowError(failures[0].error)
            except (UnsflowError, OSError) as exc:
                self.stats.rebirth_errors += 1
                self._rebirth_at.pop(key, None)  # the next unknown alias asks again
                log.error("[%s] Rebirth request to %s failed: %s", self.id, cmd, exc)
                continue
            self.stats.rebirths[key] = self.stats.rebirths.get(key, 0) + 1

    # -- observability --------------------------------------------------------------

    def online(self) -> Iterator[tuple[str, str, str, bool]]:
        """(group, edge node, device or "", online) of every node and device seen."""
        with self._lock:
            for (group, node_id), node in list(self._nodes.items()):
                yield group, node_id, "", node.born and node.online
                for dev_id, dev in node.devices.items():
                    yield group, node_id, dev_id, node.online and dev.online

    def metric_samples(self) -> Iterator[tuple[str, list[str], float]]:
        """The unsflow_sparkplug_* samples (engine/metrics.py reads them at scrape time)."""
        for (group, node), count in list(self.stats.gaps.items()):
            yield "unsflow_sparkplug_sequence_gaps_total", [self.id, group, node], count
        for (group, node), count in list(self.stats.rebirths.items()):
            yield "unsflow_sparkplug_rebirth_requests_total", [self.id, group, node], count
        yield "unsflow_sparkplug_unknown_alias_total", [self.id], self.stats.unknown_alias
        for group, node, device, up in self.online():
            yield "unsflow_sparkplug_online", [self.id, group, node, device], 1 if up else 0

    def outcomes(self) -> dict[str, int]:
        return {"no-metrics": self.stats.no_metrics, "sequence-gap": sum(self.stats.gaps.values())}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "rebirth": self.config.rebirth is not None}


def _put(queue: asyncio.Queue[SparkplugTopic], topic: SparkplugTopic) -> None:
    try:
        queue.put_nowait(topic)
    except asyncio.QueueFull:  # a thousand nodes waiting: the next unknown alias asks again
        log.error("Rebirth request queue full; request for %s/%s not sent",
                  topic.group, topic.edge_node)
