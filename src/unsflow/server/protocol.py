"""Open Inference Protocol v2 (KServe / Triton) and plain REST: requests in, answers out.

Pure functions, no I/O and no web framework: the app (:mod:`unsflow.server.app`)
hands a request body and the model's metadata in, and gets the rows to
predict, or a :class:`~unsflow.errors.ProtocolError` carrying the HTTP status and the error
text that the protocol returns as ``{"error": "..."}``.

v2 request (``POST /v2/models/{name}[/versions/{v}]/infer``)::

    {"id": "42", "parameters": {...},
     "inputs": [{"name": "predict", "shape": [n, 5], "datatype": "FP32", "data": [...]}],
     "outputs": [{"name": "label"}]}                      # optional: which outputs

``data`` is row-major, flat or nested as the shape says; its length must be
the product of ``shape``. The model's one input is ``[-1, k]``: any number of
rows n of exactly k values. Every row of one request is predicted in one call.

v2 answer::

    {"model_name": "anomaly", "model_version": "2", "id": "42",
     "outputs": [{"name": "label", "datatype": "INT64", "shape": [n], "data": [...]},
                 {"name": "probabilities", "datatype": "FP32", "shape": [n, 2], "data": [...]}]}

Plain REST (``POST /api/v1/{name}``, the ``rest`` protocol of the ``remote``
processor, which sends one record per request): the body is a JSON object
whose ``input-field`` (default ``window``) holds the k numbers; the answer is
``{"model_name", "model_version", "label", "anomaly", "probabilities"}`` for
that row. ``{"instances": [[...], ...]}`` predicts several rows at once and
answers ``{"model_name", "model_version", "predictions": [<one answer per row>]}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from unsflow.errors import ProtocolError

__all__ = [
    "InferRequest",
    "encode_infer_response",
    "encode_rest_response",
    "model_metadata",
    "parse_infer_request",
    "parse_rest_request",
]

_NUMBER_TYPES = (int, float)


@dataclass(frozen=True, slots=True)
class InferRequest:
    """A valid v2 request: the rows to predict and what the answer must carry."""

    rows: np.ndarray  # [n, k] float32
    id: str | None
    outputs: list[str] | None  # requested output names; None: all


def _input_spec(metadata: dict[str, Any]) -> dict[str, Any]:
    inputs = metadata.get("inputs") or [{"name": "predict", "datatype": "FP32", "shape": [-1, -1]}]
    return inputs[0]  # type: ignore[no-any-return]


def _width(spec: dict[str, Any], metadata: dict[str, Any]) -> int | None:
    """k of a [-1, k] input; None when the model takes any width."""
    shape = spec.get("shape") or []
    if len(shape) >= 2 and isinstance(shape[-1], int) and shape[-1] > 0:
        return shape[-1]
    window = metadata.get("window")
    return window if isinstance(window, int) and window > 0 else None


def _numbers(values: list[Any], where: str) -> None:
    for x in values:
        if type(x) not in _NUMBER_TYPES:  # bool, str, None, dict are not numbers
            raise ProtocolError(400, f"{where}: data must hold numbers only, found {_short(x)}")


def _flatten(data: list[Any], where: str) -> list[Any]:
    """Row-major flat data from flat or nested lists; numbers checked."""
    if not data or not isinstance(data[0], list):
        _numbers(data, where)
        return data
    flat: list[Any] = []
    stack = [data]
    while stack:
        part = stack.pop()
        if part and isinstance(part[0], list):
            if not all(isinstance(p, list) for p in part):
                raise ProtocolError(400, f"{where}: nested data mixes lists and values")
            stack.extend(reversed(part))
        else:
            _numbers(part, where)
            flat.extend(part)
    return flat


def parse_infer_request(body: Any, model_name: str, metadata: dict[str, Any]) -> InferRequest:
    """Validate a decoded v2 request against the model; ProtocolError(400) says what is wrong."""
    if not isinstance(body, dict):
        raise ProtocolError(400, f"the request must be a JSON object, found {_short(body)}")
    req_id = body.get("id")
    if req_id is not None and not isinstance(req_id, str):
        raise ProtocolError(400, f"'id' must be a string, found {_short(req_id)}")
    params = body.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise ProtocolError(400, f"'parameters' must be an object, found {_short(params)}")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError(400, "'inputs' must be a non-empty list of tensors")
    spec = _input_spec(metadata)
    name = spec.get("name", "predict")
    if len(inputs) != 1:
        raise ProtocolError(400, f"model {model_name!r} takes one input ({name!r}), "
                                 f"found {len(inputs)}")
    tensor = inputs[0]
    if not isinstance(tensor, dict):
        raise ProtocolError(400, f"inputs[0] must be an object, found {_short(tensor)}")
    if tensor.get("name") != name:
        raise ProtocolError(400, f"unexpected input {_short(tensor.get('name'))} for model "
                                 f"{model_name!r}: expected {name!r}")
    datatype = spec.get("datatype", "FP32")
    if tensor.get("datatype") != datatype:
        raise ProtocolError(400, f"input {name!r}: datatype {_short(tensor.get('datatype'))} "
                                 f"does not match the model's {datatype}")
    shape = tensor.get("shape")
    if (not isinstance(shape, list) or not shape
            or not all(type(d) is int and d >= 0 for d in shape)):
        raise ProtocolError(400, f"input {name!r}: shape must be a list of non-negative "
                                 f"integers, found {_short(shape)}")
    width = _width(spec, metadata)
    if len(shape) == 1 and width is not None and shape[0] == width:
        shape = [1, width]  # one row given as [k]
    if len(shape) != 2:
        raise ProtocolError(400, f"input {name!r}: expected shape [n, {width or 'k'}], "
                                 f"found {shape}")
    if width is not None and shape[1] != width:
        raise ProtocolError(400, f"input {name!r}: expected shape [n, {width}], found {shape}")
    data = tensor.get("data")
    if not isinstance(data, list):
        raise ProtocolError(400, f"input {name!r}: 'data' must be a list, found {_short(data)}")
    flat = _flatten(data, f"input {name!r}")
    expected = shape[0] * shape[1]
    if len(flat) != expected:
        raise ProtocolError(400, f"input {name!r}: shape {shape} needs {expected} values, "
                                 f"'data' holds {len(flat)}")
    if expected == 0:
        raise ProtocolError(400, f"input {name!r}: no rows to predict (shape {shape})")
    outputs = _requested_outputs(body.get("outputs"), metadata, model_name)
    rows = np.asarray(flat, dtype=np.float32).reshape(shape)
    if not np.isfinite(rows).all():
        raise ProtocolError(400, f"input {name!r}: a value does not fit FP32 (or is not finite)")
    return InferRequest(rows=rows, id=req_id, outputs=outputs)


def _requested_outputs(value: Any, metadata: dict[str, Any], model_name: str) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(o, dict) for o in value):
        raise ProtocolError(400, f"'outputs' must be a list of objects, found {_short(value)}")
    known = [o["name"] for o in metadata.get("outputs", [])]
    names: list[str] = []
    for out in value:
        name = out.get("name")
        if name not in known:
            raise ProtocolError(400, f"unexpected output {_short(name)} for model "
                                     f"{model_name!r}: it has {known}")
        names.append(name)
    return names


def encode_infer_response(model_name: str, version: int, request: InferRequest,
                          results: dict[str, np.ndarray],
                          metadata: dict[str, Any]) -> dict[str, Any]:
    """The v2 answer: outputs in the model's declared order (or the order asked for)."""
    declared = {o["name"]: o for o in metadata.get("outputs", [])}
    names = request.outputs if request.outputs is not None else (
        [n for n in declared if n in results] or list(results))
    outputs = []
    for name in names:
        array = results[name]
        datatype = declared.get(name, {}).get("datatype") or _datatype(array)
        outputs.append({"name": name, "datatype": datatype, "shape": list(array.shape),
                        "data": array.reshape(-1).tolist()})
    answer: dict[str, Any] = {"model_name": model_name, "model_version": str(version)}
    if request.id is not None:
        answer["id"] = request.id
    answer["outputs"] = outputs
    return answer


