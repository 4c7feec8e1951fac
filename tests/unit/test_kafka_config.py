"""Kafka source and target: config validation, templates, headers, offsets (no broker)."""

import sys

import pytest

from unsflow.config.loading import parse_config
from unsflow.engine.topics import compile_template
from unsflow.errors import ConfigError, MissingDependency
from unsflow.message import Message
from unsflow.sources.kafka import KafkaSourceConfig, OffsetTracker
from unsflow.targets.kafka import KafkaTargetConfig, mqtt_headers

CRED = {"secret-name": "kafka-credential", "provider": "env"}


def issues(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, env={})
    return [str(i) for i in info.value.issues]


def bridge(**target) -> dict:
    return {"targets": {"k": {"type": "kafka", "bootstrap-servers": "b:9092", **target}},
            "subscriptions": {"a/#": {"target": "k"}}}


def lake_from_kafka(**source) -> dict:
    return {"targets": {"lake": {"type": "file", "path": "out.jsonl"}},
            "sources": {"plant": {"type": "kafka", "bootstrap-servers": "b:9092",
                                  "group-id": "g", "target": "lake", **source}}}


def test_target_defaults():
    cfg = parse_config(bridge(), env={}).targets["k"]
    assert isinstance(cfg, KafkaTargetConfig)
    assert (cfg.topic, cfg.key, cfg.compression, cfg.security_protocol) == (
        "{target}", "{topic}", "lz4", "PLAINTEXT")


def test_sasl_needs_a_credential_and_credential_needs_sasl():
    assert any("targets.k" in i and "needs a credential" in i
               for i in issues(bridge(**{"security-protocol": "SASL_SSL"})))
    assert any("only used with SASL" in i for i in issues(bridge(credential=CRED)))
    assert any("ca-file is only used with SSL" in i
               for i in issues(bridge(**{"ca-file": "ca.crt"})))
    ok = parse_config(bridge(**{"security-protocol": "SASL_SSL", "credential": CRED,
                                "ca-file": "ca.crt"}), env={})
    assert ok.targets["k"].sasl_mechanism == "SCRAM-SHA-512"


def test_reserved_client_settings_are_refused():
    found = issues(bridge(**{"producer-config": {"acks": 1, "enable.idempotence": False,
                                                 "linger.ms": 10}}))
    assert any("producer-config" in i and "acks, enable.idempotence" in i for i in found)
    found = issues(lake_from_kafka(topics=["t"], **{"consumer-config": {"enable.auto.commit": True}}))
    assert any("consumer-config" in i and "enable.auto.commit" in i for i in found)


def test_bad_values_are_errors_with_key_paths():
    found = issues(bridge(compression="brotli", topic="{nope}", **{"linger-ms": -1}))
    assert any(i.startswith("targets.k") and "compression" in i for i in found)
    assert any("unknown field(s) ['nope']" in i for i in found)
    assert any("linger-ms" in i for i in found)


def test_source_topics_or_pattern():
    assert any("exactly one of topics and topic-pattern" in i for i in issues(lake_from_kafka()))
    assert any("exactly one of topics and topic-pattern" in i
               for i in issues(lake_from_kafka(topics=["a"], **{"topic-pattern": "a.*"})))
    assert any("not a regular expression" in i
               for i in issues(lake_from_kafka(**{"topic-pattern": "a(("})))
    cfg = parse_config(lake_from_kafka(**{"topic-pattern": r"plant\..*"}), env={})
    source = cfg.sources["plant"]
    assert isinstance(source, KafkaSourceConfig)
    assert source.topic_pattern == r"^plant\..*"
    assert (source.auto_offset_reset, source.max_poll_records) == ("earliest", 1000)


def test_templates():
    msg = Message("acme/site1/press/vibration", b'{"machineId": "m7"}',
                  headers={"kafka.key": "k1"})
    assert compile_template("{topic}", "t")(msg) == "acme/site1/press/vibration"
    assert compile_template("uns.{levels[0]}.{levels[1]}", "t")(msg) == "uns.acme.site1"
    assert compile_template("{record[machineId]}", "t")(msg) == "m7"
    assert compile_template("{headers[kafka.key]}", "t")(msg) == "k1"
    with pytest.raises(KeyError, match="line"):
        compile_template("{record[line]}", "t")(msg)
    with pytest.raises(IndexError):
        compile_template("{levels[9]}", "t")(msg)
    with pytest.raises(ValueError, match="unknown field"):
        compile_template("{}", "t")


def test_mqtt_headers():
    msg = Message("a/b", b"x", 1, True, properties={"user_property": [("unit", "mm/s")],
                                                   "content_type": ["text/plain"], "dup": 0})
    assert mqtt_headers(msg) == [("mqtt.topic", b"a/b"), ("mqtt.qos", b"1"),
                                 ("mqtt.retain", b"true"), ("mqtt.content_type", b"text/plain"),
                                 ("unit", b"mm/s")]
    from_kafka = Message("t", b"x", headers={"kafka.topic": "t", "kafka.offset": 3,
                                             "mqtt.topic": b"a/b", "unit": "mm/s"})
    assert mqtt_headers(from_kafka) == [("mqtt.topic", b"a/b"), ("unit", b"mm/s")]


def test_offset_tracker_commits_contiguous_prefix_only():
    t = OffsetTracker()
    tokens = [t.add({("t", p): 10 * i + p + 1 for p in range(2)}) for i in range(4)]
    assert t.ack(tokens[2]) == {}
    assert t.ack(tokens[1]) == {}
    assert t.ack(tokens[0]) == {("t", 0): 21, ("t", 1): 22}
    assert len(t) == 1
    t.revoke([("t", 1)])
    assert t.ack(tokens[3]) == {("t", 0): 31}
    assert len(t) == 0


async def test_missing_client_library_names_the_extra(monkeypatch):
    from unsflow.components import Context
    from unsflow.targets.kafka import KafkaTarget

    monkeypatch.setitem(sys.modules, "confluent_kafka", None)
    cfg = KafkaTargetConfig.model_validate({"type": "kafka", "bootstrap-servers": "b:1"})
    with pytest.raises(MissingDependency, match=r"unsflow\[kafka\]"):
        await KafkaTarget("k", cfg, Context(env={})).start()
