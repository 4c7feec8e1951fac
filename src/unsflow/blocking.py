"""Blocking library calls that may hang, made cancellable.

``asyncio.to_thread`` runs a call in the loop's default executor: cancelling
the await leaves the thread running, and at exit ``asyncio.run`` waits for it.
A blocking network call in a library without cancellation (boto3 fetching a
secret from an endpoint that accepts and never answers, librdkafka waiting
for a cluster) would then hold a stopping process for as long as its own
timeouts and retries take, past a pod's termination grace period.

:func:`run_blocking` runs such a call in a daemon thread of its own: awaiting
it is cancellable at once, the call's late result is dropped, and the
process may exit while the call is still stuck.

>>> import asyncio, time
>>> asyncio.run(run_blocking(lambda: 6 * 7, name="answer"))
42
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["run_blocking"]

T = TypeVar("T")


async def run_blocking(fn: Callable[..., T], *args: Any, name: str = "blocking") -> T:
    """``fn(*args)`` in a daemon thread; cancelling the await abandons the call."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if future.done():  # cancelled meanwhile: nobody wants the result
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def work() -> None:
        try:
            result: Any = fn(*args)
            ok = True
        except BaseException as exc:  # handed to the awaiting task, raised there
            result, ok = exc, False
        try:
            loop.call_soon_threadsafe(settle, ok, result)
        except RuntimeError:  # the loop is closed: the process is stopping
            pass

    threading.Thread(target=work, name=name, daemon=True).start()
    return await future
