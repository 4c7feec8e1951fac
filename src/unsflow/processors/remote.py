"""remote: enrich records with the answer of an inference service over HTTP.

Contract:

- ``protocol: rest`` POSTs each message's record as JSON to
  ``{base-url}/{processor-id}``; ``protocol: v2`` (KServe Open Inference
  Protocol) POSTs up to ``max-batch`` rows per request to
  ``{base-url}/v2/models/{processor-id}/infer``. An output is
  ``message.derive(record={**record, output-field: answer})``; a record that is
  not an object is seen as ``{"value": record}``. Outputs keep input order.
- At most ``max-concurrency`` requests are in flight per processor, however
  many batches the engine hands over at once.
- 5xx, 408, 429, connect errors and timeouts are retried ``retries`` times
  (capped exponential backoff, full jitter); when they persist the whole batch
  raises :class:`~unsflow.errors.TransientError` and nothing of it counts as
  done: the engine retries it later and holds its acknowledgement.
- What no retry can fix is a :class:`~unsflow.message.Failure` of that message
  only: an undecodable payload, a v2 input that is not numbers, a 4xx (with the
  service's error text), a 2xx whose body is not the expected shape. A 4xx for
  a batched v2 request re-sends that chunk one row per request, so the one bad
  row fails and the others succeed.
- httpx is imported in ``start`` (extra ``http``); no httpx exception escapes.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote, urlsplit

import orjson
from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError

from unsflow._deps import require
from unsflow.codecs import decode_json
from unsflow.config.models import ProcessorConfig
from unsflow.errors import (
    DecodeError,
    NotConnected,
    PermanentError,
    TransientError,
    UnsflowError,
)
from unsflow.message import NOT_DECODED, Failure, Message
from unsflow.processors.base import Processor, ProcessResult

if TYPE_CHECKING:
    import httpx

__all__ = ["RemoteProcessor", "RemoteProcessorConfig"]

V2Datatype = Literal["FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64",
                     "UINT8", "UINT16", "UINT32", "UINT64"]
_RETRY_STATUS = frozenset({408, 429})
_Row = tuple[int, dict[str, Any], list[float]]  # (position in batch, record, model input row)


class RemoteProcessorConfig(ProcessorConfig):
    """Call an inference service over HTTP (REST or Open Inference Protocol v2)."""

    type: Literal["remote"] = Field(description="Processor type: remote.")
    base_url: str = Field(description="Service URL, e.g. http://edge-processor:8000/api/v1.")
    processor_id: str = Field(min_length=1, description="Model or processor name on the service.")
    protocol: Literal["rest", "v2"] = Field(
        "rest", description="rest: one JSON record per request; v2: KServe Open Inference v2."
    )
    timeout: float = Field(10.0, gt=0, description="Seconds to connect, send or read a request.")
    max_concurrency: int = Field(8, ge=1, le=1024, description="Most requests in flight at once.")
    retries: int = Field(3, ge=0, le=20, description="Retries of a 5xx, timeout or connect error.")
    backoff_initial: float = Field(0.2, gt=0, description="First retry delay cap, seconds.")
    backoff_max: float = Field(5.0, gt=0, description="Retry delay cap, seconds.")
    headers: dict[str, str] = Field(
        default_factory=dict, description="Extra HTTP headers sent with every request."
    )
    output_field: str = Field(
        "inference", min_length=1, description="Record key that receives the service's answer."
    )
    input_field: str = Field(
        "value", min_length=1, description="v2: record key holding a number or a list of numbers."
    )
    input_name: str = Field("input", min_length=1, description="v2: name of the model input.")
    datatype: V2Datatype = Field("FP32", description="v2: datatype of the model input.")
    max_batch: int = Field(64, ge=1, le=100000, description="v2: most rows in one request.")

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise PydanticCustomError("http_url", "an http:// or https:// URL")
        return value.rstrip("/")


class RemoteProcessor(Processor[RemoteProcessorConfig]):
    """Enriches records with a remote model's answer; see the module contract."""

    config_class = RemoteProcessorConfig
    ordering = "concurrent"  # stateless: batches may overlap

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._client: httpx.AsyncClient | None = None
        self._slots: asyncio.Semaphore | None = None
        self.requests = 0  # HTTP requests sent, retries included
        self.retried = 0

    @property
    def url(self) -> str:
        cfg = self.config
        model = quote(cfg.processor_id, safe="")
        if cfg.protocol == "v2":
            return f"{cfg.base_url}/v2/models/{model}/infer"
        return f"{cfg.base_url}/{model}"

    async def start(self) -> None:
        httpx = _import_httpx()
        cfg = self.config
        try:
            httpx.URL(self.url)
        except httpx.InvalidURL as exc:
            raise PermanentError(f"invalid URL {self.url!r}: {exc}", component_id=self.id) from exc
        self._slots = asyncio.Semaphore(cfg.max_concurrency)
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(cfg.timeout),
            headers={"content-type": "application/json", **cfg.headers},
            limits=httpx.Limits(max_connections=cfg.max_concurrency,
                                max_keepalive_connections=cfg.max_concurrency),
            # Components take nothing from os.environ (proxies, netrc): the context owns it.
            trust_env=False,
        )

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def process(self, batch: list[Message]) -> ProcessResult:
        if self._client is None:
            raise NotConnected("process() before start()", component_id=self.id)
        results: list[Message | Failure | None] = [None] * len(batch)
        records: list[tuple[int, Any]] = []
        for i, msg in enumerate(batch):
            try:
                records.append((i, _record_of(msg)))
            except DecodeError as exc:
                results[i] = Failure(msg, str(exc), self.stage)
        if self.config.protocol == "v2":
            jobs = self._v2_jobs(batch, records, results)
        else:
            jobs = [self._rest_job(batch[i], i, rec, results) for i, rec in records]
        await self._run_bounded(jobs)
        outputs = [r for r in results if isinstance(r, Message)]
        failures = [r for r in results if isinstance(r, Failure)]
        return outputs, failures

    # -- rest ---------------------------------------------------------------

    def _rest_job(self, msg: Message, i: int, record: Any,
                  results: list[Any]) -> Callable[[], Awaitable[None]]:
        async def job() -> None:
            try:
                request = orjson.dumps(record)
            except orjson.JSONEncodeError as exc:
                results[i] = Failure(msg, f"record cannot be sent as JSON: {exc}", self.stage)
                return
            status, body = await self._post(request)
            if not 200 <= status < 300:
                results[i] = Failure(msg, _status_reason(status, body), self.stage)
                return
            try:
                answer = _parse_answer(body)
            except _BadAnswer as exc:
                results[i] = Failure(msg, f"HTTP {status}: {exc}", self.stage)
                return
            results[i] = msg.derive(record={**_as_object(record), self.config.output_field: answer})
        return job

    # -- v2 -----------------------------------------------------------------

    def _v2_jobs(self, batch: list[Message], records: list[tuple[int, Any]],
                 results: list[Any]) -> list[Callable[[], Awaitable[None]]]:
        by_width: dict[int, list[_Row]] = {}
        integers = self.config.datatype.startswith(("INT", "UINT"))
        for i, raw in records:
            record = _as_object(raw)
            try:
                row = _input_row(record, self.config.input_field, integers)
            except ValueError as exc:
                results[i] = Failure(batch[i], str(exc), self.stage)
                continue
            by_width.setdefault(len(row), []).append((i, record, row))
        size = self.config.max_batch
        return [self._v2_job(batch, rows[start:start + size], results)
                for rows in by_width.values() for start in range(0, len(rows), size)]

    def _v2_job(self, batch: list[Message], chunk: list[_Row],
                results: list[Any]) -> Callable[[], Awaitable[None]]:
        async def job() -> None:
            cfg = self.config
            body = _encode_request(cfg.input_name, cfg.datatype, [row for _, _, row in chunk])
            status, answer = await self._post(body)
            if not 200 <= status < 300:
                if len(chunk) > 1:
                    # Which row did the service reject? Ask one row at a time.
                    await self._run_bounded([self._v2_job(batch, [row], results) for row in chunk])
                    return
                i = chunk[0][0]
                results[i] = Failure(batch[i], _status_reason(status, answer), self.stage)
                return
            try:
                outputs = _split_outputs(answer, len(chunk))
            except _BadAnswer as exc:
                for i, _, _ in chunk:
                    results[i] = Failure(batch[i], f"HTTP {status}: {exc}", self.stage)
                return
            for (i, record, _), out in zip(chunk, outputs, strict=True):
                results[i] = batch[i].derive(record={**record, cfg.output_field: out})
        return job

    # -- HTTP ---------------------------------------------------------------

    async def _run_bounded(self, jobs: list[Callable[[], Awaitable[None]]]) -> None:
        """Run ``jobs`` on at most max-concurrency workers; the first error of ours wins."""
        if not jobs:
            return
        pending = iter(jobs)

        async def worker() -> None:
            for job in pending:
                await job()

        try:
            async with asyncio.TaskGroup() as group:
                for n in range(min(self.config.max_concurrency, len(jobs))):
                    group.create_task(worker(), name=f"{self.stage}:worker-{n}")
        except* UnsflowError as errors:
            first = errors.exceptions[0]
            raise first from first.__cause__  # the httpx error, not the group

    async def _post(self, body: bytes) -> tuple[int, bytes]:
        """POST with retries; returns (status, body) of any answer a retry cannot change."""
        httpx = _import_httpx()
        cfg = self.config
        assert self._client is not None and self._slots is not None
        attempt = 0
        while True:
            try:
                async with self._slots:
                    self.requests += 1
                    response = await self._client.post(self.url, content=body)
                status = response.status_code
                if status < 500 and status not in _RETRY_STATUS:
                    return status, response.content
                reason = _status_reason(status, response.content)
                cause: BaseException | None = None
            except httpx.TimeoutException as exc:
                reason, cause = f"no answer within {cfg.timeout} s ({type(exc).__name__})", exc
            except httpx.HTTPError as exc:
                reason, cause = f"{type(exc).__name__}: {exc}", exc
            except (httpx.InvalidURL, httpx.CookieConflict, httpx.StreamError) as exc:
                # Not the service: this request can never be sent as made.
                raise PermanentError(f"POST {self.url}: {type(exc).__name__}: {exc}",
                                     component_id=self.id) from exc
            if attempt >= cfg.retries:
                raise TransientError(
                    f"POST {self.url}: {reason} (after {attempt + 1} attempt(s))",
                    component_id=self.id,
                ) from cause
            # Full jitter: callers that failed together do not retry together.
            delay = random.uniform(0, min(cfg.backoff_max, cfg.backoff_initial * 2 ** attempt))
            attempt += 1
            self.retried += 1
            await asyncio.sleep(delay)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "url": self.url, "protocol": self.config.protocol,
                "requests": self.requests, "retried": self.retried}


