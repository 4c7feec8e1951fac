"""Sparkplug B (Eclipse Sparkplug 3.0): the topic namespace and the payload, decoded.

The payload schema below is written from the specification's chapter 6.4
("Sparkplug B payload definition", message ``org.eclipse.tahu.protobuf.Payload``,
proto2) and built as a protobuf descriptor when first used: no ``protoc``, no
generated module. Extension fields of the schema (``extensions N to max``)
are left out: protobuf keeps unknown fields, and no datatype of the
specification uses them.

What is ours: turning one decoded metric into plain values a record can hold
(:func:`metric_value`), the datatype names, and :func:`encode_payload`, which
unsflow needs for the Rebirth command it publishes (and tests use to build
payloads).

>>> t = parse_topic("spBv1.0/plant1/DDATA/edge7/press-3")
>>> (t.group, t.message_type, t.edge_node, t.device)
('plant1', 'DDATA', 'edge7', 'press-3')
>>> DATATYPES[9], DATATYPE_IDS["Boolean"]
('Float', 11)
>>> p = decode_payload(encode_payload(seq=3, metrics=[{"name": "t", "datatype": "Int8",
...                                                   "value": -2}]))
>>> p.seq, metric_value(p.metrics[0], 1)
(3, -2)
"""

from __future__ import annotations

import base64
import math
import struct
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from unsflow.errors import DecodeError, MissingDependency

__all__ = [
    "DATATYPES",
    "DATATYPE_IDS",
    "MESSAGE_TYPES",
    "NAMESPACE",
    "SparkplugTopic",
    "decode_payload",
    "encode_payload",
    "metric_value",
    "parse_topic",
    "property_set",
    "rebirth_payload",
]

NAMESPACE = "spBv1.0"
MESSAGE_TYPES = frozenset({"NBIRTH", "NDATA", "NDEATH", "NCMD",
                           "DBIRTH", "DDATA", "DDEATH", "DCMD"})

# Specification 6.4.16, "Data Types": id -> name.
DATATYPES: dict[int, str] = dict(enumerate((
    "Unknown", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64",
    "Float", "Double", "Boolean", "String", "DateTime", "Text", "UUID", "DataSet", "Bytes",
    "File", "Template", "PropertySet", "PropertySetList", "Int8Array", "Int16Array",
    "Int32Array", "Int64Array", "UInt8Array", "UInt16Array", "UInt32Array", "UInt64Array",
    "FloatArray", "DoubleArray", "BooleanArray", "StringArray", "DateTimeArray")))
DATATYPE_IDS: dict[str, int] = {name: i for i, name in DATATYPES.items()}

_SIGNED_BITS = {1: 8, 2: 16, 3: 32, 4: 64}
_UNSIGNED_BITS = {5: 8, 6: 16, 7: 32, 8: 64}
# Arrays travel as little-endian packed bytes in bytes_value (specification 6.4.17).
_ARRAY_FORMATS = {22: "b", 23: "h", 24: "i", 25: "q", 26: "B", 27: "H", 28: "I", 29: "Q",
                  30: "f", 31: "d", 34: "q"}


@dataclass(frozen=True, slots=True)
class SparkplugTopic:
    """``spBv1.0/GROUP/TYPE/EDGE_NODE[/DEVICE]``, or ``spBv1.0/STATE/HOST`` (device None)."""

    group: str
    message_type: str
    edge_node: str
    device: str | None = None

    def command_topic(self) -> str:
        """The NCMD topic of this topic's edge node."""
        return f"{NAMESPACE}/{self.group}/NCMD/{self.edge_node}"


def parse_topic(topic: str) -> SparkplugTopic:
    """The parts of a Sparkplug B topic; DecodeError says what does not fit."""
    parts = topic.split("/")
    if parts[0] != NAMESPACE:
        raise DecodeError(f"topic {topic!r} is not in the Sparkplug B namespace "
                          f"(expected {NAMESPACE}/group/TYPE/edge-node[/device])")
    if len(parts) == 3 and parts[1] == "STATE":
        return SparkplugTopic("", "STATE", parts[2])
    if len(parts) not in (4, 5) or not all(parts[1:]):
        raise DecodeError(f"topic {topic!r}: expected {NAMESPACE}/group/TYPE/edge-node[/device]")
    kind = parts[2]
    if kind not in MESSAGE_TYPES:
        raise DecodeError(f"topic {topic!r}: unknown Sparkplug message type {kind!r}")
    device = parts[4] if len(parts) == 5 else None
    if (kind[0] == "D") != (device is not None):
        raise DecodeError(f"topic {topic!r}: {kind} "
                          f"{'needs a device' if device is None else 'has no device level'}")
    return SparkplugTopic(parts[1], kind, parts[3], device)


