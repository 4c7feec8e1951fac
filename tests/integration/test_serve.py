"""`unsflow serve` as a user runs it: Open Inference Protocol v2 conformance, REST, errors,
health, metrics, and a hot swap under load that drops nothing."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import _free_ports
from tests.e2e.helpers import UnsflowProcess
from tests.ml_models import save_model, windows
from unsflow.ml.store import ModelStore

pytestmark = pytest.mark.integration

DEMO = [12.1, 12.9, 13.4, 12.2, 33.5]  # the newest reading is a spike


class Served:
    def __init__(self, proc: UnsflowProcess, base: str, store: ModelStore) -> None:
        self.proc = proc
        self.base = base
        self.store = store
        self.http = httpx.Client(base_url=base, timeout=10, trust_env=False)


def start_serve(tmp_path: Path, *args: str) -> tuple[UnsflowProcess, str]:
    port = _free_ports(1)[0]
    proc = UnsflowProcess(["serve", "--host", "127.0.0.1", "--port", str(port), *args],
                          cwd=tmp_path, env={}).start()
    proc.wait_for_log("Application startup complete", timeout=60)
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    store = ModelStore(str(tmp_path / "models"))
    save_model(store, "anomaly")
    proc, base = start_serve(tmp_path, "--store", str(tmp_path / "models"),
                             "--poll-interval", "0.2")
    s = Served(proc, base, store)
    try:
        yield s
    finally:
        s.http.close()
        assert proc.terminate() == 0, proc.output[-3000:]


def assert_conformant(answer: dict[str, Any], rows: int, request_id: str | None = None) -> None:
    """The v2 inference response of the spec, for a model with outputs label and probabilities."""
    assert isinstance(answer["model_name"], str)
    assert isinstance(answer["model_version"], str)
    if request_id is not None:
        assert answer["id"] == request_id
    else:
        assert "id" not in answer
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert [o["name"] for o in answer["outputs"]] == ["label", "probabilities"]
    for out in answer["outputs"]:
        assert set(out) >= {"name", "shape", "datatype", "data"}
        assert len(out["data"]) == int(np.prod(out["shape"]))
    assert outputs["label"]["datatype"] == "INT64" and outputs["label"]["shape"] == [rows]
    assert all(isinstance(v, int) for v in outputs["label"]["data"])
    assert outputs["probabilities"]["datatype"] == "FP32"
    assert outputs["probabilities"]["shape"] == [rows, 2]


def test_the_demo_request_gets_a_conformant_answer(served: Served) -> None:
    request = {"inputs": [{"name": "predict", "shape": [1, 5], "datatype": "FP32", "data": DEMO}]}
    r = served.http.post("/v2/models/anomaly/infer", json=request)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    answer = r.json()
    assert_conformant(answer, 1)
    assert answer["model_name"] == "anomaly" and answer["model_version"] == "1"
    assert answer["outputs"][0]["data"] == [1]  # the spike is an anomaly
    p = answer["outputs"][1]["data"]
    assert p[1] > p[0] and abs(sum(p) - 1) < 1e-5


def test_batched_request_with_id_parameters_and_output_choice(served: Served) -> None:
    x, y = windows(64, seed=9)
    request = {"id": "req-7", "parameters": {"trace": True},
               "inputs": [{"name": "predict", "shape": [64, 5], "datatype": "FP32",
                           "data": x.reshape(-1).tolist()}]}
    answer = served.http.post("/v2/models/anomaly/infer", json=request).json()
    assert_conformant(answer, 64, "req-7")
    assert answer["outputs"][0]["data"] == y.tolist()
    # nested row-major data is the same tensor; outputs asks for one output
    request = {"inputs": [{"name": "predict", "shape": [2, 5], "datatype": "FP32",
                           "data": [DEMO, [12.0] * 5]}], "outputs": [{"name": "label"}]}
    answer = served.http.post("/v2/models/anomaly/infer", json=request).json()
    assert answer["outputs"] == [{"name": "label", "datatype": "INT64", "shape": [2],
                                  "data": [1, 0]}]


@pytest.mark.parametrize(("tensor", "error"), [
    ({"name": "input", "shape": [1, 5], "datatype": "FP32", "data": DEMO},
     "unexpected input 'input' for model 'anomaly': expected 'predict'"),
    ({"name": "predict", "shape": [1, 5], "datatype": "FP32", "data": DEMO[:4]},
     "input 'predict': shape [1, 5] needs 5 values, 'data' holds 4"),
    ({"name": "predict", "shape": [1, 4], "datatype": "FP32", "data": DEMO[:4]},
     "input 'predict': expected shape [n, 5], found [1, 4]"),
    ({"name": "predict", "shape": [1, 5], "datatype": "BYTES", "data": DEMO},
     "input 'predict': datatype 'BYTES' does not match the model's FP32"),
    ({"name": "predict", "shape": [1, 5], "datatype": "FP32", "data": [1, 2, "x", 4, 5]},
     "input 'predict': data must hold numbers only, found 'x'"),
    ({"name": "predict", "shape": [1, 5], "datatype": "FP32", "data": [1, 2, True, 4, 5]},
     "input 'predict': data must hold numbers only, found True"),
    ({"name": "predict", "shape": [1, 5], "datatype": "FP32", "data": [1, 2, 1e300, 4, 5]},
     "input 'predict': a value does not fit FP32 (or is not finite)"),
])
def test_bad_requests_are_400_with_an_error_body(served: Served, tensor: dict[str, Any],
                                                 error: str) -> None:
    r = served.http.post("/v2/models/anomaly/infer", json={"inputs": [tensor]})
    assert r.status_code == 400
    assert r.json() == {"error": error}


def test_not_json_unknown_model_and_version_are_errors(served: Served) -> None:
    r = served.http.post("/v2/models/anomaly/infer", content=b"{nope")
    assert r.status_code == 400 and r.json()["error"].startswith("the request body is not JSON")
    r = served.http.post("/v2/models/anomaly/infer", json={"inputs": []})
    assert r.status_code == 400
    assert r.json() == {"error": "'inputs' must be a non-empty list of tensors"}
    body = {"inputs": [{"name": "predict", "shape": [1, 5], "datatype": "FP32", "data": DEMO}]}
    r = served.http.post("/v2/models/nope/infer", json=body)
    assert r.status_code == 404
    assert r.json() == {"error": "model 'nope' not found (served: ['anomaly'])"}
    r = served.http.post("/v2/models/anomaly/versions/9/infer", json=body)
    assert r.status_code == 404
    assert r.json() == {"error": "model 'anomaly' has no version 9 (versions: [1])"}
    assert served.http.get("/v2/models/nope").status_code == 404
    assert served.http.get("/v2/models/nope/ready").status_code == 404
    r = served.http.get("/v2/nothing/here")
    assert r.status_code == 404 and "error" in r.json()


def test_health_metadata_and_metrics(served: Served) -> None:
    h = served.http
    assert h.get("/v2/health/live").status_code == 200
    assert h.get("/healthz").status_code == 200
    ready = h.get("/v2/health/ready")
    assert ready.status_code == 200 and ready.json()["models"] == {"anomaly": 1}
    assert h.get("/readyz").status_code == 200
    assert h.get("/v2").json()["name"] == "unsflow"
    meta = h.get("/v2/models/anomaly").json()
    assert meta == {"name": "anomaly", "versions": ["1"], "platform": "onnx", "version": "1",
                    "inputs": [{"name": "predict", "datatype": "FP32", "shape": [-1, 5]}],
                    "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]},
                                {"name": "probabilities", "datatype": "FP32",
                                 "shape": [-1, 2]}]}
    assert h.get("/v2/models/anomaly/versions/1").json()["version"] == "1"
    assert h.get("/v2/models/anomaly/ready").json() == {
        "name": "anomaly", "version": "1", "ready": True}
    body = {"inputs": [{"name": "predict", "shape": [1, 5], "datatype": "FP32", "data": DEMO}]}
    h.post("/v2/models/anomaly/infer", json=body)
    h.post("/v2/models/anomaly/infer", json={"inputs": [{**body["inputs"][0], "data": [1]}]})
    text = h.get("/metrics").text
    assert 'unsflow_serve_requests_total{model="anomaly",protocol="v2"} 2.0' in text
    assert 'unsflow_serve_errors_total{model="anomaly",protocol="v2",status="400"} 1.0' in text
    assert 'unsflow_serve_rows_total{model="anomaly"} 1.0' in text
    assert 'unsflow_serve_model_version{model="anomaly"} 1.0' in text
    assert 'unsflow_serve_request_seconds_count{protocol="v2"} 2.0' in text


def test_plain_rest_answers_the_remote_processors_record(served: Served) -> None:
    record = {"machine": "m1", "sensor": "vibration", "value": 33.5, "window": DEMO}
    r = served.http.post("/api/v1/anomaly", json=record)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["model_name"] == "anomaly" and answer["model_version"] == "1"
    assert answer["label"] == 1 and answer["anomaly"] is True
    assert len(answer["probabilities"]) == 2
    r = served.http.post("/api/v1/anomaly", json={"instances": [DEMO, [12.0] * 5]})
    assert [p["label"] for p in r.json()["predictions"]] == [1, 0]
    r = served.http.post("/api/v1/anomaly", json={"value": 3})
    assert r.status_code == 400
    assert r.json() == {"error": "the record has no field 'window' (the model input) "
                                 "and no 'instances'"}
    # v2 under the REST prefix too: a remote processor whose base-url ends in /api/v1
    body = {"inputs": [{"name": "predict", "shape": [1, 5], "datatype": "FP32", "data": DEMO}]}
    assert served.http.post("/api/v1/v2/models/anomaly/infer", json=body).status_code == 200


def test_hot_swap_under_load_drops_nothing(served: Served) -> None:
    """Clients hammer infer while version 2 is saved: no error, answers move to version 2."""
    body = {"inputs": [{"name": "predict", "shape": [1, 5], "datatype": "FP32", "data": DEMO}]}
    stop = threading.Event()
    seen: list[Counter] = []
    failures: list[str] = []

    def client() -> None:
        counts: Counter = Counter()
        seen.append(counts)
        with httpx.Client(base_url=served.base, timeout=10, trust_env=False) as http:
            while not stop.is_set():
                try:
                    r = http.post("/v2/models/anomaly/infer", json=body)
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text}")
                    continue
                a = r.json()
                counts[(a["model_version"], a["outputs"][0]["data"][0])] += 1

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        assert save_model(served.store, "anomaly", inverted=True) == 2
        deadline = time.monotonic() + 30
        while served.http.get("/v2/models/anomaly").json()["version"] != "2":
            assert time.monotonic() < deadline, "version 2 not served within 30 s"
            time.sleep(0.05)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    total: Counter = sum(seen, Counter())
    assert failures == []
    # version 1 calls the spike an anomaly; the inverted version 2 does not
    assert set(total) == {("1", 1), ("2", 0)}, total
    assert total[("1", 1)] > 0 and total[("2", 0)] > 0
    served.proc.wait_for_log("model 'anomaly': serving version 2 (was 1)")
    # the earlier version stays reachable on its versioned path
    r = served.http.post("/v2/models/anomaly/versions/1/infer", json=body).json()
    assert (r["model_version"], r["outputs"][0]["data"]) == ("1", [1])
    assert served.http.get("/v2/models/anomaly").json()["versions"] == ["1", "2"]
    assert 'unsflow_serve_model_swaps_total{model="anomaly"} 2.0' in served.http.get(
        "/metrics").text


def test_serves_every_model_of_the_store_and_waits_for_a_named_one(tmp_path: Path) -> None:
    store = ModelStore(str(tmp_path / "models"))
    proc, base = start_serve(tmp_path, "--store", str(tmp_path / "models"),
                             "--models", "anomaly,other", "--poll-interval", "0.2")
    try:
        with httpx.Client(base_url=base, timeout=10, trust_env=False) as http:
            r = http.get("/v2/health/ready")
            assert r.status_code == 503
            assert r.json()["reason"] == "not loaded yet: anomaly, other"
            save_model(store, "anomaly")
            save_model(store, "other")
            deadline = time.monotonic() + 30
            while http.get("/v2/health/ready").status_code != 200:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert http.get("/v2/health/ready").json()["models"] == {"anomaly": 1, "other": 1}
    finally:
        assert proc.terminate() == 0, proc.output[-3000:]


def test_serves_from_minio_and_swaps_when_a_version_is_delivered(
        tmp_path: Path, minio: Any, s3_bucket: str) -> None:
    """The object store path: every model of s3://bucket/prefix; a new version saved there
    (southbound delivery from the core) is served after the next poll."""
    options = {"endpoint": minio.endpoint, "region": minio.region, "allow-http": "true",
               "access-key-id": minio.access_key, "secret-access-key": minio.secret_key}
    url = f"s3://{s3_bucket}/edge/models"
    store = ModelStore(url, options)
    save_model(store, "anomaly")
    save_model(store, "other")
    # a half-delivered version (no metadata.json yet) is not served
    minio.client("s3").put_object(Bucket=s3_bucket, Key="edge/models/anomaly/2/model.onnx",
                                  Body=b"half")
    assert store.names() == ["anomaly", "other"]
    args = [f"--store-option={k}={v}" for k, v in options.items()]
    proc, base = start_serve(tmp_path, "--store", url, *args, "--poll-interval", "0.3")
    try:
        with httpx.Client(base_url=base, timeout=10, trust_env=False) as http:
            assert http.get("/v2/health/ready").json()["models"] == {"anomaly": 1, "other": 1}
            body = {"inputs": [{"name": "predict", "shape": [1, 5], "datatype": "FP32",
                                "data": DEMO}]}
            r = http.post("/v2/models/anomaly/infer", json=body).json()
            assert (r["model_version"], r["outputs"][0]["data"]) == ("1", [1])
            # version 2's directory is taken by the half-written one: save() writes 3
            assert save_model(store, "anomaly", inverted=True) == 3
            deadline = time.monotonic() + 30
            while http.get("/v2/models/anomaly").json()["version"] != "3":
                assert time.monotonic() < deadline, proc.output[-2000:]
                time.sleep(0.1)
            r = http.post("/v2/models/anomaly/infer", json=body).json()
            assert (r["model_version"], r["outputs"][0]["data"]) == ("3", [0])
            assert http.get("/v2/models/anomaly").json()["versions"] == ["1", "3"]
    finally:
        assert proc.terminate() == 0, proc.output[-3000:]


def test_health_answers_while_a_slow_inference_runs(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Inference runs in a worker thread: a model stuck in predict does not stop the server
    from answering health checks or other models' metadata."""
    import uvicorn

    from unsflow.ml.store import OnnxModel
    from unsflow.server.app import ServeConfig, create_app

    store = ModelStore(str(tmp_path / "models"))
    save_model(store, "anomaly")
    entered, release = threading.Event(), threading.Event()
    real_predict = OnnxModel.predict

    def stuck_predict(self: OnnxModel, rows: Any) -> Any:
        entered.set()
        assert release.wait(30)
        return real_predict(self, rows)

    monkeypatch.setattr(OnnxModel, "predict", stuck_predict)
    port = _free_ports(1)[0]
    app = create_app(ServeConfig(store=str(tmp_path / "models"), host="127.0.0.1", port=port,
                                 poll_interval=0))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                           access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    answers: list[httpx.Response] = []
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        body = {"inputs": [{"name": "predict", "shape": [1, 5], "datatype": "FP32",
                            "data": DEMO}]}
        infer = threading.Thread(target=lambda: answers.append(httpx.post(
            f"{base}/v2/models/anomaly/infer", json=body, timeout=30, trust_env=False)))
        infer.start()
        assert entered.wait(30)  # the inference is in its thread, and stays there
        with httpx.Client(base_url=base, timeout=5, trust_env=False) as http:
            assert http.get("/v2/health/live").status_code == 200
            assert http.get("/v2/health/ready").status_code == 200
            assert http.get("/v2/models/anomaly").json()["version"] == "1"
        assert answers == []  # still computing
        release.set()
        infer.join(30)
        assert answers[0].status_code == 200
        assert answers[0].json()["outputs"][0]["data"] == [1]
    finally:
        release.set()
        server.should_exit = True
        thread.join(30)


