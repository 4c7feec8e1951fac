"""MQTT packets on the wire: the subscribe side's encoder and its batch decoder.

What :class:`~unsflow.sources._mqtt_asyncio.AsyncioMqttClient` sends and reads,
as plain functions over bytes (MQTT 3.1.1 and 5.0, the packets a subscriber
needs). The hot one is :func:`scan_publishes`: it decodes every complete
PUBLISH at the front of a buffer in one pass into columns (topics, payloads,
flags, properties) and builds the acknowledgement of each QoS 1/2 message as
it goes (4 bytes each, in arrival order), so that a socket read of thousands
of messages costs one call, not one call per message.

A compiled version of :func:`scan_publishes` (``unsflow._speedups``, Rust) is
used when it is installed; this one is the reference and the fallback, and a
test checks that both give the same answer for the same bytes.

>>> pkt = encode_publish("a/b", b"hi", qos=1, mid=7)
>>> scan_publishes(pkt, 0, False, 100, {})
(11, ['a/b'], [b'hi'], [2], [None], b'@\\x02\\x00\\x07')
"""

from __future__ import annotations

import struct
from typing import Any

from unsflow.errors import MalformedPacket

__all__ = [
    "AUTH",
    "CONNACK",
    "CONNECT",
    "DISCONNECT",
    "PINGREQ",
    "PINGRESP",
    "PUBACK",
    "PUBCOMP",
    "PUBLISH",
    "PUBREC",
    "PUBREL",
    "SUBACK",
    "SUBSCRIBE",
    "UNSUBACK",
    "UNSUBSCRIBE",
    "MalformedPacket",
    "encode_connect",
    "encode_disconnect",
    "encode_publish",
    "encode_subscribe",
    "encode_unsubscribe",
    "packet_header",
    "parse_properties",
    "scan_publishes",
    "varint",
]

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = \
    8, 9, 10, 11, 12, 13, 14, 15

PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"
# Topics remembered (bytes -> str) per connection: a UNS has a bounded set of topics.
TOPIC_CACHE_SIZE = 65536


