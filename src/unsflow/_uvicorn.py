"""Serving an ASGI app until SIGINT or SIGTERM: ``unsflow serve`` and ``unsflow dashboard``.

uvicorn re-raises SIGTERM after its graceful shutdown (the process then exits
with status -15); a clean stop of an unsflow command exits 0, as ``unsflow run``
does. :func:`serve_app` keeps uvicorn's graceful shutdown and drops the re-raise.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from typing import Any

from unsflow._deps import require

__all__ = ["serve_app"]


def serve_app(app: Any, host: str, port: int, *, extra: str, graceful_seconds: float,
              on_stop: Callable[[], None] | None = None,
              on_started: Callable[[], None] | None = None) -> None:
    """Run ``app`` until SIGINT or SIGTERM; ``on_stop()`` when one arrives (before the
    graceful shutdown), ``on_started()`` once listening. Exits 1 when it could not start
    (uvicorn logs why: the port is taken, the app's start-up failed). ``extra`` names the
    install extra that brings uvicorn."""
    uvicorn = require("uvicorn", extra)

    class Server(uvicorn.Server):  # type: ignore[misc]
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            previous = {sig: signal.signal(sig, self.handle_exit)
                        for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

        def handle_exit(self, sig: int, frame: Any) -> None:
            if on_stop is not None:
                on_stop()
            super().handle_exit(sig, frame)

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started and on_started is not None:
                on_started()

    server = Server(uvicorn.Config(app, host=host, port=port, access_log=False,
                                   log_config=None, lifespan="on",
                                   timeout_graceful_shutdown=graceful_seconds))
    server.run()
    if not server.started:
        raise SystemExit(1)
