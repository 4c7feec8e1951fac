"""What OPC UA values become in records: JSON-able Python the lake can hold.

See the datatype table of docs/components/opcua.md.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import enum
import uuid
from typing import Any

__all__ = ["epoch_ms", "opcua_value", "status_name"]


def epoch_ms(value: dt.datetime | None) -> int | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return int(value.timestamp() * 1000)


def opcua_value(value: Any) -> Any:
    """An OPC UA value as JSON-able Python: numbers, bools and text as they are; DateTime as
    epoch ms; ByteString as base64; Guid, NodeId, QualifiedName as text; LocalizedText as its
    text; structures as objects; an undecodable structure as its type id and base64 body.

    >>> import datetime as dt
    >>> opcua_value([1, 2.5, dt.datetime(2024, 1, 2, tzinfo=dt.timezone.utc), b"\\x00\\xff"])
    [1, 2.5, 1704153600000, 'AP8=']
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return int(value) if isinstance(value, enum.IntEnum) else value
    if isinstance(value, (list, tuple)):
        return [opcua_value(v) for v in value]
    if isinstance(value, dt.datetime):
        return epoch_ms(value)
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    kind = type(value).__name__
    if kind == "LocalizedText":
        return value.Text
    if kind in ("NodeId", "ExpandedNodeId", "QualifiedName"):
        return value.to_string()
    if kind == "StatusCode":
        return int(value.value)
    if kind == "Variant":
        return opcua_value(value.Value)
    if kind == "XmlElement":
        return str(value.Value)
    if kind == "ExtensionObject":  # a structure nobody could decode: kept, not dropped
        return {"type_id": value.TypeId.to_string(),
                "body_base64": base64.b64encode(value.Body or b"").decode("ascii")}
    if dataclasses.is_dataclass(value):
        return {f.name: opcua_value(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return str(value)


def status_name(code: int) -> str:
    if code == 0:
        return "Good"
    from asyncua.ua.status_codes import get_name_and_doc

    try:
        return get_name_and_doc(code)[0]
    except KeyError:
        return f"0x{code:08X}"
