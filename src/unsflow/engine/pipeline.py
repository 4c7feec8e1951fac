"""Pipeline: builds the components of a config and runs them.

Flow: the source hands a batch; the router splits it by target (a message
matching several subscriptions reaches each distinct target once); each
target path runs concurrently; when all paths of the batch are done the
source acknowledges the batch. At most ``max-in-flight`` messages per source are in
flight; beyond that the pipeline stops reading (backpressure).

Stop: first each source gives back its share of a group others go on
consuming (:meth:`Source.leave <unsflow.sources.base.Source.leave>`: MQTT
``$share`` filters are unsubscribed while reading goes on, up to 40% of
``shutdown_timeout``); then the source stops being read, in-flight batches
get the rest of ``shutdown_timeout`` to finish, targets flush and close, and
the source disconnects without unsubscribing its other filters. Whatever
was not acknowledged is redelivered by the broker to the next run.

Reload: :meth:`Pipeline.reload` swaps to a new config while running
(:mod:`unsflow.engine.swap`): reading stops, in-flight batches finish and are
acknowledged, changed components are replaced, reading goes on.

Observability: ``http.port`` serves /healthz, /readyz and /metrics
(:mod:`unsflow.engine.health`) from before the sources connect until after
they disconnect; the counters behind /metrics are kept per batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from unsflow import registry
from unsflow.components import Context
from unsflow.config.models import PipelineConfig
from unsflow.engine.deadletter import DeadLetter
from unsflow.engine.health import HealthServer
from unsflow.engine.path import TargetPath
from unsflow.engine.spool import Spool
from unsflow.engine.topics import TopicMatcher
from unsflow.errors import DeliveryFailed, NotRunning, UnsflowError
from unsflow.message import Message
from unsflow.processors.base import Processor
from unsflow.sources.base import Source

if TYPE_CHECKING:
    from unsflow.engine.swap import ReloadPlan

__all__ = ["UNS_SOURCE_ID", "UNS_SOURCE_TYPE", "Input", "Pipeline", "build_spool",
           "build_uns_source", "uns_source_config"]

log = logging.getLogger("unsflow.engine")

# The registered source type that serves the top-level UNS keys, and its component id.
UNS_SOURCE_TYPE = "mqtt"
UNS_SOURCE_ID = "uns"


def uns_source_config(config: PipelineConfig) -> Any:
    """The UNS source's own config, assembled from the top-level keys of ``config``."""
    cls = registry.load("sources", UNS_SOURCE_TYPE)
    return cls.config_class.from_pipeline(config)


def build_uns_source(config: PipelineConfig, context: Context) -> Source:
    """The UNS source of the top-level keys (``mqtt-broker``, ``subscriptions``, ...),
    built through the registry like every component."""
    cls = registry.load("sources", UNS_SOURCE_TYPE)
    return cls(UNS_SOURCE_ID, cls.config_class.from_pipeline(config),  # type: ignore[no-any-return]
               context)


@dataclass(frozen=True, eq=False)
class Input:
    """A running source and how its batches are routed: ``"subscriptions"`` (the UNS
    source: by the topic filters of ``subscriptions``) or ``"fixed"`` (a source of the
    ``sources`` section: every batch to its ``targets``)."""

    source: Source
    routing: Literal["subscriptions", "fixed"]
    targets: tuple[str, ...] = ()


def build_spool(config: PipelineConfig, target: str) -> Spool | None:
    """The spool of ``target``, or None when the target opts out (``spool: false``)."""
    if not config.targets[target].spool:
        return None
    cfg = config.spool
    return Spool(cfg.path, target, max_bytes=cfg.max_bytes, max_age=cfg.max_age)


