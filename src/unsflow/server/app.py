"""The HTTP app of ``unsflow serve`` (Starlette): OIP v2, plain REST, health and metrics.

Endpoints (``docs/components/serve.md`` shows examples):

- ``GET /v2/health/live``, ``/healthz``: 200 whenever the event loop answers.
- ``GET /v2/health/ready``, ``/readyz``: 200 when every model asked for is
  loaded, else 503 with the reason.
- ``GET /v2``: server metadata. ``GET /v2/models/{name}[/versions/{v}]``:
  model metadata (``version``: the version served). ``GET .../ready``.
- ``POST /v2/models/{name}[/versions/{v}]/infer``: Open Inference Protocol v2.
- ``POST {rest-prefix}/{name}`` (default ``/api/v1/{name}``): plain REST, the
  ``rest`` protocol of the ``remote`` processor. The v2 paths are served under
  ``{rest-prefix}`` too, so a ``remote`` processor whose ``base-url`` ends in
  ``/api/v1`` works with either protocol.
- ``GET /metrics``: Prometheus.

Errors are ``{"error": "..."}``: 400 for a request the model cannot take,
404 for an unknown model or version, 503 while not ready. Inference runs in
a thread pool, so health checks answer while a model computes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from unsflow.errors import ProtocolError
from unsflow.server.protocol import (
    encode_infer_response,
    encode_rest_response,
    model_metadata,
    parse_infer_request,
    parse_rest_request,
)
from unsflow.server.repository import ModelRepository, Swap

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from unsflow.ml.store import OnnxModel

__all__ = ["ServeConfig", "ServerMetrics", "create_app"]

log = logging.getLogger("unsflow.server")

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_BODY_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ServeConfig:
    """What ``unsflow serve`` is told: where the models are and how to serve them."""

    store: str = "models"
    store_options: dict[str, str] = field(default_factory=dict)
    models: list[str] | None = None  # None: every model in the store
    host: str = "0.0.0.0"
    port: int = 8000
    poll_interval: float = 10.0  # seconds between store checks for new versions; 0: never
    rest_prefix: str = "/api/v1"
    input_field: str = "window"  # REST: record field holding the model input
    workers: int = 2  # inference threads
    # A call whose measured cost (per model and batch size) is below this runs on the event
    # loop: the hand-off to a thread costs more than such a call (see _Costs). 0: always a thread.
    inline_max_ms: float = 0.5
    threads: int = 1  # onnxruntime intra-op threads per inference
    keep_versions: int = 2  # earlier versions kept loaded for versioned paths


class ServerMetrics:
    """The server's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("unsflow_serve_requests_total",
                                "Inference requests, by model and protocol (v2, rest).",
                                ("model", "protocol"), registry=r)
        self.errors = Counter("unsflow_serve_errors_total",
                              "Inference requests answered with an error, by HTTP status.",
                              ("model", "protocol", "status"), registry=r)
        self.rows = Counter("unsflow_serve_rows_total", "Rows (input vectors) predicted.",
                            ("model",), registry=r)
        self.latency = Histogram(
            "unsflow_serve_request_seconds", "Inference request time, body read to answer.",
            ("protocol",), registry=r,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        self.version = Gauge("unsflow_serve_model_version", "Model version served.",
                             ("model",), registry=r)
        self.swaps = Counter("unsflow_serve_model_swaps_total",
                             "New model versions swapped in (the first load included).",
                             ("model",), registry=r)
        self.load_errors = Counter("unsflow_serve_model_load_errors_total",
                                   "Store listings or model loads that failed.", registry=r)

    def swapped(self, swap: Swap) -> None:
        self.version.labels(swap.name).set(swap.new)
        self.swaps.labels(swap.name).inc()


def _json(body: Any, status: int = 200) -> Response:
    from starlette.responses import Response

    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


class _Server:
    """The handlers; one per app."""

    def __init__(self, config: ServeConfig, repository: ModelRepository,
                 metrics: ServerMetrics) -> None:
        self.config = config
        self.repo = repository
        self.metrics = metrics
        self.executor = ThreadPoolExecutor(config.workers, thread_name_prefix="unsflow-infer")
        self.costs = _Costs(config.inline_max_ms / 1000)

    async def _body(self, request: Request) -> Any:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            raise ProtocolError(413, f"request body over {MAX_BODY_BYTES} bytes")
        raw = await request.body()
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ProtocolError(400, f"the request body is not JSON: {exc}") from None

    async def _model(self, request: Request) -> OnnxModel:
        name = request.path_params["name"]
        version = request.path_params.get("version")
        if version is None:
            return self.repo.get(name)
        if not version.isdigit() or int(version) < 1:
            raise ProtocolError(404, f"model {name!r} has no version {version!r} "
                                     "(versions are positive integers)")
        return await self.repo.get_version(name, int(version))

    async def _predict(self, model: OnnxModel, rows: Any) -> dict[str, Any]:
        key = (model.name, model.version, len(rows).bit_length())
        try:
            if self.costs.cheap(key):
                start = time.perf_counter()
                results = model.predict(rows)
                self.costs.observe(key, time.perf_counter() - start)
                return results
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.executor, self._timed_predict, key, model,
                                              rows)
        except ValueError as exc:
            raise ProtocolError(400, str(exc)) from exc

    def _timed_predict(self, key: tuple[str, int, int], model: OnnxModel,
                       rows: Any) -> dict[str, Any]:
        start = time.perf_counter()
        results = model.predict(rows)
        self.costs.observe(key, time.perf_counter() - start)
        return results

    # -- inference -------------------------------------------------------------

    async def infer(self, request: Request) -> Response:
        return await self._timed(request, "v2", self._infer_v2)

    async def rest(self, request: Request) -> Response:
        return await self._timed(request, "rest", self._infer_rest)

    async def _timed(self, request: Request, protocol: str, handler: Any) -> Response:
        start = time.perf_counter()
        name = request.path_params["name"]
        label = name if name in self.repo.served else "unknown"
        self.metrics.requests.labels(label, protocol).inc()
        try:
            response: Response = await handler(request)
        except ProtocolError as exc:
            self.metrics.errors.labels(label, protocol, str(exc.status)).inc()
            response = _error(exc.status, exc.message)
        except Exception as exc:  # a bug or an onnxruntime failure: answer, log, count
            log.exception("[serve] %s %s failed", request.method, request.url.path)
            self.metrics.errors.labels(label, protocol, "500").inc()
            response = _error(500, f"inference failed: {type(exc).__name__}: {exc}")
        self.metrics.latency.labels(protocol).observe(time.perf_counter() - start)
        return response

    async def _infer_v2(self, request: Request) -> Response:
        model = await self._model(request)  # held for the whole request: swaps do not touch it
        meta = _metadata(model)
        parsed = parse_infer_request(await self._body(request), model.name, meta)
        results = await self._predict(model, parsed.rows)
        self.metrics.rows.labels(model.name).inc(len(parsed.rows))
        return _json(encode_infer_response(model.name, model.version, parsed, results, meta))

    async def _infer_rest(self, request: Request) -> Response:
        model = await self._model(request)
        meta = _metadata(model)
        rows, batched = parse_rest_request(await self._body(request), model.name, meta,
                                           self.config.input_field)
        results = await self._predict(model, rows)
        self.metrics.rows.labels(model.name).inc(len(rows))
        return _json(encode_rest_response(model.name, model.version, results, meta, batched))

    # -- metadata and health ---------------------------------------------------

    async def model_metadata(self, request: Request) -> Response:
        try:
            model = await self._model(request)
        except ProtocolError as exc:
            return _error(exc.status, exc.message)
        name = model.name
        return _json(model_metadata(name, _metadata(model), self.repo.versions(name),
                                    model.version))

    async def model_ready(self, request: Request) -> Response:
        try:
            model = await self._model(request)
        except ProtocolError as exc:
            return _error(exc.status, exc.message)
        return _json({"name": model.name, "version": str(model.version), "ready": True})

    async def server_metadata(self, request: Request) -> Response:
        from importlib.metadata import PackageNotFoundError, version

        try:
            ours = version("unsflow")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            ours = "0"
        return _json({"name": "unsflow", "version": ours, "extensions": []})

    async def live(self, request: Request) -> Response:
        return _json({"live": True})

    async def ready(self, request: Request) -> Response:
        ok, reason = self.repo.ready()
        body = {"ready": ok, "models": self.repo.served}
        if not ok:
            body["reason"] = reason
        return _json(body, 200 if ok else 503)

    async def prometheus(self, request: Request) -> Response:
        from prometheus_client import generate_latest
        from starlette.responses import Response

        return Response(generate_latest(self.metrics.registry),
                        media_type=METRICS_CONTENT_TYPE)