def varint(n: int) -> bytes:
    """MQTT's variable byte integer.

    >>> varint(0), varint(127), varint(128), varint(16383)
    (b'\\x00', b'\\x7f', b'\\x80\\x01', b'\\xff\\x7f')
    """
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """(value, position after it); raises MalformedPacket past ``end`` or beyond 4 bytes."""
    value = shift = 0
    for i in range(4):
        if pos + i >= end:
            raise MalformedPacket("variable byte integer runs past the packet")
        byte = data[pos + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos + i + 1
        shift += 7
    raise MalformedPacket("variable byte integer longer than 4 bytes")


def packet_header(data: bytes, pos: int) -> tuple[int, int, int] | None:
    """(first byte, start of the variable header, end of the packet) of the packet at
    ``pos``; None when ``data`` does not hold the whole fixed header yet. The end may lie
    beyond ``len(data)`` (the packet is not complete)."""
    n = len(data)
    length = shift = 0
    for i in range(1, 5):
        if pos + i >= n:
            return None
        byte = data[pos + i]
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return data[pos], pos + i + 1, pos + i + 1 + length
        shift += 7
    raise MalformedPacket("remaining length longer than 4 bytes")


def _utf8(data: bytes, pos: int, end: int) -> tuple[str, int]:
    if pos + 2 > end:
        raise MalformedPacket("string length runs past the packet")
    n = (data[pos] << 8) | data[pos + 1]
    if pos + 2 + n > end:
        raise MalformedPacket("string runs past the packet")
    try:
        return bytes(data[pos + 2:pos + 2 + n]).decode("utf-8"), pos + 2 + n
    except UnicodeDecodeError as exc:
        raise MalformedPacket(f"string is not valid UTF-8 (byte {exc.start})") from None


def _binary(data: bytes, pos: int, end: int) -> tuple[bytes, int]:
    if pos + 2 > end:
        raise MalformedPacket("binary length runs past the packet")
    n = (data[pos] << 8) | data[pos + 1]
    if pos + 2 + n > end:
        raise MalformedPacket("binary data runs past the packet")
    return bytes(data[pos + 2:pos + 2 + n]), pos + 2 + n


# Property id -> (name, kind): the names gmqtt uses, so both clients give the same dicts.
_PROPERTIES: dict[int, tuple[str, str]] = {
    0x01: ("payload_format_id", "B"), 0x02: ("message_expiry_interval", "L"),
    0x03: ("content_type", "s"), 0x08: ("response_topic", "s"),
    0x09: ("correlation_data", "b"), 0x0B: ("subscription_identifier", "v"),
    0x11: ("session_expiry_interval", "L"), 0x12: ("assigned_client_identifier", "s"),
    0x13: ("server_keep_alive", "H"), 0x15: ("auth_method", "s"), 0x16: ("auth_data", "b"),
    0x17: ("request_problem_info", "B"), 0x18: ("will_delay_interval", "L"),
    0x19: ("request_response_info", "B"), 0x1A: ("response_info", "s"),
    0x1C: ("server_reference", "s"), 0x1F: ("reason_string", "s"),
    0x21: ("receive_maximum", "H"), 0x22: ("topic_alias_maximum", "H"),
    0x23: ("topic_alias", "H"), 0x24: ("max_qos", "B"), 0x25: ("retain_available", "B"),
    0x26: ("user_property", "p"), 0x27: ("maximum_packet_size", "L"),
    0x28: ("wildcard_subscription_available", "B"), 0x29: ("sub_id_available", "B"),
    0x2A: ("shared_subscription_available", "B"),
}
_FIXED = {"B": 1, "H": 2, "L": 4}


def parse_properties(data: bytes, pos: int, end: int) -> tuple[dict[str, list[Any]], int]:
    """An MQTT 5 property block at ``pos``: ({name: [values]}, position after it).

    Every property is a list of its values (``user_property`` holds (key, value)
    pairs), as gmqtt gives them.

    >>> parse_properties(b"\\x05\\x03\\x00\\x02js", 0, 6)
    ({'content_type': ['js']}, 6)
    """
    length, pos = _read_varint(data, pos, end)
    stop = pos + length
    if stop > end:
        raise MalformedPacket("properties run past the packet")
    props: dict[str, list[Any]] = {}
    while pos < stop:
        ident = data[pos]
        pos += 1
        known = _PROPERTIES.get(ident)
        if known is None:
            raise MalformedPacket(f"unknown property id {ident:#x}")
        name, kind = known
        value: Any
        if kind in _FIXED:
            size = _FIXED[kind]
            if pos + size > stop:
                raise MalformedPacket(f"property {name} runs past the properties")
            value = int.from_bytes(data[pos:pos + size], "big")
            pos += size
        elif kind == "s":
            value, pos = _utf8(data, pos, stop)
        elif kind == "b":
            value, pos = _binary(data, pos, stop)
        elif kind == "v":
            value, pos = _read_varint(data, pos, stop)
        else:  # a user property: a pair of strings
            key, pos = _utf8(data, pos, stop)
            text, pos = _utf8(data, pos, stop)
            value = (key, text)
        props.setdefault(name, []).append(value)
    return props, stop


_ACK_PREFIX = (b"", b"\x40\x02", b"\x50\x02")  # PUBACK / PUBREC, remaining length 2, by QoS


def scan_publishes(data: bytes, pos: int, v5: bool, limit: int,
                   topics_seen: dict[bytes, str]) -> tuple[int, list[str], list[bytes],
                                                          list[int], list[Any], bytes]:
    """Decode the PUBLISH packets at ``pos``, up to ``limit`` of them.

    Stops at the end of the data, at an incomplete packet or at the first
    packet that is not a PUBLISH. Returns ``(position, topics, payloads,
    flags, properties, acks)``: per message its topic, payload, flags (the low
    nibble of its first byte: DUP, QoS, RETAIN) and its MQTT 5 properties
    (None when it has none: the usual case, and always for 3.1.1); ``acks``
    is the PUBACK (QoS 1) or PUBREC (QoS 2) of every QoS 1/2 message in
    order, 4 bytes each (MQTT 5 omits a success reason code), ready to send.

    ``topics_seen`` remembers topic bytes -> str (bounded by the caller).
    A topic alias (a property) is returned in the properties with the topic
    as sent (maybe empty); the caller resolves it. Raises
    :class:`MalformedPacket` for a PUBLISH that is not valid.
    """
    n = len(data)
    topics: list[str] = []
    payloads: list[bytes] = []
    flags: list[int] = []
    props: list[Any] = []
    acks = bytearray()
    seen_get = topics_seen.get
    while pos + 1 < n and len(topics) < limit:
        first = data[pos]
        if first >> 4 != PUBLISH:
            break
        byte = data[pos + 1]
        if byte < 0x80:
            start = pos + 2
            end = start + byte
        else:
            header = packet_header(data, pos)
            if header is None:
                break
            _, start, end = header
        if end > n:
            break
        if start + 2 > end:
            raise MalformedPacket("PUBLISH without a topic")
        p = start + 2 + ((data[start] << 8) | data[start + 1])
        raw = data[start + 2:p]
        topic = seen_get(raw)
        if topic is None:
            try:
                topic = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise MalformedPacket(f"PUBLISH topic is not valid UTF-8 (byte {exc.start})") \
                    from None
            if len(topics_seen) < TOPIC_CACHE_SIZE:
                topics_seen[raw] = topic
        qos = (first >> 1) & 3
        if qos:
            if qos == 3:
                raise MalformedPacket("PUBLISH with QoS 3")
            acks += _ACK_PREFIX[qos]
            acks += data[p:p + 2]
            p += 2
        prop: Any = None
        if v5:
            if p < end and data[p] == 0:
                p += 1
            else:
                prop, p = parse_properties(data, p, end)
        if p > end:
            raise MalformedPacket("PUBLISH header runs past the packet")
        topics.append(topic)
        payloads.append(data[p:end])
        flags.append(first & 0x0F)
        props.append(prop)
        pos = end
    return pos, topics, payloads, flags, props, bytes(acks)


# ------------------------------------------------------------------ what the client sends


def _string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("!H", len(raw)) + raw


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + varint(len(body)) + body


def encode_connect(client_id: str, *, v5: bool, clean_start: bool, keepalive: int,
                   session_expiry: int | None = None, receive_maximum: int | None = None,
                   username: str | None = None, password: str | None = None) -> bytes:
    """A CONNECT packet (no will)."""
    flags = 0x02 if clean_start else 0
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    body = _string("MQTT") + bytes([5 if v5 else 4, flags]) + struct.pack("!H", keepalive)
    if v5:
        props = b""
        if session_expiry is not None:
            props += b"\x11" + struct.pack("!L", session_expiry)
        if receive_maximum is not None:
            props += b"\x21" + struct.pack("!H", receive_maximum)
        body += varint(len(props)) + props
    body += _string(client_id)
    if username is not None:
        body += _string(username)
    if password is not None:
        raw = password.encode("utf-8")
        body += struct.pack("!H", len(raw)) + raw
    return _packet(CONNECT << 4, body)


def encode_subscribe(mid: int, filters: dict[str, int], *, v5: bool) -> bytes:
    """A SUBSCRIBE of ``filters`` ({filter: qos}); no-local, retain-as-published and retain
    handling at their defaults (off, off, 0)."""
    body = struct.pack("!H", mid) + (b"\x00" if v5 else b"")
    for flt, qos in filters.items():
        body += _string(flt) + bytes([qos])
    return _packet((SUBSCRIBE << 4) | 0x02, body)


def encode_unsubscribe(mid: int, filters: list[str], *, v5: bool) -> bytes:
    body = struct.pack("!H", mid) + (b"\x00" if v5 else b"")
    for flt in filters:
        body += _string(flt)
    return _packet((UNSUBSCRIBE << 4) | 0x02, body)


def encode_publish(topic: str, payload: bytes, qos: int = 0, mid: int = 0, *,
                   v5: bool = False, retain: bool = False, dup: bool = False,
                   properties: bytes = b"") -> bytes:
    """A PUBLISH (what a broker sends; for tests and the benchmarks' scripted peers)."""
    body = _string(topic) + (struct.pack("!H", mid) if qos else b"")
    if v5:
        body += varint(len(properties)) + properties
    first = (PUBLISH << 4) | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    return _packet(first, body + payload)


def encode_disconnect() -> bytes:
    return DISCONNECT_PACKET
