"""remote: against a real HTTP inference server (REST and Open Inference v2) with faults.

The server is the standard library's ThreadingHTTPServer on 127.0.0.1, port 0.
Its model: 1.0 when any input value is above 20, else 0.0; a negative value is
rejected with 400 {"error": ...}. Faults are programmed per test: 5xx/429 for
the first requests, a delay beyond the client's timeout, a garbage 200 answer.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import orjson
import pytest
from pydantic import ValidationError

from unsflow.components import Context
from unsflow.errors import MissingDependency, TransientError
from unsflow.message import Message
from unsflow.processors.remote import RemoteProcessor, RemoteProcessorConfig

pytestmark = pytest.mark.integration

TOPIC = "com1/plant1/area2/pump-1/Message1"


@dataclass
class Seen:
    path: str
    body: Any
    headers: dict[str, str]


class InferenceServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        self.seen: list[Seen] = []
        self.fail_with: list[int] = []  # statuses answered to the next requests, in order
        self.delay = 0.0
        self.garbage: bytes | None = None
        self.in_flight = 0
        self.peak = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out closed the socket we answer on; expected here

    def shapes(self) -> list[list[int]]:
        return [s.body["inputs"][0]["shape"] for s in self.seen]


def _model(model: str, rows: list[list[float]]) -> tuple[int, Any]:
    if any(v < 0 for row in rows for v in row):
        return 400, {"error": "negative value in input data"}
    anomaly = [1.0 if any(v > 20 for v in row) else 0.0 for row in rows]
    if model == "anomaly":
        data = anomaly
    elif model == "proba":
        data = [x for a in anomaly for x in (a, 1.0 - a)]
    elif model == "short":
        data = anomaly[:-1]
    else:
        return 404, {"error": f"model {model} not found"}
    return 200, {"model_name": model, "outputs": [
        {"name": "predict", "datatype": "FP32", "shape": [len(rows), len(data) // len(rows)],
         "data": data}]}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: InferenceServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        srv = self.server
        raw = self.rfile.read(int(self.headers.get("content-length", 0)))
        with srv.lock:
            srv.seen.append(Seen(self.path, orjson.loads(raw), dict(self.headers)))
            fault = srv.fail_with.pop(0) if srv.fail_with else None
            srv.in_flight += 1
            srv.peak = max(srv.peak, srv.in_flight)
        try:
            status, answer = self._answer(fault, orjson.loads(raw))
        finally:
            with srv.lock:
                srv.in_flight -= 1
        body = answer if isinstance(answer, bytes) else orjson.dumps(answer)
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _answer(self, fault: int | None, request: Any) -> tuple[int, Any]:
        srv = self.server
        if fault is not None:
            return fault, {"error": "model worker busy"}
        if srv.delay:
            time.sleep(srv.delay)
        if srv.garbage is not None:
            return 200, srv.garbage
        parts = self.path.strip("/").split("/")
        if parts[:2] == ["api", "v1"] and len(parts) == 3:
            value: float = request["value"] if isinstance(request, dict) else request
            if parts[2] != "anomaly-rest":
                return 404, {"detail": f"processor {parts[2]} not found"}
            if value < 0:
                return 400, {"error": f"negative value {value}"}
            return 200, {"anomaly": int(value > 20)}
        if parts[:2] == ["v2", "models"] and parts[-1] == "infer":
            tensor = request["inputs"][0]
            n, k = tensor["shape"]
            data = tensor["data"]
            if len(data) != n * k:
                return 400, {"error": "data does not match shape"}
            return _model(parts[2], [data[i * k:(i + 1) * k] for i in range(n)])
        return 404, b"no route"


@pytest.fixture
def server() -> Iterator[InferenceServer]:
    srv = InferenceServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                              name="inference-server", daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


@asynccontextmanager
async def remote(**config: Any) -> AsyncIterator[RemoteProcessor]:
    cfg = RemoteProcessorConfig.model_validate(
        {"type": "remote", "backoff-initial": 0.01, "backoff-max": 0.05, **config})
    p = RemoteProcessor("edge-inference", cfg, Context(env={}))
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


def msg(payload: bytes | Any) -> Message:
    data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return Message(topic=TOPIC, payload=data, received_at=time.time())


def rest(server: InferenceServer, **extra: Any) -> dict[str, Any]:
    return {"base-url": f"{server.base}/api/v1", "processor-id": "anomaly-rest", **extra}


def v2(server: InferenceServer, model: str = "anomaly", /, **extra: Any) -> dict[str, Any]:
    return {"base-url": server.base, "processor-id": model, "protocol": "v2", **extra}


# -- rest -------------------------------------------------------------------


async def test_rest_enriches_each_record(server: InferenceServer) -> None:
    decoded = msg(b"ignored")
    decoded.record = {"machineId": "m1", "value": 30}
    batch = [msg({"value": 12.5, "deviceId": "pump-1"}), decoded, msg(b"25.5"), msg(b"{oops")]
    async with remote(**rest(server, headers={"authorization": "Bearer t0k"})) as p:
        outputs, failures = await p.process(batch)
    assert [o.record for o in outputs] == [
        {"value": 12.5, "deviceId": "pump-1", "inference": {"anomaly": 0}},
        {"machineId": "m1", "value": 30, "inference": {"anomaly": 1}},
        {"value": 25.5, "inference": {"anomaly": 1}},
    ]
    assert outputs[0].payload == batch[0].payload and outputs[0].topic == TOPIC
    assert [f.message for f in failures] == [batch[3]]
    assert failures[0].error.startswith("payload is not valid JSON")
    # the record itself is the body; the reference config's URL layout
    assert sorted((s.path, orjson.dumps(s.body)) for s in server.seen) == sorted([
        ("/api/v1/anomaly-rest", b'{"value":12.5,"deviceId":"pump-1"}'),
        ("/api/v1/anomaly-rest", b'{"machineId":"m1","value":30}'),
        ("/api/v1/anomaly-rest", b"25.5"),
    ])
    assert {s.headers["authorization"] for s in server.seen} == {"Bearer t0k"}


async def test_rest_4xx_fails_that_message_with_the_service_error(
        server: InferenceServer) -> None:
    batch = [msg({"value": 1}), msg({"value": -4}), msg({"value": 40})]
    async with remote(**rest(server, **{"output-field": "anomaly"})) as p:
        outputs, failures = await p.process(batch)
    assert [o.record for o in outputs] == [{"value": 1, "anomaly": {"anomaly": 0}},
                                           {"value": 40, "anomaly": {"anomaly": 1}}]
    assert [(f.message, f.error, f.stage) for f in failures] == [
        (batch[1], "HTTP 400: negative value -4", "processor:edge-inference")]
    assert len(server.seen) == 3  # a 4xx is not retried


async def test_rest_unknown_processor_is_a_failure_not_a_retry(server: InferenceServer) -> None:
    async with remote(**rest(server, **{"processor-id": "nope"})) as p:
        outputs, failures = await p.process([msg({"value": 1})])
    assert outputs == [] and failures[0].error == "HTTP 404: processor nope not found"


async def test_requests_in_flight_stay_within_max_concurrency(server: InferenceServer) -> None:
    server.delay = 0.1
    async with remote(**rest(server, **{"max-concurrency": 2})) as p:
        # two batches at once, as the engine overlaps them: the bound is per processor
        (first, _), (second, _) = await asyncio.gather(
            p.process([msg({"value": v}) for v in range(4)]),
            p.process([msg({"value": v}) for v in range(4, 8)]))
    assert [o.record["value"] for o in first + second] == list(range(8))
    assert len(server.seen) == 8 and server.peak == 2


# -- v2 ---------------------------------------------------------------------


async def test_v2_sends_the_demo_request_shape(server: InferenceServer) -> None:
    window = [12.1, 13.8, 11.9, 24.7, 13.0]
    config = v2(server, **{"input-field": "window", "input-name": "predict"})
    async with remote(**config) as p:
        outputs, failures = await p.process([msg({"deviceId": "pump-2", "window": window})])
    assert failures == []
    assert outputs[0].record == {"deviceId": "pump-2", "window": window, "inference": 1.0}
    assert [(s.path, s.body) for s in server.seen] == [("/v2/models/anomaly/infer", {
        "inputs": [{"name": "predict", "shape": [1, 5], "datatype": "FP32", "data": window}]})]


async def test_v2_batches_rows_of_equal_width_up_to_max_batch(server: InferenceServer) -> None:
    batch = [msg({"value": v}) for v in (5, 25, 7, 30, 1)]
    batch += [msg({"value": [1, 2, 30]}), msg({"value": [1, 2, 3]}), msg(b"22")]
    async with remote(**v2(server, **{"max-batch": 4})) as p:
        outputs, failures = await p.process(batch)
    assert failures == []
    assert [o.record["inference"] for o in outputs] == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    assert outputs[-1].record == {"value": 22, "inference": 1.0}
    # six scalars (k=1) in chunks of at most 4, two rows of width 3 in their own request
    assert sorted(server.shapes()) == [[2, 1], [2, 3], [4, 1]]


async def test_v2_multi_value_output_rows(server: InferenceServer) -> None:
    async with remote(**v2(server, "proba")) as p:
        outputs, _ = await p.process([msg({"value": 30}), msg({"value": 3})])
    assert [o.record["inference"] for o in outputs] == [[1.0, 0.0], [0.0, 1.0]]


@pytest.mark.parametrize("record, error", [
    ({"temp": 3}, "record has no input field 'value'"),
    ({"value": "high"},
     "input field 'value' must hold a number or a list of numbers, found 'high'"),
    ({"value": [1, None]}, "must hold a number or a list of numbers, found [1, None]"),
    ({"value": True}, "must hold a number or a list of numbers, found True"),
    ({"value": []}, "input field 'value' is an empty list"),
])
async def test_v2_bad_inputs_fail_alone(server: InferenceServer, record: Any, error: str) -> None:
    async with remote(**v2(server)) as p:
        outputs, failures = await p.process([msg({"value": 21}), msg(record)])
    assert [o.record for o in outputs] == [{"value": 21, "inference": 1.0}]
    assert len(failures) == 1 and error in failures[0].error
    assert server.shapes() == [[1, 1]]


async def test_v2_4xx_in_a_batch_isolates_the_bad_row(server: InferenceServer) -> None:
    batch = [msg({"value": v}) for v in (5, 25, -1, 30)]
    async with remote(**v2(server)) as p:
        outputs, failures = await p.process(batch)
    assert [o.record for o in outputs] == [{"value": 5, "inference": 0.0},
                                           {"value": 25, "inference": 1.0},
                                           {"value": 30, "inference": 1.0}]
    assert [(f.message, f.error) for f in failures] == [
        (batch[2], "HTTP 400: negative value in input data")]
    assert server.shapes() == [[4, 1], [1, 1], [1, 1], [1, 1], [1, 1]]


@pytest.mark.parametrize("garbage, error", [
    (b"<html>502 Bad Gateway</html>", "HTTP 200: the answer is not JSON: '<html>502 Bad"),
    (b"", "HTTP 200: the answer is empty"),
    (b'{"result": [1.0]}', "HTTP 200: expected a v2 answer with a non-empty 'outputs' list"),
    (b'{"outputs": [{"name": "p"}]}', "HTTP 200: outputs[0] has no 'data' list"),
])
async def test_v2_malformed_2xx_answer_is_a_failure(server: InferenceServer, garbage: bytes,
                                                    error: str) -> None:
    server.garbage = garbage
    batch = [msg({"value": 1}), msg({"value": 2})]
    async with remote(**v2(server)) as p:
        outputs, failures = await p.process(batch)
    assert outputs == [] and [f.message for f in failures] == batch
    assert all(f.error.startswith(error) for f in failures), failures[0].error


async def test_v2_answer_of_the_wrong_length_is_a_failure(server: InferenceServer) -> None:
    async with remote(**v2(server, "short")) as p:
        outputs, failures = await p.process([msg({"value": v}) for v in (1, 2, 3)])
    assert outputs == []
    assert {f.error for f in failures} == {
        "HTTP 200: outputs[0] holds 2 values, expected a multiple of 3 rows"}


async def test_rest_garbage_answer_is_a_failure(server: InferenceServer) -> None:
    server.garbage = b"Internal error page"
    async with remote(**rest(server)) as p:
        outputs, failures = await p.process([msg({"value": 1})])
    assert outputs == []
    assert failures[0].error == "HTTP 200: the answer is not JSON: 'Internal error page'"


# -- retries ----------------------------------------------------------------


@pytest.mark.parametrize("statuses", [[500, 503], [429], [502, 500, 504]])
async def test_transient_statuses_are_retried(server: InferenceServer,
                                              statuses: list[int]) -> None:
    server.fail_with = list(statuses)
    async with remote(**v2(server, retries=3)) as p:
        outputs, failures = await p.process([msg({"value": 30}), msg({"value": 3})])
        assert p.retried == len(statuses)
    assert failures == [] and [o.record["inference"] for o in outputs] == [1.0, 0.0]
    assert len(server.seen) == len(statuses) + 1


async def test_retries_exhausted_raise_transient_error(server: InferenceServer) -> None:
    server.fail_with = [500] * 10
    async with remote(**rest(server, retries=2)) as p:
        with pytest.raises(TransientError) as info:
            await p.process([msg({"value": 1})])
    assert len(server.seen) == 3
    assert info.value.component_id == "edge-inference"
    assert str(info.value) == (f"[edge-inference] POST {server.base}/api/v1/anomaly-rest: "
                               "HTTP 500: model worker busy (after 3 attempt(s))")


async def test_one_failing_request_fails_the_whole_batch(server: InferenceServer) -> None:
    server.fail_with = [503] * 3  # some requests succeed, one exhausts its retries
    async with remote(**rest(server, retries=0, **{"max-concurrency": 1})) as p:
        with pytest.raises(TransientError, match="HTTP 503"):
            await p.process([msg({"value": v}) for v in range(5)])
    assert len(server.seen) == 1  # the first failure stops the batch; the engine retries it


async def test_timeout_is_retried_then_transient(server: InferenceServer) -> None:
    server.delay = 1.0
    async with remote(**rest(server, timeout=0.2, retries=1)) as p:
        with pytest.raises(TransientError) as info:
            await p.process([msg({"value": 1})])
    assert len(server.seen) == 2
    assert "no answer within 0.2 s (ReadTimeout) (after 2 attempt(s))" in str(info.value)
    assert isinstance(info.value.__cause__, httpx.ReadTimeout)


async def test_connection_refused_is_mapped_to_transient_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the request: nothing listens
    async with remote(**{"base-url": f"http://127.0.0.1:{port}", "processor-id": "m",
                         "retries": 1}) as p:
        with pytest.raises(TransientError) as info:
            await p.process([msg({"value": 1})])
    assert not isinstance(info.value, httpx.HTTPError)
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    assert "ConnectError" in str(info.value) and "after 2 attempt(s)" in str(info.value)


# -- config and lifecycle ------------------------------------------------------


def test_the_reference_config_entry_loads_with_defaults() -> None:
    cfg = RemoteProcessorConfig.model_validate({
        "type": "remote", "base-url": "http://edge-processor.svc.cluster.local:8000/api/v1",
        "processor-id": "inference-model-1"})
    p = RemoteProcessor("edge-inference", cfg, Context(env={}))
    assert p.url == "http://edge-processor.svc.cluster.local:8000/api/v1/inference-model-1"
    assert (cfg.protocol, cfg.timeout, cfg.max_concurrency, cfg.retries, cfg.output_field) == (
        "rest", 10.0, 8, 3, "inference")
    v2cfg = cfg.model_copy(update={"protocol": "v2", "base_url": "http://kserve:8080"})
    assert RemoteProcessor("x", v2cfg, Context(env={})).url == (
        "http://kserve:8080/v2/models/inference-model-1/infer")


@pytest.mark.parametrize("config, loc", [
    ({"processor-id": "m"}, ("base-url",)),
    ({"base-url": "edge-processor:8000"}, ("base-url",)),
    ({"base-url": "http://h", "processor-id": "m", "protocol": "grpc"}, ("protocol",)),
    ({"base-url": "http://h", "processor-id": "m", "max-concurrency": 0}, ("max-concurrency",)),
    ({"base-url": "http://h", "processor-id": "m", "datatype": "BYTES"}, ("datatype",)),
    ({"base-url": "http://h", "processor-id": "m", "retry": 3}, ("retry",)),
])
def test_config_mistakes_name_the_key(config: dict[str, Any], loc: tuple[str, ...]) -> None:
    with pytest.raises(ValidationError) as info:
        RemoteProcessorConfig.model_validate({"type": "remote", "processor-id": "m", **config})
    assert loc in [e["loc"] for e in info.value.errors()]


async def test_missing_httpx_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "httpx", None)  # import httpx now raises ImportError
    cfg = RemoteProcessorConfig.model_validate(
        {"type": "remote", "base-url": "http://h", "processor-id": "m"})
    with pytest.raises(MissingDependency, match=r"pip install 'unsflow\[http\]'"):
        await RemoteProcessor("edge-inference", cfg, Context(env={})).start()