class _BadAnswer(ValueError):
    """A 2xx answer that is not what the protocol promises."""


def _import_httpx() -> Any:
    return require("httpx", "http")


def _record_of(msg: Message) -> Any:
    return decode_json(msg.payload) if msg.record is NOT_DECODED else msg.record


def _as_object(record: Any) -> dict[str, Any]:
    return record if isinstance(record, dict) else {"value": record}


def _input_row(record: dict[str, Any], field: str, integers: bool) -> list[float]:
    """The model input of one record as a list of numbers; ValueError says what is wrong."""
    if field not in record:
        raise ValueError(f"record has no input field {field!r}")
    value = record[field]
    row = value if isinstance(value, list) else [value]
    if not row:
        raise ValueError(f"input field {field!r} is an empty list")
    for x in row:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
            raise ValueError(f"input field {field!r} must hold a number or a list of numbers, "
                             f"found {_short(repr(value))}")
        if integers and not isinstance(x, int):
            raise ValueError(f"input field {field!r} must hold integers, "
                             f"found {_short(repr(value))}")
        if isinstance(x, int) and not -(2 ** 63) <= x < 2 ** 64:
            raise ValueError(f"input field {field!r}: {x} does not fit 64 bits")
    return row


def _encode_request(name: str, datatype: str, rows: list[list[float]]) -> bytes:
    """An Open Inference v2 request body for ``rows`` of equal width.

    >>> _encode_request("predict", "FP32", [[1, 2], [3, 4]])
    b'{"inputs":[{"name":"predict","shape":[2,2],"datatype":"FP32","data":[1,2,3,4]}]}'
    """
    data = [x for row in rows for x in row]
    tensor = {"name": name, "shape": [len(rows), len(rows[0])], "datatype": datatype, "data": data}
    return orjson.dumps({"inputs": [tensor]})


