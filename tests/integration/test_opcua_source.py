"""The opcua source against a real OPC UA server of another implementation: Eclipse Milo
(scripts/services.d/OpcuaTestServer.java), shared by this module's tests; none stops it.

Server restarts, which need a server of their own, are in test_opcua_restart.py.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from unsflow.components import Context
from unsflow.config.loading import parse_config
from unsflow.engine.pipeline import Pipeline

pytestmark = pytest.mark.integration

NS = "ns=2;s=Plant/Line1/"
# What the server holds (OpcuaTestServer.java), as the records must say it.
EXPECTED: dict[str, tuple[str, Any]] = {
    "Boolean": ("Boolean", True), "SByte": ("SByte", -128), "Byte": ("Byte", 255),
    "Int16": ("Int16", -32768), "UInt16": ("UInt16", 65535),
    "Int32": ("Int32", -2147483648), "UInt32": ("UInt32", 4294967295),
    "Int64": ("Int64", -9223372036854775808), "UInt64": ("UInt64", 18446744073709551615),
    "Float": ("Float", 1.5), "Double": ("Double", 3.141592653589793),
    "String": ("String", "héllo wörld"), "DateTime": ("DateTime", 1704164645678),
    "Guid": ("Guid", "0b7c1d2e-3f40-4a5b-8c6d-7e8f9a0b1c2d"), "ByteString": ("ByteString", "AAH/"),
    "LocalizedText": ("LocalizedText", "running"), "QualifiedName": ("QualifiedName", "2:Press"),
    "NodeId": ("NodeId", "ns=2;s=Plant/Line1"), "Int32Array": ("Int32[]", [-1, 0, 7]),
    "DoubleArray": ("Double[]", [0.5, -2.25]), "StringArray": ("String[]", ["a", "", "ünï"]),
}


def source(server: Any, target: str, nodes: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"type": "opcua", "endpoint": server.endpoint, "target": target, "nodes": nodes,
            "publishing-interval": 100, "sampling-interval": 20, **extra}


def pipeline(tmp_path: Path, sources: dict[str, Any], env: dict[str, str] | None = None
             ) -> Pipeline:
    cfg = parse_config({
        "sources": sources,
        "targets": {"records": {"type": "file", "path": str(tmp_path / "records.jsonl")},
                    "lake": {"type": "s3", "local-path": str(tmp_path / "lake"),
                             "batching": {"max-age": 0.2}}},
        "dead-letter": {"path": str(tmp_path / "dead.jsonl")},
        "http": {"port": 0},
    }, env={})
    return Pipeline(cfg, Context(env=env or {}))


def records(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "records.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


async def until(condition: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class Running:
    def __init__(self, p: Pipeline) -> None:
        self.pipeline = p
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Pipeline:
        self.task = asyncio.create_task(self.pipeline.run(self.stop))
        return self.pipeline

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        assert self.task is not None
        await self.task


async def test_every_type_with_timestamps_status_and_topics_and_bad_nodes_left_out(
        opcua_server, tmp_path, caplog):
    caplog.set_level(logging.ERROR, "unsflow.sources.opcua")
    nodes = [{"node-id": NS + name} for name in EXPECTED]
    nodes += [{"browse-path": "2:Plant/2:Line1/2:Temperature", "name": "line1/temperature"},
              {"node-id": "ns=2;s=Plant/Line1/NoSuchNode"},  # unknown
              {"node-id": "ns=2;s=Plant"},  # an object, not a variable
              {"node-id": NS + "Opaque"},  # a structure nobody can decode
              {"browse-path": "2:Plant/2:Nowhere"}]
    p = pipeline(tmp_path, {
        "plc": source(opcua_server, "records", nodes, topic="acme/plant1/{name}"),
        "plc-typed": source(opcua_server, "lake", [{"node-id": NS + n} for n in EXPECTED],
                            **{"value-columns": "typed"}),
    })
    started = int(time.time() * 1000)
    async with Running(p):
        def every_node() -> dict[str, Any] | None:
            by_name = {r["name"]: r for r in records(tmp_path)}
            return by_name if len(by_name) >= len(EXPECTED) + 1 else None

        got = await until(every_node, "a record of every node")
        plc = p.sources[0]
        await until(lambda: p.paths["lake"].stats.accepted >= len(EXPECTED), "lake rows")
    for name, (datatype, value) in EXPECTED.items():
        rec = got[name]
        assert (rec["value"], rec["datatype"]) == (value, datatype), name
        assert rec["node_id"] == NS + name and rec["browse_name"] == name
        assert rec["_topic"] == f"acme/plant1/{name}"
        assert (rec["status"], rec["status_code"]) == ("Good", 0)
        assert rec["server_timestamp"] >= started - 5000
        assert isinstance(rec["source_timestamp"], int)
    temp = got["line1/temperature"]
    assert temp["_topic"] == "acme/plant1/line1/temperature" and temp["datatype"] == "Double"
    # Bad nodes: each named with the server and why; the other nodes came all the same.
    assert plc.bad_nodes == {
        "ns=2;s=Plant/Line1/NoSuchNode": "unknown to the server (BadNodeIdUnknown)",
        "ns=2;s=Plant": "is an Object, not a Variable",
        NS + "Opaque": plc.bad_nodes[NS + "Opaque"],
        "2:Plant/2:Nowhere": plc.bad_nodes["2:Plant/2:Nowhere"],
    }
    assert "ns=2;s=OpaqueStructure" in plc.bad_nodes[NS + "Opaque"]
    assert "not found" in plc.bad_nodes["2:Plant/2:Nowhere"]
    errors = [r.getMessage() for r in caplog.records]
    assert any("node ns=2;s=Plant/Line1/NoSuchNode of OPC UA server " + opcua_server.endpoint
               in e for e in errors), errors
    # The same values in Parquet, each type in its column.
    import pyarrow.dataset as ds

    table = ds.dataset(tmp_path / "lake", format="parquet", partitioning="hive").to_table()
    rows = {r["browse_name"]: r for r in table.to_pylist()}
    types = {f.name: str(f.type) for f in table.schema}
    assert (types["value_int"], types["value_float"], types["value_bool"],
            types["value_string"], types["value_json"], types["source_timestamp"]) == \
        ("int64", "double", "bool", "string", "string", "int64")
    assert rows["Int64"]["value_int"] == -9223372036854775808
    assert rows["UInt64"]["value_string"] == "18446744073709551615"
    assert rows["Double"]["value_float"] == 3.141592653589793
    assert rows["Boolean"]["value_bool"] is True
    assert json.loads(rows["StringArray"]["value_json"]) == ["a", "", "ünï"]


async def test_a_refused_login_is_reported_and_stops_nothing_else(opcua_server, tmp_path,
                                                                  caplog):
    caplog.set_level(logging.ERROR, "unsflow.sources.opcua")
    env = {"OPC_GOOD": json.dumps({"username": opcua_server.username,
                                   "password": opcua_server.password}),
           "OPC_BAD": json.dumps({"username": opcua_server.username, "password": "wrong"})}
    counter = [{"node-id": NS + "Counter"}]
    p = pipeline(tmp_path, {
        "good": source(opcua_server, "records", counter, credential={"secret-name": "opc-good"},
                       topic="good/{name}"),
        "bad": source(opcua_server, "records", counter, credential={"secret-name": "opc-bad"},
                      topic="bad/{name}"),
    }, env=env)
    async with Running(p):
        await until(lambda: len([r for r in records(tmp_path) if r["_topic"] == "good/Counter"])
                    >= 5, "values through the good login")
        await until(lambda: any("refused" in r.getMessage() for r in caplog.records),
                    "the refused login in the log")
        bad = p.sources[1]
        assert not bad.ready and p.sources[0].ready
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert f"OPC UA server {opcua_server.endpoint} refused user 'unsflow'" in refused[0]
    assert "BadUserAccessDenied" in refused[0] or "BadIdentityToken" in refused[0]
    assert not [r for r in records(tmp_path) if r["_topic"].startswith("bad/")]


async def test_basic256sha256_sign_and_encrypt_with_a_login(opcua_server, tmp_path):
    env = {"OPC_USER": json.dumps({"username": opcua_server.username,
                                   "password": opcua_server.password})}
    p = pipeline(tmp_path, {"plc": source(
        opcua_server, "records", [{"node-id": NS + "Counter"}, {"node-id": NS + "String"}],
        credential={"secret-name": "opc-user"}, **{
            "security-policy": "Basic256Sha256", "security-mode": "SignAndEncrypt",
            "certificate-dir": str(tmp_path / "pki")})}, env=env)
    async with Running(p):
        got = await until(lambda: {r["browse_name"]: r for r in records(tmp_path)
                                   if r["browse_name"] in ("Counter", "String")}
                          if len(records(tmp_path)) >= 3 else None, "values over SignAndEncrypt")
    assert got["String"]["value"] == "héllo wörld"
    assert (tmp_path / "pki" / "unsflow-client.der").exists()


class TcpProxy:
    """Forwards TCP to the server; ``cut()`` drops every connection and refuses new ones."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.broken = False
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.broken:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self.writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        self.broken = True
        for w in self.writers:
            w.transport.abort()
        self.writers.clear()

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_values_the_server_queued_during_a_network_break_are_not_lost(opcua_server,
                                                                           tmp_path):
    """The session outlives the break on the server: asyncua re-activates it, transfers the
    subscription and has the server republish; the Counter (+1 every 100 ms) has no gap."""
    proxy = TcpProxy(opcua_server.port)
    await proxy.start()
    endpoint = f"opc.tcp://127.0.0.1:{proxy.port}/unsflow"
    node = {"node-id": NS + "Counter", "queue-size": 200}
    p = pipeline(tmp_path, {"plc": {**source(opcua_server, "records", [node]),
                                    "endpoint": endpoint}})
    try:
        async with Running(p):
            def counters() -> list[int]:
                return [r["value"] for r in records(tmp_path)]

            await until(lambda: len(counters()) >= 10, "counter values before the break")
            proxy.cut()
            cut_at = counters()[-1]
            await asyncio.sleep(3)  # the break: ~30 counter values happen meanwhile
            proxy.broken = False
            await until(lambda: counters()[-1] >= cut_at + 50, "values after the break", 60)
            src = p.sources[0]
            assert src.reconnects >= 1
    finally:
        await proxy.close()
    values = counters()
    first, last = values[0], values[-1]
    missing = sorted(set(range(first, last + 1)) - set(values))
    assert missing == [], f"lost {len(missing)} counter values: {missing[:20]}"


