"""``unsflow serve``: an inference server for the models of a ModelStore.

It speaks the KServe Open Inference Protocol v2 over REST and the plain REST
shape of the ``remote`` processor, and swaps in new model versions as they
appear in the store (see :mod:`unsflow.server.repository`). Starlette and
uvicorn (extra ``serve``) are imported only when a server is built.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import TYPE_CHECKING

from unsflow.errors import MissingDependency

if TYPE_CHECKING:
    from unsflow.server.app import ServeConfig

__all__ = ["run_server"]


def run_server(config: ServeConfig) -> None:
    """Serve until SIGINT or SIGTERM (uvicorn's graceful shutdown: requests in flight finish)."""
    try:
        import uvicorn
    except ImportError as exc:
        raise MissingDependency("uvicorn", "serve") from exc
    from unsflow.server.app import create_app

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn re-raises SIGTERM after its graceful shutdown (exit status -15); a
            # clean stop of `unsflow serve` exits 0, as `unsflow run` does.
            previous = {sig: signal.signal(sig, self.handle_exit)
                        for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    app = create_app(config)
    server = Server(uvicorn.Config(
        app, host=config.host, port=config.port, access_log=False, log_config=None,
        lifespan="on", timeout_graceful_shutdown=30))
    server.run()
    if not server.started:
        # uvicorn logs why (port in use, a model store that cannot be read) and returns.
        raise SystemExit(1)
