"""Self-metrics of a pipeline: the names, and the collector that reads them at scrape time.

The hot path keeps plain integer counters (``PathStats``, ``StageStats``,
``source.received``/``acked``) and touches nothing of Prometheus: no
per-message call, and per batch only a few integer additions. A scrape of
``/metrics`` builds every metric family from those counters
(:class:`PipelineCollector`), in a :class:`~prometheus_client.CollectorRegistry`
of the pipeline's own, so that several pipelines (tests) can live in one
process.

:data:`METRICS` is the list of every metric name, with its kind, its labels and
what it means; ``docs/operations.md`` shows the same list.

>>> [m.name for m in METRICS][:3]
['unsflow_source_received_total', 'unsflow_source_acked_total', 'unsflow_source_in_flight']
>>> t = LatencyBuckets()
>>> t.observe(0.003); t.observe(0.3)
>>> t.count, t.counts[:4]
(2, [0, 1, 0, 0])
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from unsflow.engine.pipeline import Pipeline

__all__ = [
    "METRICS",
    "MetricSpec",
    "LATENCY_BUCKETS",
    "LatencyBuckets",
    "PipelineCollector",
    "pipeline_registry",
]


@dataclass(frozen=True)
class MetricSpec:
    """One exported metric: name (counters end in ``_total``), kind, label names, meaning."""

    name: str
    kind: Literal["counter", "gauge", "histogram"]
    labels: tuple[str, ...]
    help: str


METRICS: list[MetricSpec] = [
    # Messages a source handed to the pipeline (MQTT: one per PUBLISH received).
    MetricSpec("unsflow_source_received_total", "counter", ("source",),
               "Messages the source handed to the pipeline."),
    # Messages acknowledged upstream (MQTT PUBACK/PUBREC, Kafka committed), after durable
    # acceptance by every target they were routed to.
    MetricSpec("unsflow_source_acked_total", "counter", ("source",),
               "Messages acknowledged upstream after every target accepted them."),
    # Received but not yet acknowledged; bounded by receive-maximum and max-in-flight.
    MetricSpec("unsflow_source_in_flight", "gauge", ("source",),
               "Messages received and not yet acknowledged."),
    # 1 when connected and subscribed (the readiness of /readyz), else 0.
    MetricSpec("unsflow_source_ready", "gauge", ("source",),
               "1 when the source is connected and subscribed."),
    # Messages routed to a target path (before its processors).
    MetricSpec("unsflow_target_received_total", "counter", ("target",),
               "Messages routed to the target (before its processors)."),
    # Messages (processor outputs) the target durably accepted.
    MetricSpec("unsflow_target_accepted_total", "counter", ("target",),
               "Messages the target durably accepted."),
    # Messages of this target's path written to the dead letter, by any of its stages.
    MetricSpec("unsflow_target_dead_lettered_total", "counter", ("target",),
               "Messages of the target's path sent to the dead letter."),
    # Messages routed to the target whose path has not finished with them yet.
    MetricSpec("unsflow_target_in_flight", "gauge", ("target",),
               "Messages routed to the target and not yet accepted, spooled or dead-lettered."),
    # Retried attempts (transient errors: target down, timeout) on the target's path.
    MetricSpec("unsflow_target_retries_total", "counter", ("target",),
               "Retried attempts on the target's path."),
    # Bytes of the target's spool files on disk (batches waiting for the target).
    MetricSpec("unsflow_spool_bytes", "gauge", ("target",),
               "Bytes in the target's spool (batches waiting while the target is down)."),
    # Spool files (one per spooled batch) waiting to be drained.
    MetricSpec("unsflow_spool_batches", "gauge", ("target",),
               "Batches in the target's spool."),
    # Messages written to the spool (since the process started).
    MetricSpec("unsflow_spool_messages_spooled_total", "counter", ("target",),
               "Messages written to the target's spool."),
    # Messages drained from the spool into the target (since the process started).
    MetricSpec("unsflow_spool_messages_drained_total", "counter", ("target",),
               "Messages the target took from its spool."),
    # 1 while the spool refuses batches (max-bytes reached or the disk full): backpressure.
    MetricSpec("unsflow_spool_full", "gauge", ("target",),
               "1 while the target's spool is full (acknowledgements held), else 0."),
    # Messages a processor was given.
    MetricSpec("unsflow_processor_received_total", "counter", ("processor",),
               "Messages given to the processor."),
    # Messages a processor emitted (a filter emits fewer, a splitter more).
    MetricSpec("unsflow_processor_emitted_total", "counter", ("processor",),
               "Messages the processor emitted."),
    # Messages a processor failed for good (sent to the dead letter).
    MetricSpec("unsflow_processor_dead_lettered_total", "counter", ("processor",),
               "Messages the processor sent to the dead letter."),
    # Inputs by notable outcome beyond outputs and failures, from Processor.outcomes():
    # window warming (held while a key fills) and late, filter filtered, threshold alerts
    # and within-limits, python filtered. Every input that gave no output is in here.
    MetricSpec("unsflow_processor_outcomes_total", "counter", ("processor", "outcome"),
               "Inputs by notable outcome (warming, late, filtered, alerts, ...)."),
    # Retried processor calls (remote inference down, timeouts).
    MetricSpec("unsflow_processor_retries_total", "counter", ("processor",),
               "Retried processor calls."),
    # Time for one batch to pass a stage, retries and their backoff included.
    MetricSpec("unsflow_batch_seconds", "histogram", ("stage",),
               "Seconds for a batch to pass a stage (processor:NAME, target:NAME), retries "
               "included."),
    # Lines appended to the dead-letter file.
    MetricSpec("unsflow_dead_letter_total", "counter", (),
               "Messages written to the dead-letter file."),
    # 1 while the dead-letter file cannot be written (full or read-only disk): the batches
    # that need it wait, retried, and acknowledgements are held.
    MetricSpec("unsflow_dead_letter_failing", "gauge", (),
               "1 while the dead-letter file cannot be written (acknowledgements held)."),
    # Messages that matched no subscription's target (should stay 0).
    MetricSpec("unsflow_unrouted_total", "counter", (),
               "Messages that matched no subscription."),
    # When the last batch with a message matching this subscription filter arrived.
    MetricSpec("unsflow_last_message_timestamp_seconds", "gauge", ("subscription",),
               "Unix time of the last message matching the subscription filter."),
    # Config reloads by result: applied, rejected (invalid; the running config stays),
    # failed (valid, but its components did not start; the previous config runs again).
    MetricSpec("unsflow_config_reloads_total", "counter", ("result",),
               "Config reloads by result: applied, rejected (invalid), failed (did not start)."),
    # 1 at start, +1 per applied reload: which config a pod runs, across a rollout.
    MetricSpec("unsflow_config_generation", "gauge", (),
               "Generation of the running config: 1 at start, +1 per applied reload."),
    # Always 1; the label is the SHA-256 of the running config's file (or inline text).
    MetricSpec("unsflow_config_info", "gauge", ("sha256",),
               "1, labelled with the SHA-256 of the running config's content."),
    # Sparkplug B (processor sparkplug): a seq that did not follow the edge node's last one.
    MetricSpec("unsflow_sparkplug_sequence_gaps_total", "counter",
               ("processor", "group", "edge_node"),
               "Sparkplug messages whose seq did not follow the edge node's previous one."),
    # Rebirth requests (NCMD Node Control/Rebirth) published to an edge node.
    MetricSpec("unsflow_sparkplug_rebirth_requests_total", "counter",
               ("processor", "group", "edge_node"),
               "Rebirth requests published to the edge node (its BIRTH was missed)."),
    # DATA messages dead-lettered because an alias was never announced by a BIRTH.
    MetricSpec("unsflow_sparkplug_unknown_alias_total", "counter", ("processor",),
               "Sparkplug DATA messages with an alias no BIRTH announced (dead-lettered)."),
    # 1 after a BIRTH, 0 after a DEATH (a node's DEATH takes its devices offline).
    MetricSpec("unsflow_sparkplug_online", "gauge",
               ("processor", "group", "edge_node", "device"),
               "1 when the Sparkplug edge node (device empty) or device is online, else 0."),
    # OPC UA source: connections lost and made again (server restart, network).
    MetricSpec("unsflow_opcua_reconnects_total", "counter", ("source",),
               "Times the OPC UA source connected again and re-created its subscription."),
    # Configured nodes the source could not monitor (unknown node id, unsupported type).
    MetricSpec("unsflow_opcua_bad_nodes", "gauge", ("source",),
               "Configured OPC UA nodes not monitored (unknown node, unsupported type)."),
    # 1 when every source is ready and no spool is full (what /readyz answers 200 for).
    MetricSpec("unsflow_ready", "gauge", (),
               "1 when every source is connected and subscribed and no spool is full."),
]

# Upper bounds (seconds) of the batch latency histogram; +Inf is implied.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class LatencyBuckets:
    """A histogram as plain counters: ``observe`` is one bisect and two additions."""

    __slots__ = ("counts", "count", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.count += 1
        self.sum += seconds

    def merge(self, other: "LatencyBuckets") -> None:
        for i, n in enumerate(other.counts):
            self.counts[i] += n
        self.count += other.count
        self.sum += other.sum

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus buckets: ``(le, cumulative count)``, ``+Inf`` last."""
        out: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip((*LATENCY_BUCKETS, float("inf")), self.counts, strict=True):
            total += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
        return out