class _Costs:
    """Measured seconds of a predict call, per model version and batch-size class.

    Why: on 2 cores, handing a call of ~20 us (a 100-tree forest, one row) to a worker thread
    costs about 0.3 ms of CPU per request (thread wake-ups, the GIL going back and forth),
    a third of what the whole request costs (benchmarks/inference_remote.py). Calls measured
    below ``limit`` run on the event loop; anything slower, or not measured 3 times yet, runs
    in a thread, so the loop is never held longer than ``limit`` and health checks answer
    during a long inference. Thread timings include waiting for the GIL, so they err towards
    the thread. An exponential average, so a model that gets slower moves back to the thread.
    """

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self._seen: dict[tuple[str, int, int], tuple[int, float]] = {}

    def cheap(self, key: tuple[str, int, int]) -> bool:
        count, mean = self._seen.get(key, (0, 0.0))
        return count >= 3 and mean < self.limit

    def observe(self, key: tuple[str, int, int], seconds: float) -> None:
        count, mean = self._seen.get(key, (0, seconds))
        self._seen[key] = (count + 1, mean + 0.2 * (seconds - mean))
        if len(self._seen) > 4096:  # old model versions: start over rather than grow
            self._seen.clear()


def _metadata(model: OnnxModel) -> dict[str, Any]:
    """metadata.json with the session's own inputs and outputs (the truth of the graph)."""
    return {**model.metadata, "inputs": model.inputs, "outputs": model.outputs}


