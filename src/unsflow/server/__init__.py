"""``unsflow serve``: an inference server for the models of a ModelStore.

It speaks the KServe Open Inference Protocol v2 over REST and the plain REST
shape of the ``remote`` processor, and swaps in new model versions as they
appear in the store (see :mod:`unsflow.server.repository`). Starlette and
uvicorn (extra ``serve``) are imported only when a server is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from unsflow.server.app import ServeConfig

__all__ = ["run_server"]


def run_server(config: ServeConfig) -> None:
    """Serve until SIGINT or SIGTERM (uvicorn's graceful shutdown: requests in flight finish)."""
    from unsflow._uvicorn import serve_app
    from unsflow.server.app import create_app

    serve_app(create_app(config), config.host, config.port, extra="serve", graceful_seconds=30)