class PipelineCollector:
    """Builds every metric of :data:`METRICS` from a pipeline's counters, at scrape time."""

    def __init__(self, pipeline: "Pipeline") -> None:
        self.pipeline = pipeline

    def describe(self) -> list[Any]:
        # Registering calls describe(); an empty list keeps it from calling collect() early.
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        from unsflow.engine.health import readiness

        p = self.pipeline
        families: dict[str, Any] = {}
        for spec in METRICS:
            name = spec.name.removesuffix("_total") if spec.kind == "counter" else spec.name
            cls = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily,
                   "histogram": HistogramMetricFamily}[spec.kind]
            families[spec.name] = cls(name, spec.help, labels=list(spec.labels))

        def add(name: str, labels: list[str], value: float | None) -> None:
            if value is not None:
                families[name].add_metric(labels, float(value))

        all_ready = True
        for source in p.sources:
            ready = bool(source.ready) and p.running
            all_ready = all_ready and ready
            add("unsflow_source_received_total", [source.id], getattr(source, "received", None))
            add("unsflow_source_acked_total", [source.id], getattr(source, "acked", None))
            add("unsflow_source_in_flight", [source.id], getattr(source, "in_flight", None))
            add("unsflow_source_ready", [source.id], 1 if ready else 0)

        latency: dict[str, LatencyBuckets] = {}
        processors: dict[str, list[int]] = {}
        for name, path in p.paths.items():
            s = path.stats
            add("unsflow_target_received_total", [name], s.received)
            add("unsflow_target_accepted_total", [name], s.accepted)
            add("unsflow_target_dead_lettered_total", [name], s.dead_lettered)
            add("unsflow_target_retries_total", [name], s.retries)
            add("unsflow_target_in_flight", [name], s.in_flight)
            spool = path.spool
            if spool is not None:
                add("unsflow_spool_bytes", [name], spool.bytes)
                add("unsflow_spool_batches", [name], len(spool.entries))
                add("unsflow_spool_messages_spooled_total", [name], spool.spooled_total)
                add("unsflow_spool_messages_drained_total", [name], spool.drained_total)
                add("unsflow_spool_full", [name], 1 if spool.full else 0)
                all_ready = all_ready and not spool.full
            # A processor shared by several targets is summed over their paths.
            for stage, st in s.stages.items():
                latency.setdefault(stage, LatencyBuckets()).merge(st.latency)
                if stage.startswith("processor:"):
                    acc = processors.setdefault(stage.removeprefix("processor:"), [0, 0, 0, 0])
                    acc[0] += st.received
                    acc[1] += st.emitted
                    acc[2] += st.dead_lettered
                    acc[3] += st.retries
        for proc_id, proc in p.processors.items():
            for outcome, count in proc.outcomes().items():
                add("unsflow_processor_outcomes_total", [proc_id, outcome], count)
        for proc, (received, emitted, dead, retries) in processors.items():
            add("unsflow_processor_received_total", [proc], received)
            add("unsflow_processor_emitted_total", [proc], emitted)
            add("unsflow_processor_dead_lettered_total", [proc], dead)
            add("unsflow_processor_retries_total", [proc], retries)
        for stage, buckets in latency.items():
            families["unsflow_batch_seconds"].add_metric(
                [stage], buckets.cumulative(), buckets.sum)

        # Components with metrics of their own (sparkplug, opcua) yield (name, labels, value).
        for component in [*p.sources, *p.processors.values()]:
            samples = getattr(component, "metric_samples", None)
            if samples is not None:
                for name, labels, value in samples():
                    add(name, labels, value)
        add("unsflow_dead_letter_total", [], p.dead_letter.count)
        add("unsflow_dead_letter_failing", [], 1 if p.dead_letter.failing else 0)
        add("unsflow_unrouted_total", [], p.unrouted)
        for flt, when in p.last_message_at.items():
            add("unsflow_last_message_timestamp_seconds", [flt], when)
        for result, count in p.reloads.items():
            add("unsflow_config_reloads_total", [result], count)
        add("unsflow_config_generation", [], p.generation)
        if p.config_hash:
            add("unsflow_config_info", [p.config_hash], 1)
        add("unsflow_ready", [], 1 if all_ready and p.sources and readiness(p)[0] else 0)
        yield from families.values()


def pipeline_registry(pipeline: "Pipeline") -> Any:
    """A new CollectorRegistry holding only ``pipeline``'s metrics."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(PipelineCollector(pipeline))  # type: ignore[arg-type]
    return registry
