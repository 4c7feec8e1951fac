"""The dashboard's HTTP app (Starlette): four pages, their event streams, the lake API.

Routes:

- ``GET /``, ``/uns``, ``/pipeline``, ``/lake``: the pages (one HTML file;
  ``static/app.js`` draws the page its path names).
- ``GET /static/...``: the page's script and styles and the vendored uPlot,
  all from the installed package.
- ``GET /api/events?page=line|uns|pipeline[&filter=TEXT]``: server-sent
  events, a snapshot first, then updates (:mod:`unsflow.dashboard.hub`).
- ``GET /api/lake``: every lake's partitions and objects with row counts;
  ``GET /api/lake/preview?lake=N&path=REL[&limit=50]``: rows and the DuckDB
  query for an object or a partition.
- ``GET /api/state``: the same data as JSON, for scripts.
- ``GET /healthz``: ``ok`` (never needs the token: it tells nothing).

Access (:class:`AccessGate`): with a token (``--token`` or
``UNSFLOW_DASHBOARD_TOKEN``; required when the dashboard listens on anything
but loopback), every other request needs it, as ``Authorization: Bearer
TOKEN``, as the cookie the dashboard sets, or once as ``?token=TOKEN`` (the
answer sets the cookie and redirects to the same URL without it); anything
else gets 401. Without a token, only requests addressed to a loopback host
name are served, so a web page cannot reach the dashboard through DNS
rebinding. Every answer carries a Content-Security-Policy that allows this
origin only: a page cannot load anything from elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

import orjson

from unsflow.dashboard.hub import PAGES, Hub, running
from unsflow.errors import DashboardError

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from unsflow.dashboard.lake import Lake

__all__ = ["COOKIE", "STATIC_DIR", "AccessGate", "create_app"]

log = logging.getLogger("unsflow.dashboard")

STATIC_DIR = Path(__file__).resolve().parent / "static"
COOKIE = "unsflow_dashboard"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; font-src 'self'; connect-src 'self'; object-src 'none'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
_LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1", "[::1]"}


def _host_name(host_header: str) -> str:
    if host_header.startswith("["):
        return host_header.split("]", 1)[0] + "]"
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


class AccessGate:
    """ASGI middleware: the token check, the loopback host check, the security headers."""

    def __init__(self, app: Any, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []),
                                                  *SECURITY_HEADERS]}
            await send(message)

        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        path = scope.get("path", "")
        if path == "/healthz":
            await self.app(scope, receive, send_with_headers)
            return
        if self.token is None:
            if _host_name(headers.get("host", "")) not in _LOOPBACK_NAMES:
                await self._plain(send_with_headers, 403, "this dashboard answers requests to "
                                  "127.0.0.1 or localhost only (start it with --token to serve "
                                  "other names)")
                return
            await self.app(scope, receive, send_with_headers)
            return
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"),
                          keep_blank_values=True)
        given = dict(query).get("token")
        if given is not None and self._ok(given):
            rest = urlencode([(k, v) for k, v in query if k != "token"])
            location = path + (f"?{rest}" if rest else "")
            await send_with_headers({"type": "http.response.start", "status": 303, "headers": [
                (b"location", location.encode("latin-1")),
                (b"set-cookie", f"{COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
                 .encode("latin-1")),
                (b"cache-control", b"no-store"), (b"content-length", b"0")]})
            await send_with_headers({"type": "http.response.body", "body": b""})
            return
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer ") and self._ok(auth[7:].strip()):
            await self.app(scope, receive, send_with_headers)
            return
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and self._ok(value):
                await self.app(scope, receive, send_with_headers)
                return
        await self._plain(send_with_headers, 401, "401: this dashboard needs its access token "
                          "(open the URL with ?token=TOKEN, or send Authorization: Bearer "
                          "TOKEN)", [(b"www-authenticate", b'Bearer realm="unsflow dashboard"')])

    def _ok(self, given: str) -> bool:
        assert self.token is not None
        return hmac.compare_digest(given.encode(), self.token.encode())

    @staticmethod
    async def _plain(send: Any, status: int, text: str,
                     extra: list[tuple[bytes, bytes]] | None = None) -> None:
        body = text.encode() + b"\n"
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()), *(extra or [])]})
        await send({"type": "http.response.body", "body": body})


def _json(data: Any, status: int = 200) -> Response:
    from starlette.responses import Response

    return Response(orjson.dumps(data), status_code=status, media_type="application/json",
                    headers={"Cache-Control": "no-store"})


def create_app(hub: Hub, lakes: list[Lake], token: str | None,
               on_startup: Any = None, on_shutdown: Any = None) -> Starlette:
    """The Starlette app serving ``hub``'s pages and ``lakes``."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse, Response, StreamingResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    index = (STATIC_DIR / "index.html").read_bytes()

    async def page(request: Request) -> Response:
        return Response(index, media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-store"})

    async def events(request: Request) -> Response:
        name = request.query_params.get("page", "line")
        if name not in PAGES:
            return _json({"error": f"page: one of {', '.join(PAGES)}"}, 400)
        client = hub.subscribe(name, request.query_params.get("filter", ""))
        return StreamingResponse(hub.stream(client), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store",
                                          "X-Accel-Buffering": "no"})

    def _lake(request: Request) -> Lake:
        try:
            index_ = int(request.query_params.get("lake", "0"))
            return lakes[index_]
        except (ValueError, IndexError):
            raise DashboardError(f"lake: a number below {len(lakes)}") from None

    async def lake_listing(request: Request) -> Response:
        listings = await asyncio.to_thread(lambda: [lake.listing() for lake in lakes])
        return _json({"lakes": listings})

    async def lake_preview(request: Request) -> Response:
        try:
            lake = _lake(request)
            limit = int(request.query_params.get("limit", "50"))
            data = await asyncio.to_thread(lake.preview, request.query_params.get("path", ""),
                                           limit)
        except DashboardError as exc:
            return _json({"error": str(exc)}, exc.status)
        except ValueError:
            return _json({"error": "limit: a number"}, 400)
        return _json(data)

    async def state(request: Request) -> Response:
        return _json({"status": hub.broker_status(), "line": hub.view.line_snapshot(),
                      "topics": hub.view.topic_rows(limit=2000), "pipelines": hub.pipelines})

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if on_startup is not None:
            await on_startup()
        try:
            async with running(hub):
                yield
        finally:
            if on_shutdown is not None:
                await on_shutdown()

    routes = [
        Route("/", page), Route("/uns", page), Route("/pipeline", page), Route("/lake", page),
        Route("/api/events", events), Route("/api/lake", lake_listing),
        Route("/api/lake/preview", lake_preview), Route("/api/state", state),
        Route("/healthz", healthz),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.hub = hub
    return AccessGate(app, token)  # type: ignore[return-value]