def _datatype(array: np.ndarray) -> str:
    return {"float32": "FP32", "float64": "FP64", "int64": "INT64", "int32": "INT32",
            "bool": "BOOL"}.get(str(array.dtype), "BYTES")


def parse_rest_request(body: Any, model_name: str, metadata: dict[str, Any],
                       input_field: str) -> tuple[np.ndarray, bool]:
    """``(rows, batched)`` of a plain REST request; ProtocolError(400) says what is wrong."""
    if not isinstance(body, dict):
        raise ProtocolError(400, f"the request must be a JSON object, found {_short(body)}")
    width = _width(_input_spec(metadata), metadata)
    if "instances" in body:
        rows = body["instances"]
        if not isinstance(rows, list) or not rows or not all(isinstance(r, list) for r in rows):
            raise ProtocolError(400, "'instances' must be a non-empty list of rows (lists)")
        batched = True
    elif input_field in body:
        rows = [body[input_field]]
        if not isinstance(rows[0], list):
            raise ProtocolError(400, f"field {input_field!r} must hold a list of numbers, "
                                     f"found {_short(rows[0])}")
        batched = False
    else:
        raise ProtocolError(400, f"the record has no field {input_field!r} (the model input) "
                                 f"and no 'instances'")
    for row in rows:
        _numbers(row, f"model {model_name!r}")
        if width is not None and len(row) != width:
            raise ProtocolError(400, f"model {model_name!r} takes rows of {width} values, "
                                     f"found {len(row)}")
    if width is None and len({len(r) for r in rows}) != 1:
        raise ProtocolError(400, "rows of different lengths")
    array = np.asarray(rows, dtype=np.float32)
    if not np.isfinite(array).all():
        raise ProtocolError(400, "a value does not fit FP32 (or is not finite)")
    return array, batched


def encode_rest_response(model_name: str, version: int, results: dict[str, np.ndarray],
                         metadata: dict[str, Any], batched: bool) -> dict[str, Any]:
    """One answer object per row: every output, plus ``anomaly`` (label == positive-label)."""
    columns = {name: array.tolist() for name, array in results.items()}
    n = len(next(iter(columns.values()))) if columns else 0
    positive = metadata.get("positive-label", 1)
    answers = []
    for i in range(n):
        row = {name: values[i] for name, values in columns.items()}
        if "label" in row:
            row["anomaly"] = row["label"] == positive
        answers.append(row)
    head = {"model_name": model_name, "model_version": str(version)}
    if batched:
        return {**head, "predictions": answers}
    return {**head, **answers[0]}


def model_metadata(name: str, metadata: dict[str, Any], versions: list[int],
                   served: int) -> dict[str, Any]:
    """The v2 model metadata answer; ``version`` (an addition) is the version served."""
    return {"name": name, "versions": [str(v) for v in versions], "platform": "onnx",
            "version": str(served), "inputs": metadata.get("inputs", []),
            "outputs": metadata.get("outputs", [])}


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
