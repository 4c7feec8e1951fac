"""The sparkplug processor on payloads built here (the independent edge node is in
tests/integration/test_sparkplug_edge.py): aliases across batches, dead letter for unknown
aliases, sequence gaps, DEATH, value shapes."""

from __future__ import annotations

import struct

import pytest

from unsflow.components import Context
from unsflow.config.loading import parse_config
from unsflow.message import Message
from unsflow.processors.sparkplug import SparkplugProcessor, SparkplugProcessorConfig
from unsflow.codecs.sparkplug import _build, decode_payload, encode_payload, metric_value

G, N = "plant1", "edge7"


def proc(**cfg):
    return SparkplugProcessor("spb", SparkplugProcessorConfig(type="sparkplug", **cfg),
                              Context(env={}))


def msg(kind, payload, device=None):
    topic = f"spBv1.0/{G}/{kind}/{N}" + (f"/{device}" if device else "")
    return Message(topic, payload, 0)


def nbirth(seq=0, bd_seq=1):
    return msg("NBIRTH", encode_payload(seq=seq, timestamp=1000, metrics=[
        {"name": "bdSeq", "datatype": "Int64", "value": bd_seq},
        {"name": "Node Control/Rebirth", "datatype": "Boolean", "value": False},
        {"name": "Line/Speed", "alias": 1, "datatype": "Double", "value": 1.5},
        {"name": "Line/Count", "alias": 2, "datatype": "Int32", "value": -7},
    ]))


def ndata(seq, metrics):
    return msg("NDATA", encode_payload(seq=seq, timestamp=2000, metrics=metrics))


def by_metric(outputs):
    return {m.record["metric"]: m.record for m in outputs}


async def test_data_by_alias_resolves_through_the_birth_of_an_earlier_batch():
    p = proc()
    out, failures = await p.process([nbirth()])
    assert not failures and set(by_metric(out)) == {"bdSeq", "Node Control/Rebirth",
                                                    "Line/Speed", "Line/Count"}
    assert all(m.record["online"] is True for m in out)
    # DATA by alias only, no datatype: both come from the BIRTH.
    payload = decode_payload(encode_payload(seq=1, timestamp=2000, metrics=[
        {"alias": 1, "datatype": "Double", "value": 2.25},
        {"alias": 2, "datatype": "Int32", "value": -9, "timestamp": 2500}]))
    for m in payload.metrics:
        m.ClearField("datatype")
    out, failures = await p.process([msg("NDATA", payload.SerializeToString())])
    assert not failures
    recs = by_metric(out)
    assert recs["Line/Speed"] == {
        "group": G, "edge_node": N, "device": None, "message_type": "NDATA", "seq": 1,
        "timestamp": 2000, "metric": "Line/Speed", "alias": 1, "datatype": "Double",
        "value": 2.25, "is_historical": False, "is_transient": False, "quality": None,
        "properties": None}
    assert recs["Line/Count"]["value"] == -9 and recs["Line/Count"]["datatype"] == "Int32"
    assert recs["Line/Count"]["timestamp"] == 2500
    assert all(m.topic == f"spBv1.0/{G}/NDATA/{N}" for m in out)


async def test_unknown_alias_goes_to_the_dead_letter_with_the_reason():
    p = proc()
    data = ndata(5, [{"alias": 1, "datatype": "Double", "value": 1.0},
                     {"alias": 9, "datatype": "Double", "value": 1.0}])
    out, failures = await p.process([data])
    assert out == [] and len(failures) == 1
    assert failures[0].message is data
    assert "unknown metric alias(es) 1, 9" in failures[0].error
    assert "edge node plant1/edge7" in failures[0].error
    assert "no Rebirth requested" in failures[0].error
    await p.process([nbirth()])
    out, failures = await p.process([ndata(1, [{"alias": 9, "datatype": "Double",
                                                "value": 1.0}])])
    assert out == [] and "unknown metric alias(es) 9" in failures[0].error
    assert p.stats.unknown_alias == 2


async def test_device_birth_data_and_death():
    p = proc()
    dbirth = msg("DBIRTH", encode_payload(seq=1, metrics=[
        {"name": "Temp", "alias": 10, "datatype": "Float", "value": 20.1}]), "press-3")
    ddata = msg("DDATA", encode_payload(seq=2, metrics=[
        {"alias": 10, "datatype": "Float", "value": 21.7}]), "press-3")
    out, failures = await p.process([nbirth(), dbirth, ddata])
    assert not failures
    last = out[-1].record
    assert (last["device"], last["metric"], last["value"], last["datatype"]) == \
        ("press-3", "Temp", 21.7, "Float")  # float32 1.100000023841858 style noise removed
    assert ("plant1", "edge7", "press-3", True) in set(p.online())
    out, _ = await p.process([msg("DDEATH", encode_payload(seq=3), "press-3")])
    assert out[0].record["online"] is False and out[0].record["message_type"] == "DDEATH"
    assert ("plant1", "edge7", "press-3", False) in set(p.online())
    assert ("plant1", "edge7", "", True) in set(p.online())


