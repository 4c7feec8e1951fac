"""Replay over TLS with the credential of the config, as `unsflow deadletter replay` does it."""

from __future__ import annotations

import json

import pytest

from unsflow.components import Context
from unsflow.config.loading import parse_config
from unsflow.engine.deadletter import dead_letter_line
from unsflow.engine.replay import replay
from unsflow.message import Failure, Message
from unsflow.testing import Collector

pytestmark = pytest.mark.integration


def test_replay_uses_the_brokers_tls_and_credential(mqtt_broker, topic_prefix, tmp_path):
    payloads = [b"\x00\x01\xfe binary", "grüße".encode(), b'{"seq": 1}']
    dead = tmp_path / "dead.jsonl"
    dead.write_bytes(b"".join(
        dead_letter_line(Failure(Message(f"{topic_prefix}/m{i}", p, qos, source_id="uns"),
                                 "bad", "target:lake"))
        for i, (p, qos) in enumerate(zip(payloads, (0, 1, 2), strict=True))))
    cfg = parse_config({
        "mqtt-broker": {"host": mqtt_broker.host, "port": mqtt_broker.tls_port,
                        "tls": {"ca-file": mqtt_broker.ca_file}},
        "mqtt-broker-credential": {"secret-name": "uns-login", "provider": "env"},
        "targets": {"lake": {"type": "file", "path": str(tmp_path / "out.jsonl")}},
        "subscriptions": {f"{topic_prefix}/#": {"target": "lake"}},
    }, env={})
    login = json.dumps({"username": mqtt_broker.username, "password": mqtt_broker.password})
    with Collector(mqtt_broker.host, mqtt_broker.port, f"{topic_prefix}/#", qos=2) as out:
        report = replay(dead, cfg, context=Context(env={"UNS_LOGIN": login}), timeout=30)
        got = out.wait(len(payloads), timeout=30)
    assert (report.entries, report.published, report.skipped) == (3, 3, [])
    assert sorted(got) == sorted((f"{topic_prefix}/m{i}", p) for i, p in enumerate(payloads))
    assert report.renamed_to is not None and report.renamed_to.name.startswith(
        "dead.jsonl.replayed-")
    assert not dead.exists()


def test_a_wrong_password_fails_and_keeps_the_messages(mqtt_broker, topic_prefix, tmp_path):
    from unsflow.errors import UnsflowError

    dead = tmp_path / "dead.jsonl"
    dead.write_bytes(dead_letter_line(Failure(Message(f"{topic_prefix}/m", b"x", 1), "bad", "s")))
    cfg = parse_config({
        "mqtt-broker": {"host": mqtt_broker.host, "port": mqtt_broker.tls_port,
                        "tls": {"ca-file": mqtt_broker.ca_file}},
        "mqtt-broker-credential": {"secret-name": "uns-login", "provider": "env"},
        "targets": {"lake": {"type": "file", "path": str(tmp_path / "out.jsonl")}},
        "subscriptions": {f"{topic_prefix}/#": {"target": "lake"}},
    }, env={})
    login = json.dumps({"username": mqtt_broker.username, "password": "Zq9-not-the-password"})
    with pytest.raises(UnsflowError, match="refused") as err:
        replay(dead, cfg, context=Context(env={"UNS_LOGIN": login}), timeout=10)
    assert "Zq9-not-the-password" not in str(err.value)  # never the password
    (kept,) = tmp_path.glob("dead.jsonl.replaying-*")
    assert str(kept) in str(err.value)