# --------------------------------------------------------------- the schema

# (message path, [(field name, number, label, type, message type or None, oneof or None)])
_O, _R = "optional", "repeated"
_VALUE = "value"
_SCALARS = (("int_value", "uint32"), ("long_value", "uint64"), ("float_value", "float"),
            ("double_value", "double"), ("boolean_value", "bool"), ("string_value", "string"))


def _scalar_values(first: int) -> list[tuple[str, int, str, str, str | None, str | None]]:
    """The scalar fields of the ``value`` oneof that four Sparkplug messages share, numbered
    from ``first``."""
    return [(name, first + i, _O, kind, None, _VALUE) for i, (name, kind) in enumerate(_SCALARS)]


_SCHEMA: list[tuple[str, list[tuple[str, int, str, str, str | None, str | None]]]] = [
    ("Payload", [
        ("timestamp", 1, _O, "uint64", None, None),
        ("metrics", 2, _R, "message", "Payload.Metric", None),
        ("seq", 3, _O, "uint64", None, None),
        ("uuid", 4, _O, "string", None, None),
        ("body", 5, _O, "bytes", None, None),
    ]),
    ("Payload.Template", [
        ("version", 1, _O, "string", None, None),
        ("metrics", 2, _R, "message", "Payload.Metric", None),
        ("parameters", 3, _R, "message", "Payload.Template.Parameter", None),
        ("template_ref", 4, _O, "string", None, None),
        ("is_definition", 5, _O, "bool", None, None),
    ]),
    ("Payload.Template.Parameter", [
        ("name", 1, _O, "string", None, None),
        ("type", 2, _O, "uint32", None, None),
        *_scalar_values(3),
    ]),
    ("Payload.DataSet", [
        ("num_of_columns", 1, _O, "uint64", None, None),
        ("columns", 2, _R, "string", None, None),
        ("types", 3, _R, "uint32", None, None),
        ("rows", 4, _R, "message", "Payload.DataSet.Row", None),
    ]),
    ("Payload.DataSet.DataSetValue", [
        *_scalar_values(1),
    ]),
    ("Payload.DataSet.Row", [
        ("elements", 1, _R, "message", "Payload.DataSet.DataSetValue", None),
    ]),
    ("Payload.PropertyValue", [
        ("type", 1, _O, "uint32", None, None),
        ("is_null", 2, _O, "bool", None, None),
        *_scalar_values(3),
        ("propertyset_value", 9, _O, "message", "Payload.PropertySet", _VALUE),
        ("propertysets_value", 10, _O, "message", "Payload.PropertySetList", _VALUE),
    ]),
    ("Payload.PropertySet", [
        ("keys", 1, _R, "string", None, None),
        ("values", 2, _R, "message", "Payload.PropertyValue", None),
    ]),
    ("Payload.PropertySetList", [
        ("propertyset", 1, _R, "message", "Payload.PropertySet", None),
    ]),
    ("Payload.MetaData", [
        ("is_multi_part", 1, _O, "bool", None, None),
        ("content_type", 2, _O, "string", None, None),
        ("size", 3, _O, "uint64", None, None),
        ("seq", 4, _O, "uint64", None, None),
        ("file_name", 5, _O, "string", None, None),
        ("file_type", 6, _O, "string", None, None),
        ("md5", 7, _O, "string", None, None),
        ("description", 8, _O, "string", None, None),
    ]),
    ("Payload.Metric", [
        ("name", 1, _O, "string", None, None),
        ("alias", 2, _O, "uint64", None, None),
        ("timestamp", 3, _O, "uint64", None, None),
        ("datatype", 4, _O, "uint32", None, None),
        ("is_historical", 5, _O, "bool", None, None),
        ("is_transient", 6, _O, "bool", None, None),
        ("is_null", 7, _O, "bool", None, None),
        ("metadata", 8, _O, "message", "Payload.MetaData", None),
        ("properties", 9, _O, "message", "Payload.PropertySet", None),
        *_scalar_values(10),
        ("bytes_value", 16, _O, "bytes", None, _VALUE),
        ("dataset_value", 17, _O, "message", "Payload.DataSet", _VALUE),
        ("template_value", 18, _O, "message", "Payload.Template", _VALUE),
    ]),
]
_PACKAGE = "org.eclipse.tahu.protobuf"
_lock = threading.Lock()
_payload_class: Any = None


