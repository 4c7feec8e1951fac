"""Fault scenario 9: a flood of malformed payloads mixed with good ones.

`unsflow run` (parse JSON strictly, then Parquet on local disk) takes a
numbered QoS 1 stream in which every third message is bad in one of the ways
a plant's devices get it wrong. Every good message must become a row, every
bad one must land in the dead letter with a reason naming its problem, the
pipeline must keep running, and the lake must stay one readable table.
"""

from __future__ import annotations

import base64
import collections
import json
import os
import re
import time
from pathlib import Path

import pytest

from tests.e2e.helpers import UnsflowProcess, read_rows, report_scenario, wait_for_rows
from unsflow.testing import publish

pytestmark = pytest.mark.e2e

TOTAL = 6000
BIG = 3 * 1024 * 1024  # a multi-megabyte payload


def bad_payload(seq: int, kind: str) -> bytes:
    """A payload of ``kind`` that still shows its seq to the test (not to a parser)."""
    head = f'{{"seq": {seq}, '.encode()
    return {
        "not-json": head + b'"value": }',
        "bad-utf8": head + b'"value": "\xff\xfe"}',
        "nan": head + b'"value": NaN}',
        "infinity": head + b'"value": -Infinity}',
        "deep": b"[" * 5000 + head + b'"value": 1}' + b"]" * 5000,
        "huge-garbage": head + b'"value": ' + b"9" * BIG + b"x}",
        "truncated": head + b'"value": 1.5',
        "csv-line": f"press-1,vib-1,{seq},1767268800000".encode(),
        "empty": b"",
    }[kind]


KINDS = ["not-json", "bad-utf8", "nan", "infinity", "deep", "huge-garbage", "truncated",
         "csv-line", "empty"]
# What the dead letter's error must say for each kind (the reason, in plain words).
REASONS = {
    "not-json": "not valid JSON", "bad-utf8": "not valid UTF-8", "nan": "not valid JSON",
    "infinity": "not valid JSON", "deep": "not valid JSON", "huge-garbage": "not valid JSON",
    "truncated": "not valid JSON", "csv-line": "not valid JSON", "empty": "empty payload",
}


def plan() -> list[tuple[int, str | None]]:
    """(seq, bad kind or None) for each message; every third one is bad."""
    out = []
    for seq in range(TOTAL):
        kind = KINDS[(seq // 3) % len(KINDS)] if seq % 3 == 2 else None
        if kind == "huge-garbage" and seq > 1000:
            kind = "not-json"  # a handful of 3 MB payloads is the point, not 700 MB through the broker
        out.append((seq, kind))
    return out


def good_payload(seq: int) -> bytes:
    # Wrong field types are data, not errors: "value" is sometimes text, sometimes a
    # number, sometimes an object; the lake must still read as one table.
    value: object = seq * 0.5
    if seq % 50 == 1:
        value = "HIGH"
    elif seq % 50 == 4:
        value = {"x": seq}
    elif seq in (7, 3007):
        value = "y" * (2 * 1024 * 1024)  # a valid multi-megabyte record is written, not refused
    return json.dumps({"seq": seq, "value": value}).encode()


def dead_letter_by_seq(path: Path) -> tuple[dict[int, list[dict]], list[dict]]:
    by_seq: dict[int, list[dict]] = collections.defaultdict(list)
    without_seq: list[dict] = []
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        raw = entry.get("payload")
        if raw is None:
            raw = base64.b64decode(entry["payload_base64"]).decode("utf-8", "replace")
        m = re.search(r'"seq": (\d+)', raw[:6000]) or re.match(r"press-1,vib-1,(\d+),", raw)
        if m:
            by_seq[int(m.group(1))].append(entry)
        else:
            without_seq.append(entry)
    return by_seq, without_seq


def test_malformed_flood_goes_to_the_dead_letter_and_good_data_flows(mqtt_broker, topic_prefix, tmp_path):
    topic = f"{topic_prefix}/press/vibration"
    config = {
        "mqtt-broker": {"host": mqtt_broker.host, "port": mqtt_broker.port,
                        "client-id": f"flood-{os.getpid()}-{time.time_ns()}", "clean-start": False},
        "processors": {"strict": {"type": "parse", "format": "json"}},
        "targets": {"lake": {"type": "s3", "local-path": str(tmp_path / "lake"),
                             "processors": ["strict"], "batching": {"max-age": 0.5}}},
        "subscriptions": {f"{topic_prefix}/#": {"qos": 1, "target": "lake"}},
        "dead-letter": {"path": str(tmp_path / "dead.jsonl")},
        "http": {"port": 0},
    }
    (tmp_path / "flood.json").write_text(json.dumps(config))
    messages = plan()
    good = {seq for seq, kind in messages if kind is None}
    bad = {seq: kind for seq, kind in messages if kind is not None}
    proc = UnsflowProcess(["run", str(tmp_path / "flood.json")], cwd=tmp_path, env={}).start()
    try:
        proc.wait_for_log("subscribed:")
        sent = publish(mqtt_broker.host, mqtt_broker.port,
                       ((topic, good_payload(s) if k is None else bad_payload(s, k)) for s, k in messages),
                       qos=1, timeout=120)
        assert sent == TOTAL
        rows = wait_for_rows(tmp_path / "lake",
                             lambda r: len({x["seq"] for x in r}) >= len(good), timeout=120)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            dead_path = tmp_path / "dead.jsonl"
            if dead_path.exists() and len(dead_path.read_text().splitlines()) >= len(bad):
                break
            time.sleep(0.3)
        assert proc.proc.poll() is None, "the pipeline stopped:\n" + proc.output[-3000:]
    finally:
        code = proc.terminate()
    assert code == 0, proc.output[-3000:]

    delivered = collections.Counter(r["seq"] for r in rows)
    assert set(delivered) == good, f"bad seqs in the lake: {sorted(set(delivered) - good)[:10]}"
    by_seq, without_seq = dead_letter_by_seq(tmp_path / "dead.jsonl")
    # Empty payloads carry no seq: each must be there once, with its reason.
    empties = [s for s, k in bad.items() if k == "empty"]
    assert len(without_seq) == len(empties)
    assert all(e["error"].startswith("empty payload") or "empty" in e["error"] for e in without_seq)
    for seq, kind in bad.items():
        if kind == "empty":
            continue
        entries = by_seq.get(seq)
        assert entries, f"seq {seq} ({kind}) is neither in the lake nor in the dead letter"
        entry = entries[0]
        assert REASONS[kind] in entry["error"], (kind, entry["error"])
        assert entry["stage"] == "processor:strict" and entry["topic"] == topic
    # The lake is one table whatever the value types were.
    table_rows = read_rows(tmp_path / "lake", columns=["seq", "value"])
    assert len(table_rows) == len(rows)
    dead = collections.Counter({s: len(v) for s, v in by_seq.items()})
    dead.update({-1 - i: 1 for i in range(len(without_seq))})  # the empties, counted once each
    report_scenario("9. malformed flood mixed with good", TOTAL, delivered, dead,
                    expected=good | {s for s, k in bad.items() if k != "empty"}
                    | {-1 - i for i in range(len(empties))},
                    note=f"{len(bad)} bad of {len(KINDS)} kinds, {len(empties)} empty")
