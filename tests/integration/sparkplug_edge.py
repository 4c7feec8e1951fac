"""A Sparkplug B edge node built on pysparkplug (PyPI), driven over stdin for the tests.

It runs in a virtualenv of its own (pysparkplug needs paho-mqtt 1.x; unsflow uses 2.x), so
it shares no code with unsflow: payloads are encoded, and commands decoded, by pysparkplug.

    python sparkplug_edge.py HOST PORT GROUP EDGE_NODE DEVICE

Commands, one JSON object per line on stdin:
    {"op": "connect", "alias_base": 1}   connect (NDEATH will set), publish NBIRTH and DBIRTH
    {"op": "data", "count": 3}           NDATA and DDATA by alias only (no names, no datatypes)
    {"op": "restart", "alias_base": 101} NDEATH, disconnect, connect again: new bdSeq, new aliases
    {"op": "ddeath"}                     DDEATH of the device
    {"op": "quit"}
Events, one JSON object per line on stdout: ready, born, sent (with the values sent, as
JSON: bytes in base64, datetimes in epoch ms, arrays as lists), rebirth_request (an NCMD
``Node Control/Rebirth = true`` arrived; the node then publishes its BIRTHs again).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import sys
import threading
import time

import pysparkplug as psp

HOST, PORT, GROUP, NODE, DEVICE = sys.argv[1], int(sys.argv[2]), *sys.argv[3:6]
T = psp.DataType
UTC = dt.UTC
D1 = dt.datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
D2 = dt.datetime(1999, 12, 31, 23, 59, 59, 1000, tzinfo=UTC)

# Every datatype pysparkplug can encode (it leaves out DataSet, Template, PropertySet[List]).
NODE_METRICS: list[tuple[str, psp.DataType, object]] = [
    ("Int8", T.INT8, -128), ("Int16", T.INT16, -32768), ("Int32", T.INT32, -2147483648),
    ("Int64", T.INT64, -9223372036854775808), ("UInt8", T.UINT8, 255),
    ("UInt16", T.UINT16, 65535), ("UInt32", T.UINT32, 4294967295),
    ("UInt64", T.UINT64, 18446744073709551615), ("Float", T.FLOAT, 1.5),
    ("Double", T.DOUBLE, 3.141592653589793), ("Boolean", T.BOOLEAN, True),
    ("String", T.STRING, "héllo wörld"), ("DateTime", T.DATETIME, D1), ("Text", T.TEXT, "text"),
    ("UUID", T.UUID, "0b7c1d2e-3f40-4a5b-8c6d-7e8f9a0b1c2d"), ("Bytes", T.BYTES, b"\x00\x01\xff"),
    ("File", T.FILE, b"%PDF-1.4"), ("Int8Array", T.INT8_ARRAY, (-128, 0, 127)),
    ("Int16Array", T.INT16_ARRAY, (-32768, 32767)), ("Int32Array", T.INT32_ARRAY, (-1, 2)),
    ("Int64Array", T.INT64_ARRAY, (-9223372036854775808, 9223372036854775807)),
    ("UInt8Array", T.UINT8_ARRAY, (0, 255)), ("UInt16Array", T.UINT16_ARRAY, (65535,)),
    ("UInt32Array", T.UINT32_ARRAY, (4294967295, 1)),
    ("UInt64Array", T.UINT64_ARRAY, (18446744073709551615, 0)),
    ("FloatArray", T.FLOAT_ARRAY, (0.5, -1.25)), ("DoubleArray", T.DOUBLE_ARRAY, (0.1, -2e300)),
    ("BooleanArray", T.BOOLEAN_ARRAY, (True, False, True, True, False, False, False, False,
                                       True)),
    ("StringArray", T.STRING_ARRAY, ("a", "", "ünï")), ("DateTimeArray", T.DATETIME_ARRAY, (D1, D2)),
]
DEVICE_METRICS: list[tuple[str, psp.DataType, object]] = [
    ("Press/Temperature", T.FLOAT, 20.25), ("Press/Running", T.BOOLEAN, True),
    ("Press/Cycles", T.UINT32, 7),
]


def as_json(value: object) -> object:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dt.datetime):
        return int(value.timestamp() * 1000)
    if isinstance(value, tuple):
        return [as_json(v) for v in value]
    return value


def vary(name: str, value: object, i: int) -> object:
    """The value of DATA message ``i``: numbers and text change, the rest stays."""
    if name in ("Int32", "Press/Cycles"):
        return i
    if name in ("Double", "Press/Temperature"):
        return i + 0.25
    if name in ("Boolean", "Press/Running"):
        return i % 2 == 0
    if name == "String":
        return f"reading {i}"
    return value


class Edge:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        # One message sequence: a Rebirth (on paho's thread) waits for a DATA pair in progress.
        self.publishing = threading.RLock()
        self.bd_seq = 0
        self.seq = 0
        self.alias_base = 1
        self.client: psp.Client | None = None
        self.data_no = 0

    def emit(self, **event: object) -> None:
        with self.lock:
            sys.stdout.write(json.dumps(event) + "\n")
            sys.stdout.flush()

    def next_seq(self) -> int:
        seq, self.seq = self.seq, (self.seq + 1) % 256
        return seq

    def aliases(self, metrics: list[tuple[str, psp.DataType, object]], offset: int) -> dict:
        return {name: self.alias_base + offset + i for i, (name, _, _) in enumerate(metrics)}

    def publish(self, kind: psp.MessageType, payload: object, device: str | None = None,
                dtypes: bool = True) -> None:
        topic = psp.Topic(message_type=kind, group_id=GROUP, edge_node_id=NODE,
                          device_id=device)
        assert self.client is not None
        self.client.publish(psp.Message(topic=topic, payload=payload, qos=psp.QoS.AT_MOST_ONCE,
                                        retain=False), include_dtypes=dtypes)

    def births(self) -> None:
        with self.publishing:
            self._births()

    def _births(self) -> None:
        now = psp.get_current_timestamp()
        self.seq = 0
        node_alias = self.aliases(NODE_METRICS, 0)
        dev_alias = self.aliases(DEVICE_METRICS, 1000)
        metrics = [psp.Metric(timestamp=now, name="bdSeq", datatype=T.INT64, value=self.bd_seq),
                   psp.Metric(timestamp=now, name="Node Control/Rebirth", datatype=T.BOOLEAN,
                              value=False)]
        metrics += [psp.Metric(timestamp=now, name=n, datatype=t, value=v, alias=node_alias[n])
                    for n, t, v in NODE_METRICS]
        self.publish(psp.MessageType.NBIRTH, psp.NBirth(timestamp=now, seq=self.next_seq(),
                                                        metrics=tuple(metrics)))
        dmetrics = tuple(psp.Metric(timestamp=now, name=n, datatype=t, value=v,
                                    alias=dev_alias[n]) for n, t, v in DEVICE_METRICS)
        self.publish(psp.MessageType.DBIRTH, psp.DBirth(timestamp=now, seq=self.next_seq(),
                                                        metrics=dmetrics), DEVICE)
        self.emit(event="born", bd_seq=self.bd_seq, alias_base=self.alias_base,
                  aliases={**node_alias, **dev_alias})

    def on_command(self, _client: object, message: psp.Message) -> None:
        for metric in message.payload.metrics:
            if metric.name == "Node Control/Rebirth" and metric.value:
                self.emit(event="rebirth_request", topic=str(message.topic))
                self.births()

    def connect(self) -> None:
        client = psp.Client(client_id=f"edge-{GROUP}-{NODE}-{self.bd_seq}")
        death = psp.NDeath(timestamp=psp.get_current_timestamp(), bd_seq_metric=psp.Metric(
            timestamp=psp.get_current_timestamp(), name="bdSeq", datatype=T.INT64,
            value=self.bd_seq))
        client.set_will(psp.Message(
            topic=psp.Topic(message_type=psp.MessageType.NDEATH, group_id=GROUP,
                            edge_node_id=NODE),
            payload=death, qos=psp.QoS.AT_MOST_ONCE, retain=False))
        client.subscribe(psp.Topic(message_type=psp.MessageType.NCMD, group_id=GROUP,
                                   edge_node_id=NODE), psp.QoS.AT_LEAST_ONCE, self.on_command)
        connected = threading.Event()
        self.client = client
        client.connect(HOST, port=PORT, blocking=False, callback=lambda _c: connected.set())
        if not connected.wait(10):
            raise SystemExit("edge node: no CONNACK within 10 s")
        # The NCMD subscription must be in place before anyone may send a Rebirth request.
        time.sleep(0.3)
        self.births()

    def data(self, count: int) -> None:
        node_alias = self.aliases(NODE_METRICS, 0)
        dev_alias = self.aliases(DEVICE_METRICS, 1000)
        for _ in range(count):
            with self.publishing:
                self._data_pair(node_alias, dev_alias)

    def _data_pair(self, node_alias: dict, dev_alias: dict) -> None:
        i = self.data_no
        self.data_no += 1
        now = psp.get_current_timestamp()
        values = {n: vary(n, v, i) for n, _, v in NODE_METRICS}
        metrics = tuple(psp.Metric(timestamp=now, name=None, datatype=t, value=values[n],
                                   alias=node_alias[n]) for n, t, _ in NODE_METRICS)
        seq = self.next_seq()
        self.publish(psp.MessageType.NDATA, psp.NData(timestamp=now, seq=seq,
                                                      metrics=metrics), dtypes=False)
        dvalues = {n: vary(n, v, i) for n, _, v in DEVICE_METRICS}
        dmetrics = tuple(psp.Metric(timestamp=now, name=None, datatype=t, value=dvalues[n],
                                    alias=dev_alias[n]) for n, t, _ in DEVICE_METRICS)
        dseq = self.next_seq()
        self.publish(psp.MessageType.DDATA, psp.DData(timestamp=now, seq=dseq,
                                                      metrics=dmetrics), DEVICE, dtypes=False)
        self.emit(event="sent", i=i, seq=seq, device_seq=dseq,
                  values={n: as_json(v) for n, v in values.items()},
                  device_values={n: as_json(v) for n, v in dvalues.items()})

    def stop(self) -> None:
        if self.client is None:
            return
        now = psp.get_current_timestamp()
        self.publish(psp.MessageType.NDEATH, psp.NDeath(timestamp=now, bd_seq_metric=psp.Metric(
            timestamp=now, name="bdSeq", datatype=T.INT64, value=self.bd_seq)))
        self.client.disconnect()
        self.client = None

    def ddeath(self) -> None:
        self.publish(psp.MessageType.DDEATH, psp.DDeath(timestamp=psp.get_current_timestamp(),
                                                        seq=self.next_seq()), DEVICE)


def main() -> None:
    edge = Edge()
    edge.emit(event="ready", version=psp.__version__)
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "connect":
            edge.alias_base = cmd.get("alias_base", 1)
            edge.connect()
        elif op == "data":
            edge.data(cmd.get("count", 1))
        elif op == "restart":
            edge.stop()
            edge.bd_seq += 1
            edge.alias_base = cmd.get("alias_base", edge.alias_base)
            edge.connect()
        elif op == "ddeath":
            edge.ddeath()
        elif op == "quit":
            edge.stop()
            edge.emit(event="bye")
            return


if __name__ == "__main__":
    main()
