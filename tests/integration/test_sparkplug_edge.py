"""The sparkplug processor against an independent Sparkplug B edge node on the real Mosquitto.

The edge node is pysparkplug (PyPI), run as its own process from a virtualenv of its own
(tests/integration/sparkplug_edge.py): it encodes every payload and decodes unsflow's
Rebirth command itself. unsflow runs as a pipeline in this process: the UNS MQTT source
on ``spBv1.0/GROUP/#``, the sparkplug processor, a JSON-lines file and a Parquet lake.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from unsflow.components import Context
from unsflow.config.loading import parse_config
from unsflow.engine.pipeline import Pipeline
from unsflow.testing import Collector

pytestmark = pytest.mark.integration

PYSPARKPLUG = "pysparkplug==0.6.1"
EDGE_SCRIPT = Path(__file__).with_name("sparkplug_edge.py")


def _cache_dir() -> Path:
    root = os.environ.get("UNSFLOW_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "unsflow")
    return Path(root) / f"venv-{PYSPARKPLUG.replace('==', '-')}"


@pytest.fixture(scope="module")
def edge_python() -> str:
    """The interpreter of a virtualenv holding only pysparkplug (made once, cached)."""
    venv = _cache_dir()
    python = venv / "bin" / "python"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel checkouts share the cache
        if not (venv / ".complete").exists():
            for cmd in ([sys.executable, "-m", "venv", "--clear", str(venv)],
                        [str(python), "-m", "pip", "install", "-q", PYSPARKPLUG]):
                result = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                                        check=False)
                if result.returncode:
                    pytest.fail(f"{' '.join(cmd)} failed:\n{result.stdout}{result.stderr}")
            (venv / ".complete").write_text(PYSPARKPLUG)
    return str(python)


class EdgeNode:
    """The pysparkplug edge node process: commands in, events out."""

    def __init__(self, python: str, host: str, port: int, group: str, node: str,
                 device: str) -> None:
        self.proc = subprocess.Popen(
            [python, str(EDGE_SCRIPT), host, str(port), group, node, device],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()
        assert self.wait("ready")["version"]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.put(json.loads(line))

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def wait(self, event: str, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for seen in self.seen:
            if seen["event"] == event:
                self.seen.remove(seen)
                return seen
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                err = self.proc.stderr.read() if self.proc.poll() is not None else ""
                raise AssertionError(f"edge node: no {event!r} event (exit "
                                     f"{self.proc.poll()}): {err}")
            try:
                got = self.events.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if got["event"] == event:
                return got
            self.seen.append(got)

    async def event(self, event: str, timeout: float = 20.0) -> dict[str, Any]:
        """``wait`` off the event loop (the pipeline under test runs on it meanwhile)."""
        return await asyncio.to_thread(self.wait, event, timeout)

    async def sent(self, count: int) -> list[dict[str, Any]]:
        self.send(op="data", count=count)
        return [await self.event("sent") for _ in range(count)]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.send(op="quit")
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def group() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def edge(edge_python, mqtt_broker, group):
    node = EdgeNode(edge_python, mqtt_broker.host, mqtt_broker.port, group, "edge1", "press1")
    yield node
    node.close()


def config(broker: Any, tmp_path: Path, group: str, *, rebirth: bool) -> Any:
    spb: dict[str, Any] = {"type": "sparkplug"}
    if rebirth:
        spb["rebirth"] = {"host": broker.host, "port": broker.port, "min-interval": 2}
    return parse_config({
        "mqtt-broker": {"host": broker.host, "port": broker.port},
        "processors": {"spb": spb,
                       "spb-typed": {"type": "sparkplug", "value-columns": "typed"}},
        "targets": {
            "records": {"type": "file", "path": str(tmp_path / "records.jsonl"),
                        "processors": ["spb"]},
            "lake": {"type": "s3", "local-path": str(tmp_path / "lake"),
                     "processors": ["spb-typed"], "batching": {"max-age": 0.2}},
        },
        "subscriptions": {f"spBv1.0/{group}/#": {"qos": 0, "target": ["records", "lake"]}},
        "dead-letter": {"path": str(tmp_path / "dead.jsonl")},
        "http": {"port": 0},
    }, env={})


class Running:
    def __init__(self, pipeline: Pipeline, tmp_path: Path) -> None:
        self.pipeline = pipeline
        self.records_file = tmp_path / "records.jsonl"
        self.dead_file = tmp_path / "dead.jsonl"

    def records(self) -> list[dict[str, Any]]:
        if not self.records_file.exists():
            return []
        return [json.loads(line) for line in self.records_file.read_text().splitlines()]

    def dead(self) -> list[dict[str, Any]]:
        if not self.dead_file.exists():
            return []
        return [json.loads(line) for line in self.dead_file.read_text().splitlines()]

    async def until(self, condition: Any, what: str, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; {[(r['message_type'], r['seq'], r.get('metric')) for r in self.records()][:12]} "
                                     f"{self.pipeline.summary()}")
            await asyncio.sleep(0.05)


async def start(broker: Any, tmp_path: Path, group: str, *, rebirth: bool = False):
    pipeline = Pipeline(config(broker, tmp_path, group, rebirth=rebirth), Context(env={}))
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    run = Running(pipeline, tmp_path)
    await run.until(lambda: task.done() or (pipeline.running and pipeline.source.ready),
                    "the pipeline to subscribe")
    if task.done():
        task.result()
    return run, stop, task


def messages(records: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Records grouped by the message they came from (a message's records are consecutive)."""
    out: list[list[dict[str, Any]]] = []
    for r in records:
        key = (r["message_type"], r["seq"], r["device"])
        if out and (out[-1][0]["message_type"], out[-1][0]["seq"], out[-1][0]["device"]) == key:
            out[-1].append(r)
        else:
            out.append([r])
    return out