class Pipeline:
    """A running pipeline for one config."""

    def __init__(self, config: PipelineConfig, context: Context | None = None,
                 source: Source | None = None) -> None:
        self.config = config
        self.context = context or Context()
        self.inputs: list[Input] = []
        if source is not None or config.subscriptions:
            self.add_uns_source(source or build_uns_source(config, self.context))
        for name, scfg in config.sources.items():
            self.add_source(self.build_named_source(name, scfg), scfg.target_names)
        self.dead_letter = DeadLetter(config.dead_letter.path)
        self.processors: dict[str, Processor] = {}
        for name, pcfg in config.processors.items():
            self.processors[name] = self.build_processor(name, pcfg)
        self.paths: dict[str, TargetPath] = {}
        for name in config.targets:
            self.paths[name] = self.build_path(name, config)
        if config.dead_letter.target is not None:
            self.dead_letter.target = self.paths[config.dead_letter.target].target
        self.matcher = TopicMatcher(
            {flt: sub.target_names for flt, sub in config.subscriptions.items()})
        self.max_in_flight = config.max_in_flight
        self._tasks: set[asyncio.Task[None]] = set()
        self._batch_no = 0
        self.unrouted = 0
        self.started_at = 0.0
        # Subscription filter -> time of the last batch with a message matching it.
        self.last_message_at: dict[str, float] = {}
        self.running = False  # started and not stopping: part of /readyz
        self.http: HealthServer | None = None
        self._readers: dict[Source, asyncio.Task[None]] = {}
        # What start() has started so far (closed again when a stop interrupts it).
        self._started: list[Processor | TargetPath | Source] = []
        self._fatal: asyncio.Future[None] | None = None
        # Config reloads (engine/swap.py, engine/reload.py): what /metrics shows.
        self.generation = 1
        self.config_hash: str | None = None
        self.reloads: dict[str, int] = {"applied": 0, "rejected": 0, "failed": 0}
        self._reload_lock = asyncio.Lock()
        self._reload_task: asyncio.Task[Any] | None = None

    def build_processor(self, name: str, pcfg: Any) -> Processor:
        cls = registry.load("processors", pcfg.type)
        return cls(name, pcfg, self.context)  # type: ignore[no-any-return]

    def build_path(self, name: str, config: PipelineConfig) -> TargetPath:
        """The path of target ``name`` of ``config``: its processors (from
        ``self.processors``), the target and its spool."""
        tcfg = config.targets[name]
        cls = registry.load("targets", tcfg.type)
        chain = [self.processors[p] for p in tcfg.processors]
        return TargetPath(cls(name, tcfg, self.context), chain, self.dead_letter,
                          spool=build_spool(config, name), on_fatal=self.fail_delivery)

    def build_named_source(self, name: str, scfg: Any) -> Source:
        """A source of the ``sources`` section."""
        cls = registry.load("sources", scfg.type)
        return cls(name, scfg, self.context)  # type: ignore[no-any-return]

    def build_uns_source(self, config: PipelineConfig) -> Source:
        """The UNS source of ``config``'s top-level keys."""
        return build_uns_source(config, self.context)

    # -- the sources (a reload changes them while readers are stopped) -----------------

    @property
    def sources(self) -> list[Source]:
        """Every source, the UNS one first."""
        return [i.source for i in self.inputs]

    @property
    def uns_source(self) -> Source | None:
        """The source routed by ``subscriptions`` (the UNS broker's), if any."""
        return next((i.source for i in self.inputs if i.routing == "subscriptions"), None)

    def add_uns_source(self, source: Source) -> None:
        """Make ``source`` the UNS source (routed by the subscriptions' topic filters)."""
        self.inputs.insert(0, Input(source, "subscriptions"))

    def add_source(self, source: Source, targets: Sequence[str]) -> None:
        """Add ``source``; every batch of it goes to ``targets``."""
        self.inputs.append(Input(source, "fixed", tuple(targets)))

    def remove_source(self, source: Source) -> None:
        """Forget ``source`` (stopped by the caller)."""
        self.inputs = [i for i in self.inputs if i.source is not source]

    async def start(self) -> None:
        """Start processors and targets, then connect the sources.

        Components are recorded as they start, so that a start cancelled by a
        stop (a broker that does not answer) closes what already runs.
        """
        self._started = []
        for proc in self.processors.values():
            await proc.start()
            self._started.append(proc)
        for path in self.paths.values():
            await path.target.start()
            self._started.append(path)
            await path.start_spool()
        for source in self.sources:
            self._started.append(source)  # before: a connect loop owns a client to close
            log.info("[%s] connecting to %s", source.id, source.describe_endpoint())
            await source.start()
        self.started_at = time.time()
        self.running = True

    @property
    def source(self) -> Source:
        """The first source (the UNS broker's when there are subscriptions)."""
        return self.inputs[0].source

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then drain and close (see module docstring).

        ``stop`` is heard in every phase: while the sources still connect (a
        broker that is down, a Kafka cluster that does not answer, a secret
        store that is slow), a stop cancels the start, closes what already
        started and returns: nothing was in flight.
        """
        await self._start_http()
        stopper = asyncio.create_task(stop.wait(), name="pipeline-stop-wait")
        starting = asyncio.create_task(self.start(), name="pipeline-start")
        try:
            await asyncio.wait({stopper, starting}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # run() itself cancelled while starting: close, then go
            starting.cancel()
            stopper.cancel()
            await asyncio.gather(starting, stopper, return_exceptions=True)
            await self._close_started()
            await self._stop_http()
            raise
        if not starting.done():
            log.info("stopping while starting: closing what has started")
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            await self._close_started()
            await self._stop_http()
            log.info("stopped before the pipeline ran: nothing was in flight")
            return
        if starting.exception() is not None:
            stopper.cancel()
            await asyncio.gather(stopper, return_exceptions=True)
            await self._close_started()
            await self._stop_http()
            starting.result()  # raises the start's error
        self._fatal = asyncio.get_running_loop().create_future()
        self.start_readers()
        try:
            waits: set[asyncio.Future[Any]] = {stopper, self._fatal}
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if self._fatal.done():
                self._fatal.result()  # a failed reader (or a failed reload rollback) is fatal
        finally:
            self.running = False  # no reload may begin now
            stopper.cancel()
            reload_task = self._reload_task
            if reload_task is not None and not reload_task.done():
                # A reload still connecting or draining: stopping wins.
                reload_task.cancel()
                await asyncio.gather(reload_task, return_exceptions=True)
            deadline = self.config.shutdown_timeout
            left = 0.0
            if not self.stopping_on_error:
                left = await self._leave_groups(deadline * 0.4)
            await self.stop_readers()
            await asyncio.gather(stopper, return_exceptions=True)
            await self.shutdown(deadline - left)

    async def _leave_groups(self, timeout: float) -> float:
        """Let each source give back its share of a consumer group while its reader
        still runs (see ``Source.leave``); returns the seconds it took."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        for source in self.sources:
            if source not in self._readers:
                continue
            try:
                await source.leave(max(0.0, timeout - (loop.time() - began)))
            except Exception:  # stopping: report and go on stopping
                log.exception("[%s] error while leaving its group", source.id)
        return loop.time() - began

    async def _close_started(self) -> None:
        """Close, newest first, the components a start that did not finish had started."""
        started, self._started = self._started, []
        for component in reversed(started):
            try:
                if isinstance(component, TargetPath):
                    await component.stop_spool(1.0)
                    await component.target.stop()
                else:
                    await component.stop()
            except Exception:  # closing after a failed start: report, close the others
                log.exception("[%s] error while closing after an interrupted start",
                              component.id)

    def start_readers(self) -> None:
        """One reader task per source (after start, and after a reload)."""
        for entry in self.inputs:
            src = entry.source
            task = asyncio.create_task(self._read_loop(entry), name=f"reader-{src.id}")
            task.add_done_callback(self._reader_done)
            self._readers[src] = task

    async def stop_readers(self) -> None:
        """Stop taking batches from the sources; a reader waiting in read() loses nothing."""
        readers, self._readers = list(self._readers.values()), {}
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)

    def _reader_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._fatal is None or self._fatal.done():
            return
        exc = task.exception()
        self._fatal.set_exception(exc or UnsflowError(
            f"{task.get_name()} ended: a source's read() returned for good"))

    def fail(self, exc: BaseException) -> None:
        """Stop the pipeline with ``exc`` (``run`` raises it)."""
        if self._fatal is not None and not self._fatal.done():
            self._fatal.set_exception(exc)

    @property
    def reloading(self) -> bool:
        """A reload is being applied (reading stopped; draining, or swapping components)."""
        return self._reload_task is not None

    @property
    def stopping_on_error(self) -> bool:
        """A reader or a reload rollback failed: ``run`` is about to raise."""
        return self._fatal is not None and self._fatal.done()

    async def reload(self, config: PipelineConfig, config_hash: str | None = None,
                     ) -> ReloadPlan:
        """Swap to ``config`` without a restart (see :func:`unsflow.engine.swap.apply`).

        Returns the :class:`~unsflow.engine.swap.ReloadPlan` applied; raises
        :class:`~unsflow.errors.ReloadFailed` when the new components
        could not start (the old config is running again), and
        :class:`~unsflow.errors.NotRunning` while the pipeline starts or stops. Call it
        from a task of its own (the config watcher's): a stop cancels that task.
        """
        from unsflow.engine.swap import apply

        async with self._reload_lock:
            if not self.running:
                raise NotRunning("the pipeline is not running (starting or stopping)")
            self._reload_task = asyncio.current_task()
            try:
                return await apply(self, config, config_hash)
            finally:
                self._reload_task = None

    async def _read_loop(self, entry: Input) -> None:
        source, by_topic, fixed = entry.source, entry.routing == "subscriptions", entry.targets
        # A budget of messages, not batches: batches are as small as a socket read.
        budget = _Budget(self.max_in_flight)
        while True:
            await budget.wait_below_limit()
            messages, token = await source.read()
            budget.take(len(messages))
            self._batch_no += 1
            if by_topic:
                groups = self.route(messages)
                self._note_subscriptions(messages)
            else:
                groups = {t: messages for t in fixed}
            # Each path's place for this batch, taken now, in source order: every stage
            # of a path sees its batches in this order (engine/order.py).
            tickets = {name: self.paths[name].ticket() for name in groups}
            task = asyncio.create_task(self._deliver(source, groups, tickets, token),
                                       name=f"deliver-{source.id}-{self._batch_no}")
            self._tasks.add(task)
            task.add_done_callback(lambda t, n=len(messages): self._task_done(t, budget, n))

    def _task_done(self, task: asyncio.Task[None], budget: "_Budget", count: int) -> None:
        self._tasks.discard(task)
        budget.give(count)
        if task.cancelled():
            return  # a stop or a reload's drain timeout: the source delivers it again
        exc = task.exception()
        if exc is not None:
            # Neither delivered nor dead-lettered: its ack can never be sent, and the source
            # acknowledges in order, so nothing after it would be either. Stop, loudly.
            self.fail_delivery(f"delivery task {task.get_name()} failed: "
                               f"{type(exc).__name__}: {exc}", exc)

    def fail_delivery(self, what: str, cause: BaseException) -> None:
        """Stop the pipeline with :class:`~unsflow.errors.DeliveryFailed` (``run`` raises it):
        a batch that can be neither delivered nor dead-lettered must not stall its source."""
        log.critical("%s; stopping: the batch can be neither delivered nor dead-lettered, so "
                     "it and every later batch of its source would never be acknowledged "
                     "(the source delivers them again after a restart)", what)
        error = DeliveryFailed(f"{what}; stopping (unacknowledged messages are delivered "
                               "again after a restart)")
        error.__cause__ = cause
        self.fail(error)

    def route(self, messages: list[Message]) -> dict[str, list[Message]]:
        """Split a batch by topic filters; each distinct target gets a message once."""
        groups: dict[str, list[Message]] = {}
        matcher = self.matcher
        for msg in messages:
            targets = matcher(msg.topic)
            if not targets:
                self.unrouted += 1
            for name in targets:
                group = groups.get(name)
                if group is None:
                    groups[name] = [msg]
                else:
                    group.append(msg)
        return groups

    def _note_subscriptions(self, messages: list[Message]) -> None:
        # Per distinct topic of the batch, not per message (a set built in C).
        now = time.time()
        last = self.last_message_at
        filters = self.matcher.filters
        for topic in {m.topic for m in messages}:
            for flt in filters(topic):
                last[flt] = now

    async def _start_http(self) -> None:
        http = self.config.http
        if not http.port:
            return
        server = HealthServer(self, http.host, http.port)
        try:
            await server.start()
        except OSError as exc:
            # Observability must not stop the data: run on, say so loudly.
            log.error("[http] cannot listen on %s:%d (%s): no /healthz, /readyz or /metrics; "
                      "set http.port to a free port (0 turns it off)", http.host, http.port, exc)
            return
        self.http = server

    async def _stop_http(self) -> None:
        if self.http is not None:
            await self.http.stop()
            self.http = None

    async def _deliver(self, source: Source, groups: dict[str, list[Message]],
                       tickets: dict[str, int], token: Any) -> None:
        if len(groups) == 1:
            ((name, batch),) = groups.items()
            await self.paths[name].handle(batch, tickets[name])
        elif groups:
            await asyncio.gather(*(self.paths[n].handle(b, tickets[n])
                                   for n, b in groups.items()))
        source.ack(token)

    async def shutdown(self, deadline: float | None = None) -> None:
        """Drain in-flight batches within ``deadline`` seconds (default
        ``shutdown_timeout``), flush targets, disconnect."""
        self.running = False
        deadline = self.config.shutdown_timeout if deadline is None else deadline
        pending: set[asyncio.Task[None]] = set(self._tasks)
        if pending:
            log.info("stopping: waiting up to %.0fs for %d in-flight batch(es)",
                     deadline, len(pending))
            # Targets that batch by age complete their writers on their own timer.
            _, pending = await asyncio.wait(pending, timeout=deadline * 0.8)
        # Spool drainers first: a target's stop() ends with the write it flushes.
        await asyncio.gather(*(p.stop_spool(deadline * 0.1) for p in self.paths.values()))
        # stop() flushes what targets still buffer, completing writers that wait on it.
        stops = asyncio.gather(*(self.stop_target(p) for p in self.paths.values()))
        if pending:
            _, pending = await asyncio.wait(pending, timeout=deadline * 0.2)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("stopping: %d batch(es) not finished in time; the broker will "
                            "redeliver them", len(pending))
                await asyncio.gather(*pending, return_exceptions=True)
        await stops
        for proc in self.processors.values():
            try:
                await proc.stop()
            except Exception:  # closing: report and go on closing the others
                log.exception("[%s] error while stopping", proc.id)
        for source in self.sources:
            await source.stop()
        await self._stop_http()
        log.info("stopped: %s", self.summary())

    async def stop_target(self, path: TargetPath) -> None:
        """Stop ``path``'s target (it flushes); an error is logged, not raised (closing)."""
        try:
            await path.target.stop()
        except Exception:  # closing: report and go on closing the others
            log.exception("[%s] error while stopping", path.id)

    # -- what a reload (engine/swap.py) does to a running pipeline --------------------

    async def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the batches in flight; cancel those still running
        (unacknowledged: their source gives them again) and return False, else True."""
        pending = set(self._tasks)
        if not pending:
            return True
        log.info("reloading: waiting up to %.0fs for %d in-flight batch(es)", timeout,
                 len(pending))
        _, pending = await asyncio.wait(pending, timeout=timeout)
        if not pending:
            return True
        log.warning("reloading: %d batch(es) not finished in %.0fs; cancelling them and "
                    "restarting the sources, which deliver them again", len(pending), timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        return False

    async def start_path(self, path: TargetPath) -> None:
        """Start a target path: its target, then its spool (opened, indexing what an earlier
        path of the same name left, and drained)."""
        await path.target.start()
        await path.start_spool()

    async def stop_path(self, path: TargetPath, timeout: float) -> None:
        """Stop a target path as at shutdown: its spool drainer (a write in progress gets
        a tenth of ``timeout``), then its target."""
        await path.stop_spool(timeout * 0.1)
        await self.stop_target(path)

    async def restart_http(self) -> None:
        """Serve /healthz, /readyz and /metrics with the current ``config.http``."""
        await self._stop_http()
        await self._start_http()

    def summary(self) -> dict[str, Any]:
        return {
            "sources": {s.id: {"received": getattr(s, "received", None),
                               "acked": getattr(s, "acked", None)} for s in self.sources},
            "unrouted": self.unrouted,
            "dead_lettered": self.dead_letter.count,
            "targets": {n: {k: v for k, v in vars(p.stats).items() if k != "stages"}
                        for n, p in self.paths.items()},
        }


class _Budget:
    """Messages in flight for one source, against a limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._freed = asyncio.Event()

    async def wait_below_limit(self) -> None:
        while self.used >= self.limit:
            self._freed.clear()
            await self._freed.wait()

    def take(self, count: int) -> None:
        self.used += count

    def give(self, count: int) -> None:
        self.used -= count
        self._freed.set()
