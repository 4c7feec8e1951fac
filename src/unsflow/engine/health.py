"""The HTTP endpoints of a running pipeline: ``/healthz``, ``/readyz``, ``/metrics``.

- ``GET /healthz``: 200 ``ok`` whenever the event loop answers (liveness: a
  blocked or dead loop does not answer at all).
- ``GET /readyz``: 200 when the pipeline runs, every source is ready
  (connected *and* subscribed: the broker confirmed every filter), no
  target's spool is full and the dead letter can be written, else 503. The
  body is JSON either way: ``{"ready": ..., "reason": ..., "sources": {...},
  "spools_full": {...}, "dead_letter": null or why it cannot be written}``.
- ``GET /metrics``: Prometheus text format 0.0.4, built from the pipeline's
  counters at scrape time (:mod:`unsflow.engine.metrics`).

Anything else is 404; a method other than GET or HEAD is 405. Each request is
answered and the connection closed (``Connection: close``): probes and
scrapers open one connection per request anyway, and it keeps the server a
few lines of stdlib asyncio. A request that does not arrive whole within
``REQUEST_TIMEOUT`` seconds is dropped.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from unsflow.engine.pipeline import Pipeline

__all__ = ["HealthServer", "readiness", "METRICS_CONTENT_TYPE"]

log = logging.getLogger("unsflow.engine.health")

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REQUEST_TIMEOUT = 5.0
MAX_REQUEST_BYTES = 16384

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error", 503: "Service Unavailable"}


def readiness(pipeline: "Pipeline") -> tuple[bool, dict[str, Any]]:
    """``(ready, report)``: ready when the pipeline runs, every source is ready, no
    spool is full and the dead letter can be written (acknowledgements wait while it
    cannot)."""
    sources = {src.id: bool(src.ready) for src in pipeline.sources}
    waiting = [name for name, ok in sources.items() if not ok]
    full = {name: path.spool.full for name, path in pipeline.paths.items()
            if path.spool is not None and path.spool.full}
    dead_letter = pipeline.dead_letter.failing
    if not pipeline.running:
        reason = "pipeline is not running (starting or stopping)"
    elif waiting:
        reason = "not connected and subscribed: " + ", ".join(f"source {n!r}" for n in waiting)
    elif full:
        reason = "; ".join(f"spool of target {n!r} full ({why})" for n, why in full.items())
    elif dead_letter:
        reason = f"{dead_letter}; acknowledgements are held until it can be written"
    else:
        reason = ""
    ready = not reason
    return ready, {"ready": ready, "reason": reason or None, "sources": sources,
                   "spools_full": full, "dead_letter": dead_letter}


class HealthServer:
    """Serves the endpoints of ``pipeline`` on ``host``:``port`` while started."""

    def __init__(self, pipeline: "Pipeline", host: str, port: int) -> None:
        self.pipeline = pipeline
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._registry: Any = None
        self._connections: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        """Listen. ``port`` becomes the bound port. Raises OSError when it cannot bind."""
        from unsflow.engine.metrics import pipeline_registry

        self._registry = pipeline_registry(self.pipeline)
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("[http] serving /healthz, /readyz and /metrics on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    ConnectionError):
                return
            status, headers, body = self._respond(head)
            if head.startswith(b"HEAD "):
                body_out = b""
            else:
                body_out = body
            lines = [f"HTTP/1.1 {status} {_REASONS[status]}",
                     *(f"{k}: {v}" for k, v in headers.items()),
                     f"Content-Length: {len(body)}", "Connection: close", "", ""]
            writer.write("\r\n".join(lines).encode("latin-1") + body_out)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            if task is not None:
                self._connections.discard(task)

    def _respond(self, head: bytes) -> tuple[int, dict[str, str], bytes]:
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return 400, {"Content-Type": "text/plain"}, b"bad request\n"
        method, target = parts[0], parts[1].split("?", 1)[0]
        if target not in ("/healthz", "/readyz", "/metrics"):
            return 404, {"Content-Type": "text/plain"}, b"not found\n"
        if method not in ("GET", "HEAD"):
            return 405, {"Content-Type": "text/plain", "Allow": "GET, HEAD"}, b"GET only\n"
        if target == "/healthz":
            return 200, {"Content-Type": "text/plain"}, b"ok\n"
        if target == "/readyz":
            ready, report = readiness(self.pipeline)
            return (200 if ready else 503), {"Content-Type": "application/json"}, \
                orjson.dumps(report) + b"\n"
        from prometheus_client import generate_latest

        try:
            body = generate_latest(self._registry)
        except Exception:  # a collector bug must not take the endpoint down with it
            log.exception("[http] collecting metrics failed")
            return 500, {"Content-Type": "text/plain"}, b"collecting metrics failed\n"
        return 200, {"Content-Type": METRICS_CONTENT_TYPE}, body
