"""Swapping a running pipeline to a new config: what changed, and the swap itself.

:func:`plan_reload` compares two valid configs component by component (a
component whose config is equal is kept, running, with its state and
connection). :func:`apply` carries a plan out on a running
:class:`~unsflow.engine.pipeline.Pipeline`:

1. Stop reading the sources. A batch a source has taken from upstream but
   the pipeline has not read yet stays in the source.
2. Drain: the batches in flight finish and are acknowledged, within
   ``shutdown-timeout``. Those that do not (a target that keeps failing) are
   cancelled, unacknowledged, and every source is restarted so that the
   broker (or Kafka's committed offsets) delivers them again: at least once.
3. Stop the sources, targets and processors that changed or went away
   (targets flush), start the new ones, and re-link kept targets to their
   processors.
4. The UNS source, when it can take its new config live (:meth:`Source.keeps
   <unsflow.sources.base.Source.keeps>`: for MQTT, the broker settings and
   credential are unchanged), keeps its connection and session and is
   reconfigured: added filters are subscribed (and QoS changes re-subscribed)
   and the SUBACK awaited, removed ones unsubscribed.
5. Route with the new subscriptions, read again.

A failure in step 3 or 4 (a target that cannot start, a refused
subscription) rolls back: what was started is stopped, what was stopped is
built again from the old config and started, and the old config runs on;
:class:`~unsflow.errors.ReloadFailed` says why. Only when the old components cannot start
again either does the pipeline stop (``run`` raises, exit code 1), as it
would have at startup.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unsflow.config.models import PipelineConfig
from unsflow.engine.pipeline import uns_source_config
from unsflow.engine.topics import TopicMatcher
from unsflow.errors import ReloadFailed
from unsflow.sources.base import Source

if TYPE_CHECKING:
    from unsflow.engine.path import TargetPath
    from unsflow.engine.pipeline import Pipeline

__all__ = ["ReloadPlan", "apply", "plan_reload"]

log = logging.getLogger("unsflow.engine.reload")

# Top-level keys that change no component; they take effect at the swap.
_SETTINGS = ("batch_size", "max_in_flight", "max_in_flight_bytes", "shutdown_timeout", "http",
             "dead_letter", "reload",
             "spool")


@dataclass
class ReloadPlan:
    """What a reload changes. ``uns`` is the UNS broker source's fate."""

    uns: str = "none"  # kept | replaced | added | removed | none (no UNS source either way)
    subscriptions_added: list[str] = field(default_factory=list)
    subscriptions_removed: list[str] = field(default_factory=list)
    subscriptions_qos: list[str] = field(default_factory=list)
    sources: dict[str, list[str]] = field(default_factory=dict)     # added/removed/replaced
    processors: dict[str, list[str]] = field(default_factory=dict)
    targets: dict[str, list[str]] = field(default_factory=dict)
    settings: list[str] = field(default_factory=list)
    sources_restarted: bool = False  # the drain timed out: every source started afresh
    paused_seconds: float = 0.0  # how long the sources were not read (applied reloads)

    @property
    def changed(self) -> bool:
        return bool(self.uns in ("replaced", "added", "removed") or self.subscriptions_added
                    or self.subscriptions_removed or self.subscriptions_qos or self.settings
                    or any(self.sources.values()) or any(self.processors.values())
                    or any(self.targets.values()))

    def names(self, section: str, *changes: str) -> list[str]:
        table: dict[str, list[str]] = getattr(self, section)
        return [n for c in changes for n in table.get(c, [])]

    def describe(self) -> str:
        """One line for the log: ``subscriptions +a/# -b/#; targets ~lake +alerts; ...``."""
        if not self.changed:
            return "nothing"
        parts: list[str] = []
        subs = ([f"+{f}" for f in self.subscriptions_added]
                + [f"-{f}" for f in self.subscriptions_removed]
                + [f"~{f} (qos)" for f in self.subscriptions_qos])
        if subs:
            parts.append("subscriptions " + " ".join(subs))
        if self.uns in ("replaced", "added", "removed"):
            parts.append(f"UNS source {self.uns}"
                         + (" (broker settings changed)" if self.uns == "replaced" else ""))
        elif self.uns == "kept":
            parts.append("UNS connection kept")
        for section in ("sources", "processors", "targets"):
            table: dict[str, list[str]] = getattr(self, section)
            items = ([f"+{n}" for n in table.get("added", [])]
                     + [f"-{n}" for n in table.get("removed", [])]
                     + [f"~{n}" for n in table.get("replaced", [])])
            if items:
                parts.append(f"{section} " + " ".join(items))
        if self.settings:
            parts.append("settings " + ", ".join(s.replace("_", "-") for s in self.settings))
        if self.sources_restarted:
            parts.append("sources restarted (in-flight batches did not finish in time)")
        return "; ".join(parts) or "nothing"