def create_app(config: ServeConfig, repository: ModelRepository | None = None,
               metrics: ServerMetrics | None = None) -> Starlette:
    """The ASGI app. Its lifespan loads the models and polls the store for new versions."""
    try:
        from starlette.applications import Starlette
        from starlette.routing import Route
    except ImportError as exc:
        from unsflow.errors import MissingDependency

        raise MissingDependency("starlette", "serve") from exc
    metrics = metrics or ServerMetrics()
    if repository is None:
        from unsflow.ml.store import ModelStore

        repository = ModelRepository(
            ModelStore(config.store, config.store_options or None), config.models,
            keep=config.keep_versions, threads=config.threads, on_swap=metrics.swapped,
            on_error=lambda _: metrics.load_errors.inc())
    server = _Server(config, repository, metrics)

    def v2_routes(prefix: str) -> list[Route]:
        m = f"{prefix}/v2/models/{{name}}"
        mv = f"{m}/versions/{{version}}"
        return [
            Route(f"{prefix}/v2", server.server_metadata, methods=["GET"]),
            Route(f"{prefix}/v2/health/live", server.live, methods=["GET"]),
            Route(f"{prefix}/v2/health/ready", server.ready, methods=["GET"]),
            Route(m, server.model_metadata, methods=["GET"]),
            Route(mv, server.model_metadata, methods=["GET"]),
            Route(f"{m}/ready", server.model_ready, methods=["GET"]),
            Route(f"{mv}/ready", server.model_ready, methods=["GET"]),
            Route(f"{m}/infer", server.infer, methods=["POST"]),
            Route(f"{mv}/infer", server.infer, methods=["POST"]),
        ]

    prefix = config.rest_prefix.strip("/")
    prefix = f"/{prefix}" if prefix else ""
    routes = [
        Route("/healthz", server.live, methods=["GET"]),
        Route("/readyz", server.ready, methods=["GET"]),
        Route("/metrics", server.prometheus, methods=["GET"]),
        *v2_routes(""),
        *(v2_routes(prefix) if prefix else []),
        Route(f"{prefix}/{{name}}", server.rest, methods=["POST"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await repository.refresh()
        ok, reason = repository.ready()
        log.info("[serve] models from %s: %s%s", repository.store.url,
                 repository.served or "none yet", "" if ok else f" ({reason})")
        poller = None
        if config.poll_interval > 0:
            poller = asyncio.create_task(repository.poll(config.poll_interval),
                                         name="serve:poll-store")
        try:
            yield
        finally:
            if poller is not None:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
            server.executor.shutdown(wait=True)

    app = Starlette(routes=routes, lifespan=lifespan)

    async def not_found(request: Request, exc: Exception) -> Response:
        return _error(404, f"no such endpoint: {request.method} {request.url.path}")

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return _error(405, f"method {request.method} not allowed on {request.url.path}")

    app.add_exception_handler(404, not_found)
    app.add_exception_handler(405, not_allowed)
    app.state.repository = repository
    app.state.metrics = metrics
    return app
