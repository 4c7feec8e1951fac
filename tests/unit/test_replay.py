"""Reading a dead-letter file for replay: what is replayed, what is skipped and why."""

from __future__ import annotations

import base64
import json

import pytest

from unsflow.config.loading import parse_config
from unsflow.engine.deadletter import dead_letter_line
from unsflow.engine.replay import DeadLetterEntry, read_dead_letter, replay
from unsflow.errors import UnsflowError
from unsflow.message import Failure, Message


def line(topic: str, payload: bytes, qos: int = 1, source: str = "uns") -> bytes:
    return dead_letter_line(Failure(Message(topic, payload, qos, source_id=source), "bad",
                                    "target:lake"))


def test_reads_what_the_dead_letter_wrote_and_reports_the_rest(tmp_path):
    path = tmp_path / "dead.jsonl"
    path.write_bytes(b"".join([
        line("a/b", b"text \xe2\x9c\x93"),                    # 1: text
        line("a/c", b"\xff\x00binary", qos=0),                 # 2: base64, QoS 0
        b"{not json\n",                                        # 3
        b"\n",                                                 # blank: ignored
        line("k", b"{}", source="orders"),                    # 5: a Kafka source's
        json.dumps({"topic": "a/+", "payload": "x"}).encode() + b"\n",  # 6: a filter
        json.dumps({"topic": "a/d", "payload_base64": "@@"}).encode() + b"\n",  # 7
        json.dumps({"topic": "a/e"}).encode() + b"\n",         # 8
        b"[1, 2]\n",                                           # 9
    ]))
    entries, skipped = read_dead_letter(path, topic_prefix="replay/")
    assert entries == [DeadLetterEntry(1, "replay/a/b", "text ✓".encode(), 1),
                       DeadLetterEntry(2, "replay/a/c", b"\xff\x00binary", 0)]
    assert [n for n, _ in skipped] == [3, 5, 6, 7, 8, 9]
    why = dict(skipped)
    assert why[3].startswith("not JSON")
    assert "from source 'orders'" in why[5]
    assert "wildcards" in why[6]
    assert "not base64" in why[7]
    assert why[8] == "neither 'payload' nor 'payload_base64'"
    assert why[9] == "not a JSON object"
    assert base64.b64decode(json.loads(line("x", b"\xff"))["payload_base64"]) == b"\xff"


def test_dry_run_publishes_nothing_and_leaves_the_file(tmp_path):
    path = tmp_path / "dead.jsonl"
    path.write_bytes(line("a/b", b"1") + line("a/c", b"2"))
    cfg = parse_config({"targets": {"t": {"type": "file", "path": str(tmp_path / "o")}},
                        "subscriptions": {"a/#": {"target": "t"}}}, env={})
    report = replay(path, cfg, dry_run=True)
    assert (report.entries, report.published, report.renamed_to) == (2, 0, None)
    assert path.exists()


def test_a_broker_that_is_not_there_leaves_the_messages_in_a_file_named_in_the_error(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    path = tmp_path / "dead.jsonl"
    original = line("a/b", b"1")
    path.write_bytes(original)
    cfg = parse_config({"mqtt-broker": {"host": "127.0.0.1", "port": closed},
                        "targets": {"t": {"type": "file", "path": str(tmp_path / "o")}},
                        "subscriptions": {"a/#": {"target": "t"}}}, env={})
    with pytest.raises(UnsflowError, match=r"replaying-\d{8}T\d{6}Z.*replay that file") as err:
        replay(path, cfg, timeout=5)
    assert not path.exists()
    (kept,) = tmp_path.glob("dead.jsonl.replaying-*")
    assert str(kept) in str(err.value)
    assert kept.read_bytes() == original