async def test_node_death_takes_the_node_and_its_devices_offline_unless_stale():
    p = proc()
    dbirth = msg("DBIRTH", encode_payload(seq=1, metrics=[
        {"name": "Temp", "alias": 10, "datatype": "Float", "value": 20.1}]), "d1")
    await p.process([nbirth(bd_seq=4), dbirth])
    stale = msg("NDEATH", encode_payload(metrics=[{"name": "bdSeq", "datatype": "Int64",
                                                   "value": 3}]))
    out, _ = await p.process([stale])
    assert out[0].record["stale"] is True
    assert all(up for *_, up in p.online())
    death = msg("NDEATH", encode_payload(metrics=[{"name": "bdSeq", "datatype": "Int64",
                                                   "value": 4}]))
    out, _ = await p.process([death])
    rec = out[0].record
    assert (rec["message_type"], rec["online"], rec["bd_seq"]) == ("NDEATH", False, 4)
    assert "stale" not in rec
    assert not any(up for *_, up in p.online())
    samples = {(n, tuple(lbl)): v for n, lbl, v in p.metric_samples()}
    assert samples[("unsflow_sparkplug_online", ("spb", G, N, "d1"))] == 0


async def test_sequence_gaps_are_counted_and_the_messages_still_decoded():
    p = proc()
    metric = [{"alias": 1, "datatype": "Double", "value": 1.0}]
    out, failures = await p.process([nbirth(seq=254), ndata(255, metric), ndata(0, metric),
                                     ndata(3, metric), ndata(4, metric)])
    assert not failures and len(out) == 4 + 4
    assert p.stats.gaps == {(G, N): 1}
    samples = {(n, tuple(lbl)): v for n, lbl, v in p.metric_samples()}
    assert samples[("unsflow_sparkplug_sequence_gaps_total", ("spb", G, N))] == 1


async def test_a_new_birth_replaces_the_aliases():
    p = proc()
    await p.process([nbirth()])
    rebirth = msg("NBIRTH", encode_payload(seq=0, metrics=[
        {"name": "Other", "alias": 1, "datatype": "String", "value": "x"}]))
    out, failures = await p.process([rebirth, ndata(1, [{"alias": 1, "datatype": "String",
                                                         "value": "y"}])])
    assert not failures and out[-1].record["metric"] == "Other"
    out, failures = await p.process([ndata(2, [{"alias": 2, "datatype": "Int32", "value": 1}])])
    assert "unknown metric alias(es) 2" in failures[0].error


async def test_bad_topics_and_payloads_are_failures():
    p = proc()
    batch = [Message("plant/line1/temp", b"{}"),
             Message(f"spBv1.0/{G}/NDATA/{N}", b"\xff\xff\xff"),
             Message(f"spBv1.0/{G}/XDATA/{N}", b""),
             Message(f"spBv1.0/{G}/DDATA/{N}", b""),
             nbirth()]
    out, failures = await p.process(batch)
    errors = [f.error for f in failures]
    assert "not in the Sparkplug B namespace" in errors[0]
    assert "not a Sparkplug B protobuf payload" in errors[1]
    assert "unknown Sparkplug message type 'XDATA'" in errors[2]
    assert "DDATA needs a device" in errors[3]
    assert len(out) == 4


async def test_typed_value_columns_and_uns_topics():
    p = proc(value_columns="typed", topic="acme/{group}/{edge_node}/{device}/{metric}")
    out, _ = await p.process([nbirth()])
    recs = by_metric(out)
    assert recs["Line/Speed"]["value_float"] == 1.5 and "value" not in recs["Line/Speed"]
    assert recs["Line/Count"]["value_int"] == -7
    assert recs["Node Control/Rebirth"]["value_bool"] is False
    topics = {m.record["metric"]: m.topic for m in out}
    assert topics["Line/Speed"] == "acme/plant1/edge7/Line/Speed"


async def test_state_messages_of_host_applications():
    p = proc()
    out, failures = await p.process([
        Message("spBv1.0/STATE/scada-1", b'{"online": true, "timestamp": 1700000000000}'),
        Message("spBv1.0/STATE/scada-2", b"OFFLINE")])
    assert out[0].record == {"message_type": "STATE", "host_id": "scada-1", "online": True,
                             "timestamp": 1700000000000}
    assert "not valid JSON" in failures[0].error


async def test_commands_pass_through_as_records():
    p = proc()
    cmd = msg("NCMD", encode_payload(timestamp=5, metrics=[
        {"name": "Node Control/Rebirth", "datatype": "Boolean", "value": True}]))
    out, failures = await p.process([cmd])
    assert not failures
    assert out[0].record["message_type"] == "NCMD" and out[0].record["value"] is True