def _diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[str]]:
    return {"added": sorted(set(new) - set(old)), "removed": sorted(set(old) - set(new)),
            "replaced": sorted(n for n in set(old) & set(new) if old[n] != new[n])}


def plan_reload(old: PipelineConfig, new: PipelineConfig, uns: Source | None = None) -> ReloadPlan:
    """What changes from ``old`` to ``new``; ``uns`` is the running UNS source, if any.

    The UNS source is kept when it can take its new config live
    (:meth:`~unsflow.sources.base.Source.keeps`); a source the config does not
    describe (a test's in-memory source) keeps itself.
    """
    plan = ReloadPlan()
    if uns is None:
        plan.uns = "added" if new.subscriptions else "none"
    elif not new.subscriptions:
        plan.uns = "removed"
    elif uns.keeps(uns_source_config(new)):
        plan.uns = "kept"
    else:
        plan.uns = "replaced"
    old_subs = {f: s.qos for f, s in old.subscriptions.items()}
    new_subs = {f: s.qos for f, s in new.subscriptions.items()}
    plan.subscriptions_added = sorted(set(new_subs) - set(old_subs))
    plan.subscriptions_removed = sorted(set(old_subs) - set(new_subs))
    plan.subscriptions_qos = sorted(f for f in set(old_subs) & set(new_subs)
                                    if old_subs[f] != new_subs[f])
    if old.subscriptions != new.subscriptions and not (
            plan.subscriptions_added or plan.subscriptions_removed or plan.subscriptions_qos):
        plan.settings.append("subscriptions")  # only targets of some filters changed
    plan.sources = _diff(dict(old.sources), dict(new.sources))
    plan.processors = _diff(dict(old.processors), dict(new.processors))
    plan.targets = _diff(dict(old.targets), dict(new.targets))
    if old.spool != new.spool:  # every spooling target opens its spool anew
        plan.targets["replaced"] = sorted(
            set(plan.targets["replaced"]) | {n for n in set(old.targets) & set(new.targets)
                                             if old.targets[n].spool or new.targets[n].spool})
    plan.settings += [k for k in _SETTINGS if getattr(old, k) != getattr(new, k)]
    return plan


async def apply(p: Pipeline, new: PipelineConfig, config_hash: str | None = None) -> ReloadPlan:
    """Swap ``p`` to ``new`` (see the module docstring). The caller holds the reload lock."""
    old = p.config
    plan = plan_reload(old, new, p.uns_source)
    if not plan.changed:
        p.config = new
        if config_hash:
            p.config_hash = config_hash
        log.info("config file changed, but not the config: nothing to reload")
        return plan
    began = time.monotonic()
    await p.stop_readers()
    try:
        plan.sources_restarted = not await p.drain(old.shutdown_timeout)
        try:
            await _Swap(p, old, new, plan).run()
        except Exception as exc:
            p.reloads["failed"] += 1
            if p.stopping_on_error:
                raise ReloadFailed(f"the new config could not start ({exc}), nor the previous "
                                   "one again: stopping") from exc
            raise ReloadFailed(f"the new config could not start ({exc}); the previous config "
                               f"(generation {p.generation}) runs on") from exc
    except BaseException:
        if p.running and not _cancelled():
            p.start_readers()
        raise
    p.start_readers()
    plan.paused_seconds = time.monotonic() - began
    p.generation += 1
    if config_hash:
        p.config_hash = config_hash
    p.reloads["applied"] += 1
    log.info("config reloaded (generation %d%s, reading paused %.2fs): %s", p.generation,
             f", sha256 {config_hash[:12]}" if config_hash else "", plan.paused_seconds,
             plan.describe())
    return plan


