"""The compiled hot paths (unsflow-speedups, Rust) give what the Python reference gives.

For the same bytes, ``scan_publishes`` returns the same columns and acks and refuses
the same malformed packets; for the same payloads, ``json_parquet`` writes the same
Parquet table with and without the compiled ``json_columns`` (which leaves every
case it does not take to the Python path). Where no Rust toolchain exists the
module cannot be built, and these tests skip; where one exists, setup.sh builds it
and a missing module fails here.
"""

from __future__ import annotations

import json
import shutil
import struct
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unsflow._speedups import speedups
from unsflow.lake.parquet import json_parquet
from unsflow.message import Message
from unsflow.sources import _mqtt_wire as wire

fast = speedups()
pytestmark = pytest.mark.skipif(fast is None and shutil.which("cargo") is None,
                                reason="no Rust toolchain: the compiled module cannot exist")


def test_the_compiled_module_is_installed_where_rust_is() -> None:
    assert fast is not None, "cargo is here but unsflow-speedups is not installed: " \
                             "run scripts/setup.sh"


# ------------------------------------------------------------------ MQTT PUBLISH decoding

user_property = st.tuples(st.text(max_size=5), st.text(max_size=5))


def _property_block(content_type: str | None, users: list[tuple[str, str]],
                    alias: int | None) -> bytes:
    out = b""
    if content_type is not None:
        raw = content_type.encode()
        out += b"\x03" + struct.pack("!H", len(raw)) + raw
    for key, value in users:
        k, v = key.encode(), value.encode()
        out += b"\x26" + struct.pack("!H", len(k)) + k + struct.pack("!H", len(v)) + v
    if alias is not None:
        out += b"\x23" + struct.pack("!H", alias)
    return out


publishes = st.lists(st.tuples(
    st.text(min_size=1, max_size=30).filter(lambda t: "\x00" not in t),
    st.binary(max_size=300),
    st.integers(0, 2), st.integers(1, 65535), st.booleans(), st.booleans(),
    st.none() | st.text(max_size=8), st.lists(user_property, max_size=2),
    st.none() | st.integers(1, 10)), max_size=20)


def both(data: bytes, pos: int, v5: bool, limit: int) -> tuple[Any, Any]:
    results = []
    for scan, cache in ((wire.scan_publishes, {}), (fast.scan_publishes, fast.TopicCache())):
        try:
            results.append(scan(data, pos, v5, limit, cache))
        except wire.MalformedPacket as exc:
            results.append(("malformed", str(exc)))
    return results[0], results[1]


@given(publishes, st.booleans(), st.integers(1, 25), st.integers(0, 40))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_scan_publishes_compiled_equals_the_reference(packets, v5, limit, cut) -> None:
    data = b"".join(wire.encode_publish(
        topic, payload, qos, mid, v5=v5, retain=retain, dup=dup,
        properties=_property_block(ctype, users, alias) if v5 else b"")
        for topic, payload, qos, mid, retain, dup, ctype, users, alias in packets)
    data += b"\xd0\x00"  # a PINGRESP: the scan stops there
    python, compiled = both(data, 0, v5, limit)
    assert python == compiled
    truncated = data[:max(0, len(data) - cut)]  # an incomplete packet at the end
    python, compiled = both(truncated, 0, v5, limit)
    assert python == compiled


@pytest.mark.parametrize("data, v5", [
    (b"\x30\x05\x00\x09abc", False),                     # topic longer than the packet
    (b"\x36\x05\x00\x01a\x00\x01", False),                  # QoS 3
    (b"\x30\x04\x00\x02\xff\xfe", False),                   # topic not UTF-8
    (b"\x30\xff\xff\xff\xff\x01", False),                   # remaining length of 5 bytes
    (b"\x30\x05\x00\x01a\x05\x7f", True),                   # unknown property id
    (b"\x30\x06\x00\x01a\x09\x03\x00", True),               # property runs past its block
    (b"\x32\x04\x00\x01a\x00", False),                      # packet id cut short
])
def test_both_scanners_refuse_the_same_malformed_packets(data: bytes, v5: bool) -> None:
    python, compiled = both(data, 0, v5, 10)
    assert python[0] == "malformed" and compiled[0] == "malformed", (python, compiled)


def test_scan_publishes_shares_one_str_per_topic() -> None:
    data = b"".join(wire.encode_publish("a/b", b"%d" % i) for i in range(3))
    _, topics, *_ = fast.scan_publishes(data, 0, False, 10, fast.TopicCache())
    assert topics == ["a/b"] * 3 and topics[0] is topics[2]


# ------------------------------------------------------------------ JSON -> Parquet

float_texts = st.floats(allow_nan=False, allow_infinity=False).flatmap(
    lambda f: st.sampled_from([repr(f), f"{f:.17g}", f"{f:e}", f"{f:.3f}"]))
scalar_texts = st.one_of(
    st.just("null"), st.sampled_from(["true", "false", "-0", "0", "-0.0", "1e5", "1E400",
                                      "18446744073709551615", "18446744073709551616",
                                      "9223372036854775807", "-9223372036854775809"]),
    st.integers(-(2**70), 2**70).map(str), float_texts,
    st.text(max_size=10).map(lambda t: orjson.dumps(t).decode()),
    st.sampled_from(['"\\ud83d\\ude00"', '"\\u00e9\\n"', '"\\ud800"', "[1]", '{"x":1}']))
keys = st.sampled_from(["a", "b", "value", "ts", "_topic", "é"])