async def test_unacknowledged_messages_pause_publishing_and_the_server_keeps_the_values(
        opcua_server):
    """Backpressure: at max-pending unacknowledged messages the source turns publishing off;
    the server queues the Counter's changes meanwhile and sends them when it is back on."""
    from unsflow.sources.opcua import OpcuaSource, OpcuaSourceConfig

    cfg = OpcuaSourceConfig.model_validate(source(
        opcua_server, "t", [{"node-id": NS + "Counter", "queue-size": 500}],
        **{"max-pending": 10}))
    src = OpcuaSource("plc", cfg, Context(env={}))
    await src.start()
    held: list[int] = []
    values: list[int] = []
    try:
        while len(values) < 10:
            batch, token = await asyncio.wait_for(src.read(), 20)
            values += [m.record["value"] for m in batch]
            held.append(token)
        await until(lambda: src._paused, "publishing to be paused")
        paused_at = src.received
        await asyncio.sleep(2)  # ~20 Counter changes, queued by the server
        # Publishing on, ~20 would have come; one notification message may be on its way.
        assert src.received - paused_at <= 5, "the server kept publishing while paused"
        for token in held:
            src.ack(token)
        deadline = time.monotonic() + 20
        while values[-1] < values[0] + 60 and time.monotonic() < deadline:
            batch, token = await asyncio.wait_for(src.read(), 20)
            values += [m.record["value"] for m in batch]
            src.ack(token)
    finally:
        await src.stop()
    assert src.acked == src.received - src.in_flight
    missing = sorted(set(range(values[0], values[-1] + 1)) - set(values))
    assert missing == [], f"lost {len(missing)} values while paused: {missing[:20]}"


