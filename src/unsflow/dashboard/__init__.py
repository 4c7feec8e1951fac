"""``unsflow dashboard``: the live line dashboard, a process of its own beside the pipeline.

Pages: **Line** (one live chart per machine and sensor, grouped by the UNS
hierarchy, with limit lines and the recent alerts), **UNS explorer** (the
live topic tree), **Pipeline** (per subscription and target: rates, spool,
dead letters, a target that is down in red; the running config and its
reload history), **Data lake** (Parquet objects by partition, a preview of
rows, the DuckDB query).

It reads what a pipeline already exposes (its ``/metrics``, its config file,
its lake) and an MQTT subscription of its own; it never runs inside the
pipeline's process, so it cannot take the pipeline's CPU time or block its
event loop. ``docs/components/dashboard.md`` explains the choice.

Starlette and uvicorn (extra ``dashboard``) are imported only when a
dashboard is built.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING, Any

from unsflow.dashboard.config import TOKEN_ENV, DashboardConfig, is_loopback
from unsflow.errors import UnsflowError

if TYPE_CHECKING:
    from unsflow.dashboard.redact import Scrubber

__all__ = ["TOKEN_ENV", "DashboardConfig", "build", "run_dashboard"]

log = logging.getLogger("unsflow.dashboard")

_TOKEN = re.compile(r"^[A-Za-z0-9._~+/=-]{16,256}$")


def check_access(config: DashboardConfig) -> None:
    """Raise UnsflowError when the bind address needs a token and there is none, or the token
    is unusable."""
    if config.token is not None and not _TOKEN.match(config.token):
        raise UnsflowError("the access token must be 16 to 256 characters of letters, digits "
                           "and ._~+/=- (e.g. python -c 'import secrets; "
                           "print(secrets.token_urlsafe(24))')")
    if config.token is None and not is_loopback(config.host):
        raise UnsflowError(f"listening on {config.host} makes the dashboard reachable from other "
                           f"machines: give an access token with --token or {TOKEN_ENV}")


def build(config: DashboardConfig, scrubber: Scrubber) -> Any:
    """The ASGI app for ``config`` (feed, views, hub and lakes wired together)."""
    from unsflow.components import Context
    from unsflow.dashboard.app import create_app
    from unsflow.dashboard.hub import Hub
    from unsflow.dashboard.lake import Lake
    from unsflow.dashboard.mqtt import MqttFeed
    from unsflow.dashboard.pipeline import PipelineWatch
    from unsflow.dashboard.uns import UnsView

    view = UnsView(alert_filters=config.alerts, limits=config.limits, history=config.history,
                   points_per_second=config.points_per_second, max_topics=config.max_topics)
    feed = MqttFeed(config, view) if (config.subscribe or config.alerts) else None
    hub = Hub(config, view, feed, [PipelineWatch(p, scrubber) for p in config.pipelines],
              scrubber)
    lakes = [Lake(root) for root in config.lakes]

    tasks: list[asyncio.Task[None]] = []

    async def startup() -> None:
        if feed is None:
            log.info("[dashboard] no topics to subscribe to (no --config with subscriptions, "
                     "no --subscribe): the Line and UNS pages stay empty")
            return
        if config.broker_credential is not None:
            # Resolved here too, only so that no page or log line can show the password.
            credential = await Context().resolve_secret(config.broker_credential)
            scrubber.add(credential.password)
        task = asyncio.create_task(feed.run(), name="dashboard-mqtt")
        task.add_done_callback(_feed_done)
        tasks.append(task)

    async def shutdown() -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    return create_app(hub, lakes, config.token, startup, shutdown)


def _feed_done(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("[dashboard] the MQTT subscription stopped: %r; the Line and UNS pages get "
                  "no more updates", task.exception())


def run_dashboard(config: DashboardConfig, scrubber: Scrubber,
                  on_started: Any = None) -> None:
    """Serve until SIGINT or SIGTERM (``on_started()`` once listening); returns after a clean
    stop."""
    from unsflow._uvicorn import serve_app

    check_access(config)
    app = build(config, scrubber)
    serve_app(app, config.host, config.port, extra="dashboard", graceful_seconds=3,
              on_stop=_find_hub_close(app), on_started=on_started)


def _find_hub_close(app: Any) -> Any:
    """The hub's close() behind the access gate and Starlette (ends the event streams on stop)."""
    from unsflow.dashboard.app import AccessGate

    inner = app.app if isinstance(app, AccessGate) else app
    hub = getattr(inner.state, "hub", None)
    return hub.request_close if hub is not None else (lambda: None)