def _build() -> Any:
    """The Payload message class, built from :data:`_SCHEMA` once."""
    global _payload_class
    with _lock:
        if _payload_class is not None:
            return _payload_class
        try:
            from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
        except ImportError as exc:
            raise MissingDependency("google.protobuf", "sparkplug") from exc
        fdp = descriptor_pb2.FileDescriptorProto(
            name="unsflow/sparkplug_b.proto", package=_PACKAGE, syntax="proto2")
        fdp_types = descriptor_pb2.FieldDescriptorProto
        made: dict[str, Any] = {}
        for path, fields in _SCHEMA:
            parent, _, name = path.rpartition(".")
            container = made[parent].nested_type if parent else fdp.message_type
            msg = container.add(name=name)
            made[path] = msg
            oneofs: dict[str, int] = {}
            for fname, number, label, ftype, type_name, oneof in fields:
                f = msg.field.add(
                    name=fname, number=number,
                    label=getattr(fdp_types, "LABEL_" + label.upper()),
                    type=getattr(fdp_types, "TYPE_" + ftype.upper()))
                if type_name:
                    f.type_name = f".{_PACKAGE}.{type_name}"
                if oneof:
                    if oneof not in oneofs:
                        oneofs[oneof] = len(msg.oneof_decl)
                        msg.oneof_decl.add(name=oneof)
                    f.oneof_index = oneofs[oneof]
        pool = descriptor_pool.DescriptorPool()
        pool.Add(fdp)
        descriptor = pool.FindMessageTypeByName(f"{_PACKAGE}.Payload")
        _payload_class = message_factory.GetMessageClass(descriptor)
        return _payload_class


def decode_payload(data: bytes) -> Any:
    """A Sparkplug B payload (protobuf message); DecodeError when it is not one."""
    from google.protobuf.message import Error as ProtobufError

    cls = _payload_class or _build()
    payload = cls()
    try:
        payload.ParseFromString(data)
    except (ProtobufError, ValueError) as exc:  # DecodeError is a protobuf Error
        raise DecodeError(f"payload is not a Sparkplug B protobuf payload: {exc}") from None
    return payload


# ------------------------------------------------------------- values out

def _float32(value: float) -> float:
    """The shortest decimal that is the same float32 (1.100000023841858 -> 1.1)."""
    if not math.isfinite(value):
        return value
    pack, unpack = struct.pack, struct.unpack
    for digits in range(6, 10):
        short = float(f"{value:.{digits}g}")
        if unpack("<f", pack("<f", short))[0] == value:
            return short
    return value


def _signed(raw: int, bits: int) -> int:
    # Masked first: some encoders put Int8 -1 into the 32-bit field as 0xFFFFFFFF, others as 0xFF.
    raw &= (1 << bits) - 1
    return raw - (1 << bits) if raw >> (bits - 1) else raw


def _scalar(datatype: int, field: str | None, raw: Any) -> Any:
    if field is None:
        return None
    bits = _SIGNED_BITS.get(datatype)
    if bits is not None:
        return _signed(int(raw), bits)
    if field == "float_value":
        return _float32(raw)
    if field == "bytes_value":
        fmt = _ARRAY_FORMATS.get(datatype)
        if fmt is not None:
            return _array(raw, fmt, datatype)
        if datatype == 32:  # BooleanArray: uint32 count, then bits, most significant first
            count = int.from_bytes(raw[:4], "little")
            bits_ = [bool(byte >> (7 - i) & 1) for byte in raw[4:] for i in range(8)]
            if len(bits_) < count:
                raise DecodeError(f"BooleanArray of {count} values holds only {len(bits_)} bits")
            return bits_[:count]
        if datatype == 33:  # StringArray: NUL-terminated UTF-8 strings
            if raw and not raw.endswith(b"\0"):
                raise DecodeError("StringArray does not end with NUL")
            return [s.decode("utf-8", "replace") for s in raw.split(b"\0")[:-1]]
        return base64.b64encode(raw).decode("ascii")  # Bytes, File
    return raw


def _array(raw: bytes, fmt: str, datatype: int) -> list[Any]:
    size = struct.calcsize(fmt)
    if len(raw) % size:
        raise DecodeError(f"{DATATYPES[datatype]} of {len(raw)} bytes is not a whole number "
                          f"of {size}-byte values")
    values = list(struct.unpack(f"<{len(raw) // size}{fmt}", raw))
    return [_float32(v) for v in values] if fmt == "f" else values


