"""The Pipeline page's data: a pipeline's ``/metrics`` and ``/readyz``, and its config file.

Read from outside, as Prometheus would: every ``scrape_interval`` seconds one
GET of ``/metrics`` and one of ``/readyz`` (a scrape costs the pipeline one
pass over its plain counters; :mod:`unsflow.engine.metrics`). Rates are the
differences between two scrapes.

A target is **down** (red) when its spool holds batches (its writes fail and
the spool keeps them), its spool is full, or its retries grew within the last
``DOWN_WINDOW`` seconds; **idle** before it saw anything; else **ok**. Its
*last write* is the scrape at which its write count last grew.

The config file is read at each scrape too. A new content is validated
exactly as ``unsflow validate`` does (nothing connects): invalid, it is
listed as *rejected* with every key path; valid, it is *pending* until the
pipeline's ``unsflow_config_info`` shows its SHA-256 (*applied*, with the
generation) or ``unsflow_config_reloads_total{result="failed"}`` grows
(*failed*). The config shown is the running one (by SHA-256), with every
secret masked (:mod:`unsflow.dashboard.redact`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from typing import Any

import yaml

from unsflow.dashboard.config import PipelineSource
from unsflow.dashboard.redact import Scrubber, redact

__all__ = ["DOWN_WINDOW", "PipelineWatch", "parse_metrics"]

log = logging.getLogger("unsflow.dashboard.pipeline")

DOWN_WINDOW = 10.0  # seconds after a retry during which a target still shows as down
RATE_WINDOW = 5.0  # rates are taken over about this many seconds (targets flush in batches)
MAX_HISTORY = 50
MAX_TEXTS = 20
SCRAPE_TIMEOUT = 3.0

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def parse_metrics(text: str) -> Samples:
    """Prometheus text -> ``{sample name: {sorted label pairs: value}}``.

    >>> s = parse_metrics('# TYPE x_total counter\\nx_total{target="a"} 3.0\\n')
    >>> s["x_total"][(("target", "a"),)]
    3.0
    """
    from prometheus_client.parser import text_string_to_metric_families

    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            out.setdefault(sample.name, {})[key] = float(sample.value)
    return out


def _by(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(k).get(label, ""): v for k, v in samples.get(name, {}).items()}


def _one(samples: Samples, name: str) -> float | None:
    values = samples.get(name)
    if not values:
        return None
    return next(iter(values.values()))


def _get(url: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"User-Agent": "unsflow-dashboard"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy
    try:
        with opener.open(request, timeout=SCRAPE_TIMEOUT) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class PipelineWatch:
    """Follows one pipeline (its metrics endpoint and its config file)."""

    def __init__(self, source: PipelineSource, scrubber: Scrubber) -> None:
        self.source = source
        self.scrubber = scrubber
        self.state: dict[str, Any] = {"name": source.name, "reachable": None,
                                      "metrics_url": source.metrics_url}
        self.history: deque[dict[str, Any]] = deque(maxlen=MAX_HISTORY)
        self._prev: tuple[float, Samples] | None = None
        self._past: deque[tuple[float, Samples]] = deque(maxlen=64)
        self._last_retry: dict[str, float] = {}
        self._last_write: dict[str, float] = {}
        self._texts: dict[str, str] = {}  # sha256 -> redacted config text
        self._file_sha: str | None = None
        self._pending: dict[str, Any] | None = None
        self._failed_seen: float | None = None
        self._rejected_seen: float | None = None

    async def poll(self) -> dict[str, Any]:
        """One scrape and one read of the config file; returns the page's state."""
        samples: Samples | None = None
        ready: dict[str, Any] | None = None
        error = ""
        if self.source.metrics_url:
            try:
                status, body = await asyncio.to_thread(_get, self.source.metrics_url)
                if status != 200:
                    raise OSError(f"HTTP {status}")
                samples = parse_metrics(body.decode("utf-8", "replace"))
                ready_url = self.source.metrics_url.rsplit("/", 1)[0] + "/readyz"
                _, ready_body = await asyncio.to_thread(_get, ready_url)
                ready = json.loads(ready_body)
            except (OSError, ValueError) as exc:
                error = str(getattr(exc, "reason", None) or exc)
        self._read_config()
        now = time.time()
        state = self._build(now, samples, ready, error)
        self.state = state
        return state

    # --- metrics -------------------------------------------------------------

    def _build(self, now: float, samples: Samples | None, ready: dict[str, Any] | None,
               error: str) -> dict[str, Any]:
        src = self.source
        state: dict[str, Any] = {
            "name": src.name, "metrics_url": src.metrics_url,
            "reachable": samples is not None, "error": self.scrubber.scrub(error) or None,
            "checked": now}
        prev = self._prev
        # The oldest scrape within RATE_WINDOW (or the previous one) is the base of rates.
        base = next((p for p in self._past if now - p[0] <= RATE_WINDOW), prev)
        dt = (now - base[0]) if base else 0.0

        def rate(name: str, label: str, key: str) -> float | None:
            if base is None or dt <= 0 or samples is None:
                return None
            before = _by(base[1], name, label).get(key)
            after = _by(samples, name, label).get(key)
            if before is None or after is None or after < before:
                return None
            return round((after - before) / dt, 1)

        targets = []
        for name, info in src.targets.items():
            t: dict[str, Any] = {"name": name, "type": info.get("type"),
                                 "processors": info.get("processors", []), "status": "unknown"}
            if samples is not None:
                received = _by(samples, "unsflow_target_received_total", "target").get(name, 0.0)
                accepted = _by(samples, "unsflow_target_accepted_total", "target").get(name, 0.0)
                retries = _by(samples, "unsflow_target_retries_total", "target").get(name, 0.0)
                batches = _by(samples, "unsflow_spool_batches", "target").get(name)
                full = _by(samples, "unsflow_spool_full", "target").get(name, 0.0)
                writes = _by(samples, "unsflow_batch_seconds_count", "stage").get(
                    f"target:{name}", 0.0)
                if prev is not None:
                    before = _by(prev[1], "unsflow_target_retries_total", "target").get(name, 0.0)
                    if retries > before:
                        self._last_retry[name] = now
                    w_before = _by(prev[1], "unsflow_batch_seconds_count", "stage").get(
                        f"target:{name}", 0.0)
                    if writes > w_before:
                        self._last_write[name] = now
                elif writes:
                    self._last_write.setdefault(name, now)
                t.update({
                    "received": received, "accepted": accepted,
                    "dead_lettered": _by(samples, "unsflow_target_dead_lettered_total",
                                         "target").get(name, 0.0),
                    "retries": retries, "spool_batches": batches,
                    "in_flight": _by(samples, "unsflow_target_in_flight", "target").get(name),
                    "spool_bytes": _by(samples, "unsflow_spool_bytes", "target").get(name),
                    "spool_full": bool(full),
                    "rate": rate("unsflow_target_received_total", "target", name),
                    "accepted_rate": rate("unsflow_target_accepted_total", "target", name),
                    "last_write": self._last_write.get(name),
                })
                recent_retry = now - self._last_retry.get(name, 0.0) < DOWN_WINDOW
                if batches or full or recent_retry:
                    t["status"] = "down"
                    why = []
                    if batches:
                        why.append(f"{int(batches)} batch(es) waiting in its spool")
                    if full:
                        why.append("spool full: acknowledgements held")
                    if recent_retry:
                        why.append("writes failing and retried")
                    t["why"] = "; ".join(why)
                elif received == 0 and accepted == 0:
                    t["status"] = "idle"
                else:
                    t["status"] = "ok"
            targets.append(t)
        state["targets"] = targets

        sources = []
        if samples is not None:
            for sid, received in _by(samples, "unsflow_source_received_total", "source").items():
                sources.append({
                    "id": sid, "received": received,
                    "acked": _by(samples, "unsflow_source_acked_total", "source").get(sid),
                    "in_flight": _by(samples, "unsflow_source_in_flight", "source").get(sid),
                    "ready": bool(_by(samples, "unsflow_source_ready", "source").get(sid)),
                    "rate": rate("unsflow_source_received_total", "source", sid),
                    "acked_rate": rate("unsflow_source_acked_total", "source", sid)})
        state["sources"] = sources
        last_msg = _by(samples, "unsflow_last_message_timestamp_seconds", "subscription") \
            if samples is not None else {}
        state["subscriptions"] = [{"filter": flt, **info, "last_message": last_msg.get(flt)}
                                  for flt, info in src.subscriptions.items()]
        if samples is not None:
            state["dead_letter_total"] = _one(samples, "unsflow_dead_letter_total")
            state["unrouted"] = _one(samples, "unsflow_unrouted_total")
            state["generation"] = _one(samples, "unsflow_config_generation")
            config_info = samples.get("unsflow_config_info", {})
            state["running_sha"] = dict(next(iter(config_info))).get("sha256") \
                if config_info else None
            state["reloads"] = _by(samples, "unsflow_config_reloads_total", "result")
            state["ready"] = ready.get("ready") if isinstance(ready, dict) else None
            reason = ready.get("reason") if isinstance(ready, dict) else None
            state["ready_reason"] = self.scrubber.scrub(str(reason)) if reason else None
            self._follow_reloads(now, state)
            self._prev = (now, samples)
            self._past.append((now, samples))
            while self._past and now - self._past[0][0] > RATE_WINDOW:
                self._past.popleft()
        running = state.get("running_sha")
        state["file_sha"] = self._file_sha
        state["config"] = self._texts.get(running or "") or self._texts.get(self._file_sha or "")
        state["config_is_running"] = bool(running) and running in self._texts
        state["history"] = list(self.history)
        return state

    def _follow_reloads(self, now: float, state: dict[str, Any]) -> None:
        running = state.get("running_sha")
        reloads = state.get("reloads") or {}
        pending = self._pending
        if pending is not None and running == pending["sha"]:
            pending.update(result="applied", generation=state.get("generation"), time=now)
            self._pending = None
        failed = reloads.get("failed", 0.0)
        if self._failed_seen is not None and failed > self._failed_seen and pending is not None:
            why = "the pipeline could not start it; the previous config runs (see its log)"
            pending.update(result="failed", time=now, issues=[why])
            self._pending = None
        self._failed_seen = failed
        rejected = reloads.get("rejected", 0.0)
        seen_here = any(h["result"] == "rejected" and now - h["time"] < 10 for h in self.history)
        if self._rejected_seen is not None and rejected > self._rejected_seen and not seen_here:
            why = "rejected by the pipeline (its log names the key paths)"
            self.history.appendleft({"time": now, "result": "rejected", "sha": None,
                                     "issues": [why]})
        self._rejected_seen = rejected
        if not self.history and running:
            self.history.appendleft({"time": now, "result": "running", "sha": running,
                                     "generation": state.get("generation"), "issues": []})

    # --- the config file ---------------------------------------------------

    def _read_config(self) -> None:
        path = self.source.config_path
        if not path:
            return
        try:
            data = Path(path).read_bytes()
        except OSError:
            return
        sha = hashlib.sha256(data).hexdigest()
        if sha == self._file_sha:
            return
        first = self._file_sha is None
        self._file_sha = sha
        text = data.decode("utf-8", "replace")
        self._remember(sha, text)
        if first:
            return
        from unsflow.config.loading import load_config_text
        from unsflow.errors import ConfigError

        fmt = "yaml" if path.lower().endswith((".yaml", ".yml")) else "json"
        entry: dict[str, Any] = {"time": time.time(), "sha": sha, "issues": []}
        try:
            load_config_text(text, fmt=fmt, source=Path(path).name)
        except ConfigError as exc:
            entry.update(result="rejected",
                         issues=[self.scrubber.scrub(str(issue)) for issue in exc.issues])
        else:
            entry["result"] = "pending"
            if self._pending is not None:
                self._pending.update(result="superseded")
            self._pending = entry
        self.history.appendleft(entry)

    def _remember(self, sha: str, text: str) -> None:
        try:
            data = yaml.safe_load(text)  # JSON is YAML too
        except yaml.YAMLError:
            data = None
        if data is None:
            shown = "(not readable as JSON or YAML)"
        else:
            shown = json.dumps(redact(data, self.scrubber), indent=2, ensure_ascii=False)
        self._texts[sha] = self.scrubber.scrub(shown)
        while len(self._texts) > MAX_TEXTS:
            self._texts.pop(next(iter(self._texts)))