def data_records(records: list[dict[str, Any]], sent: dict[str, Any], device: bool = False
                 ) -> dict[str, dict[str, Any]]:
    """The records of the NDATA (or DDATA) the edge node reported as ``sent``."""
    kind, seq = ("DDATA", sent["device_seq"]) if device else ("NDATA", sent["seq"])
    marker = "Press/Cycles" if device else "Int32"  # holds the message's number
    for group in messages(records):
        got = {r.get("metric"): r for r in group}
        if group[0]["message_type"] == kind and group[0]["seq"] == seq and \
                marker in got and got[marker]["value"] == sent["i"]:
            return got
    return {}


async def test_birth_then_data_by_alias_for_every_datatype(edge, mqtt_broker, tmp_path, group):
    run, stop, task = await start(mqtt_broker, tmp_path, group)
    try:
        edge.send(op="connect", alias_base=1)
        born = await edge.event("born")
        sent = await edge.sent(3)
        last = sent[-1]
        await run.until(lambda: data_records(run.records(), last, True),
                        "the last DDATA's records")
        records = run.records()
        births = {r["metric"]: r for r in records if r["message_type"] == "NBIRTH"}
        assert births["bdSeq"]["value"] == born["bd_seq"] and births["bdSeq"]["online"]
        for s in sent:
            got = data_records(records, s)
            assert set(got) == set(s["values"]), s["i"]
            for name, value in s["values"].items():
                rec = got[name]
                assert rec["value"] == value, (name, rec)
                assert rec["datatype"] == name  # each metric is named after its datatype
                assert rec["alias"] == born["aliases"][name]
                assert (rec["group"], rec["edge_node"], rec["device"]) == (group, "edge1", None)
            dev = data_records(records, s, True)
            assert {n: r["value"] for n, r in dev.items()} == s["device_values"]
            assert {r["device"] for r in dev.values()} == {"press1"}
        assert run.dead() == []
        assert run.pipeline.processors["spb"].stats.gaps == {}
    finally:
        stop.set()
        await task
    # The same metrics in Parquet, each type in its column.
    import pyarrow.dataset as ds

    table = ds.dataset(tmp_path / "lake", format="parquet", partitioning="hive").to_table()
    rows = [r for r in table.to_pylist() if r["message_type"] == "NDATA"
            and r["seq"] == sent[0]["seq"]]
    by_name = {r["metric"]: r for r in rows}
    schema = {f.name: str(f.type) for f in table.schema}
    assert (schema["value_int"], schema["value_float"], schema["value_bool"],
            schema["value_string"], schema["value_json"]) == \
        ("int64", "double", "bool", "string", "string")
    assert by_name["Int64"]["value_int"] == -9223372036854775808
    assert by_name["UInt64"]["value_string"] == "18446744073709551615"  # beyond int64
    assert by_name["Double"]["value_float"] == 0.25
    assert by_name["Boolean"]["value_bool"] is True
    assert json.loads(by_name["DoubleArray"]["value_json"]) == [0.1, -2e300]
    assert by_name["DateTime"]["value_int"] == sent[0]["values"]["DateTime"]