def _cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class _Swap:
    """One swap with its journal, so that a failure can put the old components back."""

    def __init__(self, p: Pipeline, old: PipelineConfig, new: PipelineConfig,
                 plan: ReloadPlan) -> None:
        self.p, self.old, self.new, self.plan = p, old, new, plan
        self.timeout = old.shutdown_timeout
        # Old components stopped so far: (kind, name); the UNS source is ("uns", "").
        self.stopped: list[tuple[str, str]] = []
        # New components started so far, same keys.
        self.started: list[tuple[str, str]] = []
        self.uns_reconfigured = False

    async def run(self) -> None:
        await self._stop_old()
        try:
            await self._start_new()
        except Exception as exc:
            log.error("reload failed: %s; going back to the previous config", exc)
            await self._rollback()
            raise
        p, new = self.p, self.new
        p.config = new
        p.matcher = TopicMatcher({f: s.target_names for f, s in new.subscriptions.items()})
        p.max_in_flight = new.max_in_flight
        if self.old.http != new.http:
            await p.restart_http()

    # -- stop ------------------------------------------------------------------

    async def _stop_old(self) -> None:
        p, plan = self.p, self.plan
        restart_all = plan.sources_restarted
        uns = p.uns_source
        for src in p.sources:
            if src is uns:
                go = plan.uns in ("replaced", "removed") or (restart_all and src.redelivers)
                key = ("uns", "")
            else:
                go = (restart_all and src.redelivers) or src.id in plan.names(
                    "sources", "removed", "replaced")
                key = ("source", src.id)
            if go:
                p.remove_source(src)
                self.stopped.append(key)
                await _stop(src)
        for name in plan.names("targets", "removed", "replaced"):
            path = p.paths.pop(name)
            self.stopped.append(("target", name))
            if name in plan.targets["removed"] and path.spool is not None and not path.spool.empty:
                log.warning("[spool:%s] target removed with %d spooled message(s) in %s; they "
                            "stay there until a target of that name drains them", name,
                            path.spool.messages, path.spool.directory)
            await _PathLife(p, path, self.timeout).stop()
        for name in plan.names("processors", "removed", "replaced"):
            proc = p.processors.pop(name)
            self.stopped.append(("processor", name))
            await _stop(proc)

    # -- start -----------------------------------------------------------------

    async def _start_new(self) -> None:
        p, new, plan = self.p, self.new, self.plan
        # The same DeadLetter goes on (its counters are metrics); only where it writes changes.
        p.dead_letter.path = Path(new.dead_letter.path)
        for name in plan.names("processors", "added", "replaced"):
            proc = p.build_processor(name, new.processors[name])
            await self._start(proc)
            p.processors[name] = proc
            self.started.append(("processor", name))
        for name in plan.names("targets", "added", "replaced"):
            path = p.build_path(name, new)
            await self._start(_PathLife(p, path, self.timeout))
            p.paths[name] = path
            self.started.append(("target", name))
        _relink(p, new)
        uns = p.uns_source
        if uns is not None:
            self.uns_reconfigured = True
            await uns.reconfigure(uns_source_config(new), timeout=self.timeout)
        # A source with new settings gets shutdown-timeout to connect (then the old one comes
        # back); one restarted unchanged (the drain timed out) takes as long as at startup.
        stopped = set(self.stopped)
        if uns is None and new.subscriptions:
            await self._start_uns(new, -1 if plan.uns in ("added", "replaced") else None)
        changed = plan.names("sources", "added", "replaced")
        for name in new.sources:
            if ("source", name) in stopped or name in changed:
                await self._start_source(name, new, -1 if name in changed else None)

    async def _start_uns(self, config: PipelineConfig, timeout: float | None = -1) -> None:
        """Build and start the UNS source of ``config`` within ``timeout`` (-1:
        shutdown-timeout; None: as long as it takes, as at startup)."""
        p = self.p
        src = p.build_uns_source(config)
        # A persistent session keeps filters the old source had: drop the removed ones.
        gone = set(self.old.subscriptions) | set(self.new.subscriptions)
        src.forget_on_connect(gone - set(config.subscriptions))
        await self._start(src, timeout)
        p.add_uns_source(src)
        self.started.append(("uns", ""))

    async def _start_source(self, name: str, config: PipelineConfig,
                            timeout: float | None = -1) -> None:
        """Build and start source ``name`` of ``config``'s ``sources`` (timeout as above)."""
        p = self.p
        scfg = config.sources[name]
        src = p.build_named_source(name, scfg)
        await self._start(src, timeout)
        p.add_source(src, scfg.target_names)
        self.started.append(("source", name))

    async def _start(self, component: Any, timeout: float | None = -1) -> None:
        """Start ``component`` within the timeout; on any failure stop it again."""
        limit = self.timeout if timeout == -1 else timeout
        try:
            await asyncio.wait_for(component.start(), limit)
        except TimeoutError:
            await _stop(component)
            raise ReloadFailed(f"[{component.id}] did not start within {limit:g}s") from None
        except BaseException:
            await _stop(component)
            raise

    # -- rollback --------------------------------------------------------------

    async def _rollback(self) -> None:
        p, old = self.p, self.old
        for kind, name in reversed(self.started):
            if kind in ("uns", "source"):
                uns = p.uns_source
                src = uns if kind == "uns" else next(s for s in p.sources
                                                    if s is not uns and s.id == name)
                assert src is not None
                p.remove_source(src)
                await _stop(src)
            elif kind == "target":
                await _PathLife(p, p.paths.pop(name), self.timeout).stop()
            else:
                await _stop(p.processors.pop(name))
        p.dead_letter.path = Path(old.dead_letter.path)
        self.started = []
        try:
            uns = p.uns_source
            if self.uns_reconfigured and uns is not None:
                await uns.reconfigure(uns_source_config(old), timeout=self.timeout)
            for kind, name in self.stopped:
                if kind == "processor":
                    proc = p.build_processor(name, old.processors[name])
                    await proc.start()
                    p.processors[name] = proc
            for kind, name in self.stopped:
                if kind == "target":
                    path = p.build_path(name, old)
                    await _PathLife(p, path, self.timeout).start()
                    p.paths[name] = path
            _relink(p, old)
            for kind, name in self.stopped:
                if kind == "uns":
                    await self._start_uns(old, timeout=None)
                elif kind == "source":
                    await self._start_source(name, old, timeout=None)
        except BaseException as exc:
            log.critical("reload: the previous config could not start again either (%s); "
                         "stopping", exc)
            p.fail(exc)
            raise


class _PathLife:
    """Start and stop of a target path as one component: the target, then its spool
    (opened, indexing what an earlier path of the same name left, and drained)."""

    def __init__(self, p: Pipeline, path: TargetPath, timeout: float) -> None:
        self.p, self.path, self.timeout = p, path, timeout
        self.id = path.id

    async def start(self) -> None:
        await self.p.start_path(self.path)

    async def stop(self) -> None:
        await self.p.stop_path(self.path, self.timeout)


def _relink(p: Pipeline, config: PipelineConfig) -> None:
    """Kept targets get the processors (kept or new) of ``config``; the dead letter its
    target (``dead-letter.target``), which may be a new one."""
    for name, path in p.paths.items():
        path.processors = [p.processors[x] for x in config.targets[name].processors]
        path.dead_letter = p.dead_letter
    dl_target = config.dead_letter.target
    p.dead_letter.target = p.paths[dl_target].target if dl_target is not None else None


async def _stop(component: Any) -> None:
    try:
        await component.stop()
    except Exception:  # stopping: report and go on with the others
        log.exception("[%s] error while stopping", getattr(component, "id", component))
