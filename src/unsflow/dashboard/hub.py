"""The update loop and the fan-out of server-sent events to open pages.

Two loops, each a named task owned by :meth:`Hub.run`:

- every ``update_interval`` seconds, :meth:`UnsView.tick` turns what the MQTT
  thread kept into chart points, alerts and changed topics; the Line update
  is encoded once and given to every Line page, each UNS explorer page gets
  the changed topics that match its filter (at most ``MAX_TOPIC_ROWS``);
- every ``scrape_interval`` seconds, each pipeline's metrics and config are
  read (:class:`~unsflow.dashboard.pipeline.PipelineWatch`) and sent to the
  Pipeline pages.

A page's queue holds at most ``QUEUE_SIZE`` events. When a page does not
keep up (a slow network, a sleeping laptop), its queue is emptied and it
gets a fresh snapshot instead: the loops never wait for a page, and a page
never gets an unbounded backlog. So the browser receives at most one update
per interval, whatever the message rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from unsflow.engine.topics import split_shared

if TYPE_CHECKING:
    from unsflow.dashboard.config import DashboardConfig
    from unsflow.dashboard.mqtt import MqttFeed
    from unsflow.dashboard.pipeline import PipelineWatch
    from unsflow.dashboard.redact import Scrubber
    from unsflow.dashboard.uns import UnsView

__all__ = ["PAGES", "Hub", "PageClient", "encode_event"]

log = logging.getLogger("unsflow.dashboard")

PAGES = ("line", "uns", "pipeline", "lake")
QUEUE_SIZE = 8
MAX_TOPIC_ROWS = 500
SNAPSHOT_TOPIC_ROWS = 2000
RESYNC = b"resync"
CLOSE = b"close"


def encode_event(name: str, data: Any) -> bytes:
    """One server-sent event.

    >>> encode_event("update", {"a": 1})
    b'event: update\\ndata: {"a":1}\\n\\n'
    """
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


@dataclass(eq=False)
class PageClient:
    """One open page: what it shows, its filter and its bounded queue."""

    page: str
    text: str = ""
    queue: asyncio.Queue[bytes] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))
    resyncs: int = 0

    def offer(self, event: bytes) -> None:
        """Queue ``event``; a full queue is replaced by one resync (never waits)."""
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            while not self.queue.empty():
                self.queue.get_nowait()
            self.resyncs += 1
            self.queue.put_nowait(RESYNC)


class Hub:
    """Owns the views, runs the loops and serves the pages' event streams."""

    def __init__(self, config: DashboardConfig, view: UnsView, feed: MqttFeed | None,
                 watches: list[PipelineWatch], scrubber: Scrubber) -> None:
        self.config = config
        self.view = view
        self.feed = feed
        self.watches = watches
        self.scrubber = scrubber
        self.clients: set[PageClient] = set()
        self.pipelines: list[dict[str, Any]] = [w.state for w in watches]
        self.ticks = 0
        self.closing = False
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- pages ---------------------------------------------------------------

    def subscribe(self, page: str, text: str = "") -> PageClient:
        client = PageClient(page, text[:200])
        self.clients.add(client)
        return client

    def unsubscribe(self, client: PageClient) -> None:
        self.clients.discard(client)

    def request_close(self) -> None:
        """close() from a signal handler or another thread."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.close)

    def close(self) -> None:
        """End every event stream (the server is stopping)."""
        self.closing = True
        for client in list(self.clients):
            while not client.queue.empty():
                client.queue.get_nowait()
            client.queue.put_nowait(CLOSE)

    def broker_status(self) -> dict[str, Any]:
        status = self.feed.status if self.feed is not None else {"connected": False,
                                                                 "broker": None}
        return {**status, "messages": self.view.messages, "topics": len(self.view.topics),
                "untracked": self.view.untracked}

    def snapshot(self, client: PageClient) -> bytes:
        """The full state of ``client``'s page, as one event."""
        if client.page == "line":
            data: dict[str, Any] = self.view.line_snapshot()
        elif client.page == "uns":
            data = {"rows": self.view.topic_rows(text=client.text, limit=SNAPSHOT_TOPIC_ROWS),
                    "full": True}
        elif client.page == "pipeline":
            data = {"pipelines": self.pipelines}
        else:
            data = {}
        data["status"] = self.broker_status()
        data["interval"] = self.config.update_interval
        return encode_event("snapshot", data)

    # --- loops ---------------------------------------------------------------

    async def run(self) -> None:
        """Both loops until cancelled."""
        self._loop = asyncio.get_running_loop()
        async with asyncio.TaskGroup() as group:
            group.create_task(self._tick_loop(), name="dashboard-ticks")
            group.create_task(self._scrape_loop(), name="dashboard-scrapes")

    async def _tick_loop(self) -> None:
        interval = self.config.update_interval
        next_at = time.monotonic()
        while True:
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            if next_at < time.monotonic() - interval:
                next_at = time.monotonic()  # fell behind (a suspended laptop): do not catch up
            try:
                self.tick()
            except Exception:  # a display bug: the pages miss one update, the log says why
                log.exception("[dashboard] update failed")

    def tick(self) -> None:
        """One update of every Line and UNS explorer page."""
        changes = self.view.tick()
        self.ticks += 1
        status = self.broker_status()
        line: bytes | None = None
        for client in list(self.clients):
            if client.page == "line":
                if line is None:
                    line = encode_event("update", {
                        "points": changes["points"], "new_series": changes["new_series"],
                        "alerts": changes["alerts"], "alerts_total": self.view.alerts_total,
                        "status": status})
                client.offer(line)
            elif client.page == "uns":
                rows = self.view.topic_rows(changes["topics"], client.text, MAX_TOPIC_ROWS) \
                    if changes["topics"] else []
                client.offer(encode_event("topics", {"rows": rows, "full": False,
                                                     "status": status}))

    async def _scrape_loop(self) -> None:
        while True:
            await self.scrape()
            await asyncio.sleep(self.config.scrape_interval)

    async def scrape(self) -> None:
        """Read every pipeline once and update the Pipeline pages."""
        states = []
        for watch in self.watches:
            try:
                states.append(await watch.poll())
            except Exception as exc:  # one pipeline's oddity must not stop the page
                log.exception("[dashboard] reading pipeline %s failed", watch.source.name)
                states.append({**watch.state, "reachable": False,
                               "error": self.scrubber.scrub(f"{type(exc).__name__}: {exc}")})
        for state in states:
            for sub in state.get("subscriptions") or []:
                if sub.get("qos") is not None:  # a topic filter (not a named source)
                    sub["rate"] = round(self.view.rate_of(split_shared(sub["filter"])[1]), 1)
        self.pipelines = states
        event = encode_event("pipelines", {"pipelines": states, "status": self.broker_status()})
        for client in list(self.clients):
            if client.page == "pipeline":
                client.offer(event)

    async def stream(self, client: PageClient) -> Any:
        """The event stream of one page: a snapshot, then updates, until it goes away."""
        try:
            yield self.snapshot(client)
            while not self.closing:
                try:
                    event = await asyncio.wait_for(client.queue.get(), 15.0)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if event is CLOSE:
                    return
                yield self.snapshot(client) if event is RESYNC else event
        finally:
            self.unsubscribe(client)


@contextlib.asynccontextmanager
async def running(hub: Hub) -> Any:
    """Run ``hub``'s loops for the duration of the block."""
    task = asyncio.create_task(hub.run(), name="dashboard-hub")
    try:
        yield hub
    finally:
        hub.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
