"""OPC UA source config: what validation refuses, and the value mapping (no server needed)."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from unsflow.config.loading import parse_config
from unsflow.errors import ConfigError
from unsflow.sources._opcua_values import opcua_value


def cfg(**source):
    base = {"type": "opcua", "endpoint": "opc.tcp://plc:4840", "target": "out",
            "nodes": [{"node-id": "ns=2;s=A"}]}
    base.update(source)
    return parse_config({"sources": {"plc": base},
                         "targets": {"out": {"type": "file", "path": "x.jsonl"}}}, env={})


def test_a_minimal_source_loads_with_its_defaults():
    c = cfg().sources["plc"]
    assert (c.publishing_interval, c.sampling_interval, c.queue_size, c.topic) == \
        (1000.0, 250.0, 10, "opcua/{name}")


@pytest.mark.parametrize("source, words", [
    ({"nodes": []}, "sources.plc.nodes"),
    ({"nodes": [{"node-id": "ns=2;s=A", "browse-path": "2:A"}]}, "exactly one of node-id"),
    ({"nodes": [{}]}, "exactly one of node-id"),
    ({"endpoint": "http://plc:4840"}, "sources.plc.endpoint"),
    ({"topic": "plant/{machine}"}, "unknown field(s) ['machine']"),
    ({"security-policy": "Basic256Sha256"}, "security-policy None goes with security-mode None"),
    ({"security-mode": "Sign"}, "security-policy None goes with security-mode None"),
    ({"nodes": [{"node-id": "ns=2;s=A", "deadband": -1}]}, "deadband"),
    ({"sampling-rate": 5}, "sampling-rate"),
])
def test_bad_configs_name_the_key(source, words):
    with pytest.raises(ConfigError) as err:
        cfg(**source)
    assert words in str(err.value)


def test_values_become_what_json_and_the_lake_hold():
    when = dt.datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)
    u = uuid.UUID("0b7c1d2e-3f40-4a5b-8c6d-7e8f9a0b1c2d")
    assert opcua_value([when, u, b"\x01", None, [1.5]]) == \
        [1704164645678, str(u), "AQ==", None, [1.5]]
    from asyncua import ua

    assert opcua_value(ua.LocalizedText("läuft", "de")) == "läuft"
    assert opcua_value(ua.NodeId("Line1", 2)) == "ns=2;s=Line1"
    assert opcua_value(ua.QualifiedName("Press", 2)) == "2:Press"
    assert opcua_value(ua.Range(Low=0.0, High=10.0)) == {"Low": 0.0, "High": 10.0}
    assert opcua_value(ua.ExtensionObject(TypeId=ua.NodeId("T", 3), Body=b"\x00")) == \
        {"type_id": "ns=3;s=T", "body_base64": "AA=="}
    assert opcua_value(ua.ServerState.Running) == 0
