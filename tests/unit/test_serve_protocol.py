"""unsflow serve without a network: the v2 and REST request checks, and where calls run."""

from __future__ import annotations

import numpy as np
import pytest

from unsflow.errors import ProtocolError
from unsflow.server.app import _Costs
from unsflow.server.protocol import (
    encode_infer_response,
    encode_rest_response,
    parse_infer_request,
    parse_rest_request,
)

META = {"inputs": [{"name": "predict", "datatype": "FP32", "shape": [-1, 5]}],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]},
                    {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}],
        "window": 5, "positive-label": 1}


def tensor(**over: object) -> dict[str, object]:
    return {"inputs": [{"name": "predict", "shape": [1, 5], "datatype": "FP32",
                        "data": [1, 2, 3, 4, 5], **over}]}


def test_demo_request_round_trip() -> None:
    req = parse_infer_request({**tensor(), "id": "a"}, "m", META)
    assert req.rows.dtype == np.float32 and req.rows.shape == (1, 5) and req.id == "a"
    results = {"probabilities": np.array([[0.25, 0.75]], np.float32),
               "label": np.array([1], np.int64)}
    assert encode_infer_response("m", 3, req, results, META) == {
        "model_name": "m", "model_version": "3", "id": "a",
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [1], "data": [1]},
                    {"name": "probabilities", "datatype": "FP32", "shape": [1, 2],
                     "data": [0.25, 0.75]}]}


def test_one_row_as_a_flat_shape_and_nested_data() -> None:
    assert parse_infer_request(tensor(shape=[5]), "m", META).rows.shape == (1, 5)
    nested = tensor(shape=[2, 5], data=[[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])
    assert parse_infer_request(nested, "m", META).rows[1].tolist() == [6, 7, 8, 9, 10]
    with pytest.raises(ProtocolError, match="nested data mixes lists and values"):
        parse_infer_request(tensor(shape=[2, 5], data=[[1, 2, 3, 4, 5], 6]), "m", META)


@pytest.mark.parametrize(("body", "error"), [
    ([], "the request must be a JSON object, found []"),
    ({"inputs": "x"}, "'inputs' must be a non-empty list of tensors"),
    ({**tensor(), "id": 5}, "'id' must be a string, found 5"),
    ({**tensor(), "parameters": []}, "'parameters' must be an object, found []"),
    (tensor(shape=[1, -5]), "shape must be a list of non-negative integers, found [1, -5]"),
    (tensor(shape=[0, 5], data=[]), "no rows to predict (shape [0, 5])"),
    (tensor(data=None), "'data' must be a list, found None"),
    (tensor(data=[1, 2, None, 4, 5]), "data must hold numbers only, found None"),
    ({**tensor(), "outputs": [{"name": "score"}]},
     "unexpected output 'score' for model 'm': it has ['label', 'probabilities']"),
])
def test_bad_v2_requests(body: object, error: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_infer_request(body, "m", META)
    assert info.value.status == 400 and error in info.value.message


def test_rest_record_and_instances() -> None:
    rows, batched = parse_rest_request({"window": [1, 2, 3, 4, 5], "value": 5}, "m", META,
                                       "window")
    assert rows.shape == (1, 5) and not batched
    results = {"label": np.array([1]), "probabilities": np.array([[0.1, 0.9]], np.float32)}
    answer = encode_rest_response("m", 2, results, META, batched)
    assert answer["label"] == 1 and answer["anomaly"] is True and answer["model_version"] == "2"
    rows, batched = parse_rest_request({"instances": [[1] * 5, [2] * 5]}, "m", META, "window")
    assert rows.shape == (2, 5) and batched
    with pytest.raises(ProtocolError, match="takes rows of 5 values, found 4"):
        parse_rest_request({"window": [1, 2, 3, 4]}, "m", META, "window")
    with pytest.raises(ProtocolError, match="field 'window' must hold a list of numbers"):
        parse_rest_request({"window": 3}, "m", META, "window")


def test_calls_run_inline_only_once_measured_cheap() -> None:
    costs = _Costs(0.0005)
    key = ("m", 1, 1)
    assert not costs.cheap(key)  # not measured yet: a thread
    for _ in range(3):
        costs.observe(key, 0.00002)
    assert costs.cheap(key)
    for _ in range(10):  # the model got slow: back to the thread
        costs.observe(key, 0.01)
    assert not costs.cheap(key)
    never = _Costs(0.0)  # --inline-max-ms 0: always a thread
    for _ in range(3):
        never.observe(key, 0.0)
    assert not never.cheap(key)