def test_signed_integers_whatever_width_the_encoder_used():
    cls = _build()
    for raw in (0xFF, 0xFFFFFFFF):  # Int8 -1 as 8-bit and as 32-bit two's complement
        p = cls()
        m = p.metrics.add(name="x", datatype=1, int_value=raw)
        assert metric_value(m, 1) == -1
    m = cls().metrics.add(name="y", datatype=4, long_value=(1 << 64) - 2)
    assert metric_value(m, 4) == -2
    m = cls().metrics.add(name="z", datatype=8, long_value=(1 << 64) - 1)
    assert metric_value(m, 8) == (1 << 64) - 1


def test_arrays_datasets_properties():
    cls = _build()
    p = cls()
    m = p.metrics.add(name="a", datatype=31, bytes_value=struct.pack("<2d", 1.5, -2.0))
    assert metric_value(m, 31) == [1.5, -2.0]
    m = p.metrics.add(name="b", datatype=32, bytes_value=(3).to_bytes(4, "little") + b"\xa0")
    assert metric_value(m, 32) == [True, False, True]
    m = p.metrics.add(name="s", datatype=33, bytes_value=b"ab\0\0c\0")
    assert metric_value(m, 33) == ["ab", "", "c"]
    m = p.metrics.add(name="by", datatype=17, bytes_value=b"\x00\x01")
    assert metric_value(m, 17) == "AAE="
    m = p.metrics.add(name="ds", datatype=16)
    ds = m.dataset_value
    ds.num_of_columns = 2
    ds.columns.extend(["n", "ok"])
    ds.types.extend([3, 11])
    row = ds.rows.add()
    row.elements.add(int_value=0xFFFFFFFE)
    row.elements.add(boolean_value=True)
    assert metric_value(m, 16) == {"columns": ["n", "ok"], "types": ["Int32", "Boolean"],
                                   "rows": [[-2, True]]}


async def test_quality_and_properties():
    cls = _build()
    p = cls()
    p.seq = 0
    m = p.metrics.add(name="t", alias=1, datatype=10, double_value=3.5)
    m.properties.keys.extend(["Quality", "engUnit"])
    m.properties.values.add(type=3, int_value=192)
    m.properties.values.add(type=12, string_value="degC")
    out, _ = await proc().process([msg("NBIRTH", p.SerializeToString())])
    rec = out[0].record
    assert rec["quality"] == 192 and rec["properties"] == {"Quality": 192, "engUnit": "degC"}


def test_config_validates_in_a_pipeline():
    cfg = parse_config({
        "processors": {"spb": {"type": "sparkplug", "value-columns": "typed",
                               "rebirth": {"host": "127.0.0.1", "min-interval": 5}}},
        "targets": {"lake": {"type": "file", "path": "x.jsonl", "processors": ["spb"]}},
        "subscriptions": {"spBv1.0/#": {"qos": 0, "target": "lake"}}}, env={})
    assert cfg.processors["spb"].rebirth.min_interval == 5
    with pytest.raises(Exception, match="value-columns"):
        parse_config({
            "processors": {"spb": {"type": "sparkplug", "value-columns": "wide"}},
            "targets": {"lake": {"type": "file", "path": "x", "processors": ["spb"]}},
            "subscriptions": {"spBv1.0/#": {"target": "lake"}}}, env={})


async def test_one_output_message_per_sparkplug_message_for_a_batch_target():
    p = proc(output="message", value_columns="typed")
    birth = nbirth()
    out, failures = await p.process([birth, ndata(1, [{"alias": 1, "datatype": "Double",
                                                       "value": 7.5}])])
    assert not failures and len(out) == 2
    assert [r["metric"] for r in out[0].record] == ["bdSeq", "Node Control/Rebirth",
                                                   "Line/Speed", "Line/Count"]
    assert out[1].record == [{**out[1].record[0], "metric": "Line/Speed", "value_float": 7.5}]
    assert out[0].topic == birth.topic


def test_an_unknown_topic_template_field_is_a_config_error():
    with pytest.raises(Exception, match=r"unknown field\(s\) \['edgenode'\]"):
        parse_config({
            "processors": {"spb": {"type": "sparkplug", "topic": "uns/{edgenode}/{metric}"}},
            "targets": {"out": {"type": "file", "path": "x", "processors": ["spb"]}},
            "subscriptions": {"spBv1.0/#": {"target": "out"}}}, env={})


@pytest.mark.parametrize("name", ["Error", "DecodeError", "EncodeError"])
async def test_every_protobuf_error_is_a_failure_for_the_dead_letter(name, monkeypatch):
    """The protobuf boundary: no exception of google.protobuf.message escapes the processor
    (tests/unit/test_error_boundaries.py does this for the other libraries)."""
    import google.protobuf.message as pb

    cls = _build()
    monkeypatch.setattr(cls, "ParseFromString", lambda self, data: (_ for _ in ()).throw(
        getattr(pb, name)("boom")))
    out, failures = await proc().process([ndata(1, [])])
    assert out == [] and len(failures) == 1
    assert "not a Sparkplug B protobuf payload: boom" in failures[0].error