async def test_an_absolute_deadband_reports_only_changes_beyond_it(opcua_server, tmp_path):
    """Temperature moves by up to 0.1 per update; with a deadband of 0.5 the server reports
    only changes larger than that."""
    node = NS + "Temperature"
    p = pipeline(tmp_path, {
        "all": source(opcua_server, "records", [{"node-id": node}], topic="all/{name}"),
        "banded": source(opcua_server, "records", [{"node-id": node, "deadband": 0.5}],
                         topic="banded/{name}"),
    })
    async with Running(p):
        await until(lambda: len([r for r in records(tmp_path) if r["_topic"].startswith("all/")])
                    >= 60, "60 values without a deadband", 60)
    rows = records(tmp_path)
    everything = [r["value"] for r in rows if r["_topic"].startswith("all/")]
    banded = [r["value"] for r in rows if r["_topic"].startswith("banded/")]
    assert banded, "the first value is always reported"
    assert len(banded) < len(everything) / 3, (len(banded), len(everything))
    assert all(abs(b - a) > 0.5 for a, b in itertools.pairwise(banded)), banded


async def test_a_client_certificate_from_a_secret(opcua_server, tmp_path):
    """security-policy Basic256Sha256 with the application certificate and key given as PEM
    text in a file secret (as a Kubernetes Secret would mount it)."""
    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    uri = "urn:acme:unsflow:line1"
    key_file, cert_file = tmp_path / "key.pem", tmp_path / "cert.der"
    await setup_self_signed_certificate(key_file, cert_file, uri, "localhost",
                                        [ExtendedKeyUsageOID.CLIENT_AUTH], {})
    cert_pem = x509.load_der_x509_certificate(cert_file.read_bytes()).public_bytes(
        serialization.Encoding.PEM).decode()
    secret = tmp_path / "opcua-cert.json"
    secret.write_text(json.dumps({"username": uri, "certificate": cert_pem,
                                  "private_key": key_file.read_text()}))
    p = pipeline(tmp_path, {"plc": source(
        opcua_server, "records", [{"node-id": NS + "String"}],
        certificate={"secret-name": "opcua-cert", "provider": "file", "path": str(secret)},
        **{"security-policy": "Basic256Sha256", "security-mode": "SignAndEncrypt",
           "certificate-dir": str(tmp_path / "unused")})})
    async with Running(p):
        got = await until(lambda: records(tmp_path), "a value over the secured channel")
    assert got[0]["value"] == "héllo wörld"
    assert not (tmp_path / "unused").exists()  # the secret's certificate, not a made one