async def test_edge_node_restart_with_a_new_birth_and_new_aliases(edge, mqtt_broker, tmp_path,
                                                                   group):
    run, stop, task = await start(mqtt_broker, tmp_path, group)
    try:
        edge.send(op="connect", alias_base=1)
        await edge.event("born")
        before = (await edge.sent(1))[0]
        edge.send(op="restart", alias_base=501)  # aliases 1.. now mean nothing
        born = await edge.event("born")
        assert born["aliases"]["Int8"] == 501
        after = await edge.sent(2)
        await run.until(lambda: data_records(run.records(), after[-1], True),
                        "DDATA after the restart")
        records = run.records()
        deaths = [r for r in records if r["message_type"] == "NDEATH"]
        assert len(deaths) == 1 and deaths[0]["online"] is False and deaths[0]["bd_seq"] == 0
        births = [r for r in records if r["message_type"] == "NBIRTH" and r["metric"] == "bdSeq"]
        assert [b["value"] for b in births] == [0, 1]
        for s in (before, *after):
            got = data_records(records, s)
            assert {n: r["value"] for n, r in got.items()} == s["values"]
        assert run.dead() == []
        proc = run.pipeline.processors["spb"]
        assert ("" in {d for g, n, d, up in proc.online() if up})
    finally:
        stop.set()
        await task


async def test_missed_birth_goes_to_the_dead_letter_and_asks_for_a_rebirth(
        edge, mqtt_broker, tmp_path, group):
    # The edge node is born before unsflow subscribes: its BIRTHs (QoS 0, not retained) are
    # lost. Both are seen through the broker before unsflow starts.
    with Collector(mqtt_broker.host, mqtt_broker.port, f"spBv1.0/{group}/#") as births:
        edge.send(op="connect", alias_base=1)
        await edge.event("born")
        got = await asyncio.to_thread(births.wait, 2, 20)
    assert sorted(t.split("/")[2] for t, _ in got) == ["DBIRTH", "NBIRTH"]
    run, stop, task = await start(mqtt_broker, tmp_path, group, rebirth=True)
    try:
        first = (await edge.sent(1))[0]
        request = await edge.event("rebirth_request")  # decoded by pysparkplug from unsflow's NCMD
        assert request["topic"] == f"spBv1.0/{group}/NCMD/edge1"
        await edge.event("born")
        # Both paths dead-letter the NDATA and the DDATA; only "spb" asks for rebirths.
        dead = await run.until(lambda: len(run.dead()) >= 4 and run.dead(),
                               "the NDATA and DDATA in the dead letter")
        topics = {f"spBv1.0/{group}/NDATA/edge1", f"spBv1.0/{group}/DDATA/edge1/press1"}
        for stage, words in (("processor:spb", "Rebirth requested"),
                             ("processor:spb-typed", "no Rebirth requested")):
            entries = [d for d in dead if d["stage"] == stage]
            assert {d["topic"] for d in entries} == topics
            assert all("unknown metric alias" in d["error"] and words in d["error"]
                       for d in entries), entries
        # After the Rebirth, DATA by alias decodes again.
        second = (await edge.sent(1))[0]
        await run.until(lambda: data_records(run.records(), second), "NDATA after the rebirth")
        got = data_records(run.records(), second)
        assert {n: r["value"] for n, r in got.items()} == second["values"]
        assert data_records(run.records(), first) == {}  # dead-lettered, not decoded
        stats = run.pipeline.processors["spb"].stats
        assert stats.rebirths == {(group, "edge1"): 1}
        from prometheus_client import generate_latest

        from unsflow.engine.metrics import pipeline_registry

        text = generate_latest(pipeline_registry(run.pipeline)).decode()
        assert (f'unsflow_sparkplug_rebirth_requests_total{{edge_node="edge1",group="{group}",'
                f'processor="spb"}} 1.0') in text
    finally:
        stop.set()
        await task


