"""Live reload: watch the config file and swap a running pipeline to its new content.

The file's *content* is compared (SHA-256), every ``reload.interval`` seconds
and at once on SIGHUP. Its mtime would not do: a Kubernetes ConfigMap volume
is updated by swapping a ``..data`` symlink, which changes what the path
reads without touching the path itself.

A changed content is read twice, a moment apart, and used only when both
reads agree (an editor that truncates then writes would otherwise be caught
half way). Then it is validated exactly as ``unsflow validate`` does:

- invalid: every problem is logged with its key path, the running config
  stays, ``unsflow_config_reloads_total{result="rejected"}`` counts it, and
  the same content is not tried again (it can only fail the same way);
- valid: :meth:`Pipeline.reload <unsflow.engine.pipeline.Pipeline.reload>`
  swaps to it (:mod:`unsflow.engine.swap`). A content whose components could
  not start is not tried again either until it changes, except on SIGHUP.

A config given inline (``EDGE_SUBSCRIPTION_CONFIG``) has no file to watch;
``unsflow run`` then has no watcher and SIGHUP only logs that.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from unsflow.config.loading import load_config_text
from unsflow.config.models import PipelineConfig
from unsflow.errors import ConfigError, ConfigIssue, NotRunning, ReloadFailed

if TYPE_CHECKING:
    from unsflow.engine.pipeline import Pipeline

__all__ = ["ConfigWatcher", "digest", "load_config_file"]

log = logging.getLogger("unsflow.engine.reload")

# Seconds between the two reads that must agree before a changed content is used.
SETTLE_SECONDS = 0.2


def digest(data: bytes) -> str:
    """The hex SHA-256 of a config's bytes: what ``unsflow_config_info`` shows."""
    return hashlib.sha256(data).hexdigest()


def _fmt(path: Path) -> str:
    return "yaml" if path.suffix.lower() in (".yaml", ".yml") else "json"


def load_config_file(path: str | os.PathLike[str], env: Mapping[str, str] | None = None,
                     ) -> tuple[PipelineConfig, str]:
    """Load and validate a config file; also return the digest of exactly the bytes loaded."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError([ConfigIssue("", "a readable config file", f"{exc.strerror}: {p}")],
                          source=str(p)) from exc
    text = data.decode("utf-8", errors="replace")
    return load_config_text(text, fmt=_fmt(p), source=str(p), env=env), digest(data)


class ConfigWatcher:
    """Watches ``path`` for the running ``pipeline`` (started from ``loaded_digest``)."""

    def __init__(self, path: str | os.PathLike[str], pipeline: Pipeline, loaded_digest: str,
                 *, env: Mapping[str, str] | None = None) -> None:
        self.path = Path(path)
        self.pipeline = pipeline
        self.env = env
        self.current = loaded_digest
        self.rejected: str | None = None  # digest of the last invalid content
        self.failed: str | None = None    # digest of the last content that could not start
        self._wake = asyncio.Event()
        self._forced = False
        self._unreadable = ""

    def trigger(self) -> None:
        """Check now (SIGHUP); retries a content whose components failed to start."""
        self._forced = True
        self._wake.set()

    async def run(self) -> None:
        """Check the file until cancelled."""
        while True:
            interval = self.pipeline.config.reload.interval
            try:
                await asyncio.wait_for(self._wake.wait(), interval if interval > 0 else None)
            except TimeoutError:
                pass
            self._wake.clear()
            forced, self._forced = self._forced, False
            await self.check(forced=forced)

    async def check(self, *, forced: bool = False) -> str:
        """One look at the file: ``unchanged``, ``unreadable``, ``unsettled``,
        ``rejected``, ``failed``, ``applied``, or ``waiting`` while the pipeline starts."""
        if not self.pipeline.running:
            return "waiting"  # still starting (or stopping): the next check sees the change
        data = await self._read()
        if data is None:
            return "unreadable"
        now = digest(data)
        if now == self.current:
            # Back to the running content: a rejected or failed one written again is news.
            self.rejected = self.failed = None
            if forced:
                log.info("config %s unchanged (sha256 %s): nothing to reload", self.path, now[:12])
            return "unchanged"
        if now == self.rejected or (now == self.failed and not forced):
            return "unchanged"
        await asyncio.sleep(SETTLE_SECONDS)
        again = await self._read()
        if again is None or digest(again) != now:
            return "unsettled"  # still being written: the next check sees the rest
        try:
            config = load_config_text(data.decode("utf-8", errors="replace"),
                                      fmt=_fmt(self.path), source=str(self.path), env=self.env)
        except ConfigError as exc:
            self.rejected = now
            self.pipeline.reloads["rejected"] += 1
            log.error("config %s rejected (sha256 %s), the running config (generation %d) "
                      "stays: %d error(s)", self.path, now[:12], self.pipeline.generation,
                      len(exc.issues))
            for issue in exc.issues:
                log.error("config %s rejected: %s", self.path, issue)
            return "rejected"
        try:
            await self.pipeline.reload(config, now)
        except ReloadFailed as exc:
            self.failed = now
            log.error("config %s (sha256 %s): %s", self.path, now[:12], exc)
            return "failed"
        except NotRunning:
            return "waiting"  # the pipeline began to stop meanwhile
        self.current = now
        self.failed = None
        return "applied"

    async def _read(self) -> bytes | None:
        try:
            data = await asyncio.to_thread(self.path.read_bytes)
        except OSError as exc:
            # A ConfigMap update replaces a symlink: a missing file for a moment is normal.
            why = f"{exc.strerror or exc}"
            if why != self._unreadable:
                log.warning("config %s cannot be read (%s); the running config stays",
                            self.path, why)
            self._unreadable = why
            return None
        self._unreadable = ""
        return data