def _object(fields: list[tuple[str, str]]) -> bytes:
    return ("{" + ",".join(f"{orjson.dumps(k).decode()}:{v}" for k, v in fields) + "}").encode()


payload_batches = st.one_of(
    st.lists(st.lists(st.tuples(keys, scalar_texts), max_size=4).map(_object),
             min_size=1, max_size=12),
    # a steady stream: the same fields, same kinds, varying values
    st.lists(st.tuples(st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False,
                                                                    allow_infinity=False),
                       st.text(max_size=5), st.booleans()).map(
        lambda v: orjson.dumps({"seq": v[0], "value": v[1], "machine": v[2], "ok": v[3]})),
        min_size=1, max_size=30),
    st.lists(st.binary(max_size=20), min_size=1, max_size=5),
    # spacing, indentation, escaped non-ASCII, long strings
    st.lists(st.tuples(st.dictionaries(st.text(max_size=4), st.none() | st.booleans()
                                       | st.integers(-(2**63), 2**63 - 1)
                                       | st.floats(allow_nan=False, allow_infinity=False)
                                       | st.text(max_size=300), max_size=4),
                       st.sampled_from([None, 0, 2]), st.booleans()).map(
        lambda v: json.dumps(v[0], indent=v[1], ensure_ascii=v[2]).encode()),
        min_size=1, max_size=8),
)


def _table(messages_payloads: list[bytes], monkeypatch, compiled: bool) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setenv("UNSFLOW_SPEEDUPS", "1" if compiled else "0")
    messages = [Message(f"t/{i % 2}", p, received_at=1_700_000_000.0 + i / 7)
                for i, p in enumerate(messages_payloads)]
    try:
        data = json_parquet(messages, "zstd", frozenset({"_topic", "_received_at"}))
    except (TypeError, ValueError, OverflowError, pa.ArrowException) as exc:
        return ("error", type(exc).__name__)
    return None if data is None else pq.read_table(pa.BufferReader(data))


@given(payload_batches)
@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
def test_json_parquet_compiled_equals_the_python_path(monkeypatch, payloads) -> None:
    python = _table(payloads, monkeypatch, compiled=False)
    compiled = _table(payloads, monkeypatch, compiled=True)
    if python is None or isinstance(python, tuple):
        assert compiled == python
        return
    assert compiled is not None and not isinstance(compiled, tuple)
    assert compiled.schema == python.schema
    assert compiled.equals(python)


def test_json_columns_takes_a_steady_stream_and_leaves_the_rest() -> None:
    good = [orjson.dumps({"seq": i, "value": i / 3, "m": "p7", "ok": i % 2 == 0, "x": None})
            for i in range(5)]
    cols = fast.json_columns(good)
    assert [(c[0], c[1]) for c in cols] == [("seq", "int64"), ("value", "float64"),
                                            ("m", "string"), ("ok", "bool"), ("x", "null")]
    for odd in (b'{"a": {"b": 1}}', b'{"a": [1]}', b"[1]", b'{"a": 1, "a": 2}',
                b'{"a": 18446744073709551615}', b"not json", b'{"a": 1e400}', b'{"a": 01}',
                b'{"a": "\\ud800"}', b'{"a": "tab\tinside"}', b'{"a": 1,}', b'{"a": 1} x',
                b'{"a": "\xff"}', b'{"\xc3": 1}', b'{"a": "ok \\n \xe9t\xe9"}',
                b'{"a": "\xed\xa0\x80"}', b'{"a": 1}\xc3\xa9', b'{"a": NaN}', b'{"a": .5}', b'{"a": 1.}', b'{"a": +1}'):
        assert fast.json_columns([good[0], odd]) is None, odd
    (_, kind, _, _, data, _), = fast.json_columns([b'{"a": -0}'])  # orjson: the int 0
    assert kind == "int64" and bytes(data) == bytes(8)
    (_, kind, _, _, data, offsets), = fast.json_columns([b'{"a": "\\u00e9\\ud83d\\ude00\\n"}'])
    assert kind == "string" and bytes(data) == "\u00e9\U0001F600\n".encode()
    mixed = [b'{"a": 1}', b'{"a": "x"}']
    assert fast.json_columns(mixed) is None


def test_json_columns_reuses_big_buffers_only_after_arrow_let_them_go() -> None:
    """Big text buffers go back to a pool when their Arrow column is freed, and serve the
    next batch: a table still alive keeps its bytes whatever is built meanwhile."""
    import gc

    import pyarrow as pa

    from unsflow.lake.parquet import _arrow_columns

    def batch(letter: str, n: int = 300) -> list[bytes]:
        return [orjson.dumps({"i": i, "note": f"{letter}{i:05d}" + letter * 8000,
                              "w": "\u00e9t\u00e9"}) for i in range(n)]

    def table(payloads: list[bytes]) -> Any:
        built = fast.json_columns(payloads)
        return pa.table(_arrow_columns(built, len(payloads)), names=[c[0] for c in built])

    first = table(batch("a"))
    for letter in "bcdbc":  # built, dropped, the buffers reused
        other = table(batch(letter))
        assert other.column("note")[7].as_py() == f"{letter}00007" + letter * 8000
        del other
        gc.collect()
    assert first.column("note").to_pylist() == [f"a{i:05d}" + "a" * 8000 for i in range(300)]
    assert set(first.column("w").to_pylist()) == {"\u00e9t\u00e9"}