async def test_device_death_marks_the_device_offline(edge, mqtt_broker, tmp_path, group):
    run, stop, task = await start(mqtt_broker, tmp_path, group)
    try:
        edge.send(op="connect", alias_base=1)
        await edge.event("born")
        await edge.sent(1)
        edge.send(op="ddeath")
        death = await run.until(
            lambda: [r for r in run.records() if r["message_type"] == "DDEATH"], "the DDEATH")
        assert death[0]["device"] == "press1" and death[0]["online"] is False
        online = {(n, d): up for g, n, d, up in run.pipeline.processors["spb"].online()}
        assert online == {("edge1", ""): True, ("edge1", "press1"): False}
    finally:
        stop.set()
        await task


async def test_the_uns_bridge_example_publishes_plain_json_per_metric(edge, mqtt_broker,
                                                                      tmp_path, group):
    """examples/sparkplug-to-uns.json, on this test's group: metrics become retained plain
    JSON messages on acme/GROUP/EDGE_NODE[/DEVICE]/METRIC."""
    example = json.loads((Path(__file__).parents[2] / "examples" / "sparkplug-to-uns.json")
                         .read_text())
    example["mqtt-broker"] = {"host": mqtt_broker.host, "port": mqtt_broker.port}
    example["processors"]["sparkplug-to-uns"]["rebirth"]["host"] = mqtt_broker.host
    example["targets"]["uns"].update({"mqtt-broker-host": mqtt_broker.host,
                                      "mqtt-broker-port": mqtt_broker.port, "retain": False})
    example["subscriptions"] = {f.replace("spBv1.0/+/", f"spBv1.0/{group}/"): s
                                for f, s in example["subscriptions"].items()}
    example["dead-letter"] = {"path": str(tmp_path / "dead.jsonl")}
    example["http"] = {"port": 0}
    pipeline = Pipeline(parse_config(example, env={}), Context(env={}))
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    try:
        await Running(pipeline, tmp_path).until(
            lambda: task.done() or (pipeline.running and pipeline.source.ready), "subscribed")
        with Collector(mqtt_broker.host, mqtt_broker.port, f"acme/{group}/#") as out:
            edge.send(op="connect", alias_base=1)
            await edge.event("born")
            sent = (await edge.sent(1))[0]
            # NBIRTH: 30 metrics + bdSeq + Rebirth; DBIRTH 3; NDATA 30; DDATA 3.
            got = await asyncio.to_thread(out.wait, 32 + 3 + 30 + 3, 30)
    finally:
        stop.set()
        await task
    last: dict[str, dict[str, Any]] = {}
    for topic, payload in got:
        last[topic] = json.loads(payload)
    temp = last[f"acme/{group}/edge1/press1/Press/Temperature"]
    assert temp["value"] == sent["device_values"]["Press/Temperature"]
    assert temp["datatype"] == "Float" and temp["message_type"] == "DDATA"
    assert last[f"acme/{group}/edge1/Int64"]["value"] == sent["values"]["Int64"]
    assert last[f"acme/{group}/edge1/StringArray"]["value"] == ["a", "", "ünï"]