def test_a_corrupt_version_is_skipped_and_the_served_one_stays(served: Served) -> None:
    from tests.ml_models import onnx_classifier
    from unsflow.ml.store import default_metadata

    meta = {"name": "anomaly", **default_metadata(5)}
    assert served.store.save("anomaly", b"not an onnx model", meta) == 2
    served.proc.wait_for_log("model 'anomaly' version 2 not loaded, still serving version 1")
    body = {"inputs": [{"name": "predict", "shape": [1, 5], "datatype": "FP32", "data": DEMO}]}
    r = served.http.post("/v2/models/anomaly/infer", json=body)
    assert r.status_code == 200 and r.json()["model_version"] == "1"
    assert "unsflow_serve_model_load_errors_total 1.0" in served.http.get("/metrics").text
    # a good version after it is served
    assert served.store.save("anomaly", onnx_classifier(inverted=True), meta) == 3
    served.proc.wait_for_log("model 'anomaly': serving version 3 (was 1)")
    r = served.http.post("/v2/models/anomaly/infer", json=body)
    assert (r.json()["model_version"], r.json()["outputs"][0]["data"]) == ("3", [0])
    # the corrupt one asked for by its path: an error that says why, not a crash
    r = served.http.post("/v2/models/anomaly/versions/2/infer", json=body)
    assert r.status_code == 500 and "cannot be loaded by onnxruntime" in r.json()["error"]