def _split_outputs(body: bytes, n: int) -> list[Any]:
    """One output per row from a v2 answer's ``outputs[0]``; _BadAnswer says what is wrong.

    A row of one element becomes a scalar.

    >>> _split_outputs(b'{"outputs":[{"name":"p","shape":[2,1],"data":[1.0,0.0]}]}', 2)
    [1.0, 0.0]
    >>> _split_outputs(b'{"outputs":[{"name":"p","shape":[2,2],"data":[0.9,0.1,0.2,0.8]}]}', 2)
    [[0.9, 0.1], [0.2, 0.8]]
    """
    answer = _parse_answer(body)
    outputs = answer.get("outputs") if isinstance(answer, dict) else None
    if not isinstance(outputs, list) or not outputs or not isinstance(outputs[0], dict):
        raise _BadAnswer(f"expected a v2 answer with a non-empty 'outputs' list, "
                         f"found {_short(answer)}")
    data = outputs[0].get("data")
    if not isinstance(data, list):
        raise _BadAnswer(f"outputs[0] has no 'data' list: {_short(outputs[0])}")
    if len(data) == n and all(isinstance(row, list) for row in data):
        rows = data  # some servers answer nested rows instead of flat row-major data
    elif data and len(data) % n == 0:
        width = len(data) // n
        rows = [data[j:j + width] for j in range(0, len(data), width)]
    else:
        raise _BadAnswer(f"outputs[0] holds {len(data)} values, expected a multiple of {n} rows")
    shape = outputs[0].get("shape")
    if isinstance(shape, list) and shape and shape[0] != n:
        raise _BadAnswer(f"outputs[0] has shape {shape}, expected {n} rows")
    return [row[0] if len(row) == 1 else row for row in rows]


def _parse_answer(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        snippet = body[:60].decode("utf-8", "replace")
        raise _BadAnswer(f"the answer is not JSON: {snippet!r}" if body
                         else "the answer is empty") from None


def _status_reason(status: int, body: bytes) -> str:
    """``HTTP 400: <the service's error text>``."""
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
    else:
        detail = None
        if isinstance(answer, dict):
            detail = next((answer[k] for k in ("error", "detail", "message") if k in answer), None)
        text = str(detail if detail is not None else answer)
    return f"HTTP {status}: {_short(text, 300)}" if text else f"HTTP {status}"


def _short(value: Any, limit: int = 80) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