def _oneof_value(obj: Any, datatype: int) -> Any:
    field = obj.WhichOneof("value")
    return _scalar(datatype, field, getattr(obj, field) if field else None)


def property_set(ps: Any) -> dict[str, Any]:
    """A PropertySet as a dict (nested sets as dicts, set lists as lists)."""
    out: dict[str, Any] = {}
    for key, pv in zip(ps.keys, ps.values):
        if pv.is_null:
            out[key] = None
            continue
        field = pv.WhichOneof("value")
        if field == "propertyset_value":
            out[key] = property_set(pv.propertyset_value)
        elif field == "propertysets_value":
            out[key] = [property_set(p) for p in pv.propertysets_value.propertyset]
        else:
            out[key] = _scalar(pv.type, field, getattr(pv, field) if field else None)
    return out


def _dataset(ds: Any) -> dict[str, Any]:
    types = list(ds.types)
    rows = [[_oneof_value(el, types[i] if i < len(types) else 0)
             for i, el in enumerate(row.elements)] for row in ds.rows]
    return {"columns": list(ds.columns), "types": [DATATYPES.get(t, str(t)) for t in types],
            "rows": rows}


def _template(t: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if t.HasField("template_ref"):
        out["template_ref"] = t.template_ref
    if t.HasField("version"):
        out["version"] = t.version
    if t.is_definition:
        out["is_definition"] = True
    if t.parameters:
        out["parameters"] = {p.name: _oneof_value(p, p.type) for p in t.parameters}
    out["metrics"] = {m.name: metric_value(m, m.datatype) for m in t.metrics}
    return out


def metric_value(metric: Any, datatype: int) -> Any:
    """A metric's value as JSON-able Python: ints, floats, bools, text (Bytes and File as
    base64), lists (arrays), dicts (DataSet, Template); None when it is null.

    ``datatype`` is the metric's own, or the one its BIRTH announced (DATA may leave it out).
    """
    if metric.is_null:
        return None
    field = metric.WhichOneof("value")
    if field == "dataset_value":
        return _dataset(metric.dataset_value)
    if field == "template_value":
        return _template(metric.template_value)
    return _scalar(datatype, field, getattr(metric, field) if field else None)


# -------------------------------------------------------------- encoding

_FIELD_OF: dict[int, str] = {
    **dict.fromkeys((1, 2, 3, 5, 6, 7), "int_value"), **dict.fromkeys((4, 8, 13), "long_value"),
    9: "float_value", 10: "double_value", 11: "boolean_value",
    **dict.fromkeys((12, 14, 15), "string_value"), **dict.fromkeys((17, 18), "bytes_value"),
}


def encode_payload(*, seq: int | None = None, timestamp: int | None = None,
                   metrics: Iterable[Mapping[str, Any]] = ()) -> bytes:
    """A payload of scalar metrics: each a mapping with ``name`` and/or ``alias``,
    ``datatype`` (a name), ``value`` (None: a null metric), optional ``timestamp``."""
    cls = _payload_class or _build()
    p = cls()
    if timestamp is not None:
        p.timestamp = timestamp
    if seq is not None:
        p.seq = seq
    for spec in metrics:
        m = p.metrics.add()
        if spec.get("name") is not None:
            m.name = spec["name"]
        if spec.get("alias") is not None:
            m.alias = spec["alias"]
        if spec.get("timestamp") is not None:
            m.timestamp = spec["timestamp"]
        dt = DATATYPE_IDS[spec["datatype"]]
        m.datatype = dt
        value = spec.get("value")
        if value is None:
            m.is_null = True
            continue
        field = _FIELD_OF.get(dt)
        if field is None:
            raise ValueError(f"encode_payload: datatype {spec['datatype']} is not a scalar")
        if dt in _SIGNED_BITS:
            value &= (1 << (64 if dt == 4 else 32)) - 1
        setattr(m, field, value)
    return bytes(p.SerializeToString())


def rebirth_payload(timestamp: int) -> bytes:
    """The NCMD payload asking an edge node to publish its BIRTH certificates again."""
    return encode_payload(timestamp=timestamp, metrics=[
        {"name": "Node Control/Rebirth", "datatype": "Boolean", "value": True,
         "timestamp": timestamp}])