@pytest.mark.parametrize("protocol", ["rest", "v2"])
async def test_the_remote_processor_gets_answers_in_both_protocols(served: Served,
                                                                   protocol: str) -> None:
    """The reference config's shape: base-url ends in /api/v1, :8000 aside."""
    from unsflow.components import Context
    from unsflow.message import Message
    from unsflow.processors.remote import RemoteProcessor, RemoteProcessorConfig

    cfg = RemoteProcessorConfig.model_validate({
        "type": "remote", "base-url": f"{served.base}/api/v1", "processor-id": "anomaly",
        "protocol": protocol, "input-field": "window", "input-name": "predict"})
    remote = RemoteProcessor("edge-inference", cfg, Context(env={}))
    records = [{"machine": "m1", "value": w[-1], "window": w}
               for w in (DEMO, [12.0, 12.5, 13.0, 12.8, 13.1], [14.0, 14.2, 13.9, 14.1, 36.0])]
    batch = [Message(topic="a/b", payload=b"", record=r) for r in records]
    await remote.start()
    try:
        outputs, failures = await remote.process(batch)
    finally:
        await remote.stop()
    assert failures == []
    answers = [o.record["inference"] for o in outputs]
    if protocol == "v2":
        assert answers == [1, 0, 1]  # outputs[0], the label, one per row
        assert remote.requests == 1  # one batched request
    else:
        assert [(a["label"], a["anomaly"], a["model_version"]) for a in answers] == [
            (1, True, "1"), (0, False, "1"), (1, True, "1")]
