"""SIGTERM and SIGINT are heard in every phase, connecting included (issue 10).

Kubernetes and systemd send SIGTERM to a pod whose broker is down all the time
(rollouts, node drains). `unsflow run` must exit within the shutdown deadline, with 0
when nothing was in flight, whether its MQTT broker, its Kafka cluster or its secret
store does not answer.
"""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.conftest import _free_ports
from tests.e2e.helpers import UnsflowProcess

pytestmark = pytest.mark.e2e

DEADLINE = 5.0  # the configs' shutdown-timeout


def nothing_listens() -> int:
    (port,) = _free_ports(1)
    with socket.socket() as s:  # make sure: connecting is refused
        assert s.connect_ex(("127.0.0.1", port)) != 0
    return port


def silent_listener() -> socket.socket:
    """A port that accepts TCP connections and never answers (a hung broker)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    return s


def stop_and_time(proc: UnsflowProcess, sig: int, wait_for: str) -> tuple[int, float]:
    proc.wait_for_log(wait_for, timeout=30)
    time.sleep(1.0)  # well inside the retry loop
    assert proc.proc is not None and proc.proc.poll() is None, proc.output
    started = time.monotonic()
    proc.proc.send_signal(sig)
    code = proc.proc.wait(DEADLINE + 10)
    return code, time.monotonic() - started


def write_config(tmp_path: Path, name: str, **sections: object) -> Path:
    """A config with a file target, ``sections`` added (the source under test)."""
    cfg = tmp_path / name
    cfg.write_text(json.dumps({
        "targets": {"lake": {"type": "file", "path": str(tmp_path / "out.jsonl")}},
        "shutdown-timeout": DEADLINE,
        "dead-letter": {"path": str(tmp_path / "dead.jsonl")},
        "spool": {"path": str(tmp_path / "spool")},
        "http": {"port": 0},
        **sections,
    }))
    return cfg


def mqtt_config(tmp_path: Path, port: int) -> Path:
    return write_config(
        tmp_path, "uns.json",
        **{"mqtt-broker": {"host": "127.0.0.1", "port": port,
                           "client-id": "stop-while-connecting"},
           "subscriptions": {"acme/#": {"qos": 1, "target": "lake"}}})


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_run_stops_while_the_broker_refuses_connections(tmp_path: Path, sig: int) -> None:
    proc = UnsflowProcess(["run", str(mqtt_config(tmp_path, nothing_listens()))],
                          cwd=tmp_path, env={}).start()
    code, took = stop_and_time(proc, sig, "cannot connect to")
    assert code == 0, proc.output
    assert took < DEADLINE, f"took {took:.1f}s"
    assert "stopped before the pipeline ran: nothing was in flight" in proc.output


def test_run_stops_while_the_broker_accepts_but_never_answers(tmp_path: Path) -> None:
    hung = silent_listener()
    try:
        proc = UnsflowProcess(["run", str(mqtt_config(tmp_path, hung.getsockname()[1]))],
                              cwd=tmp_path, env={}).start()
        # the CONNECT is never answered: no retry to log, only the attempt
        code, took = stop_and_time(proc, signal.SIGTERM, "[uns] connecting to 127.0.0.1:")
        assert code == 0, proc.output
        assert took < DEADLINE, f"took {took:.1f}s"
    finally:
        hung.close()


def test_run_stops_while_the_kafka_cluster_is_down(tmp_path: Path) -> None:
    port = nothing_listens()
    cfg = write_config(tmp_path, "kafka.json", sources={"factory": {
        "type": "kafka", "bootstrap-servers": f"127.0.0.1:{port}", "topics": ["uns"],
        "group-id": "stop-while-connecting", "target": "lake"}})
    proc = UnsflowProcess(["run", str(cfg)], cwd=tmp_path, env={}).start()
    code, took = stop_and_time(proc, signal.SIGTERM, "not reachable")
    assert code == 0, proc.output
    assert took < DEADLINE, f"took {took:.1f}s"


def test_run_stops_while_the_secret_store_does_not_answer(tmp_path: Path) -> None:
    hung = silent_listener()
    try:
        cfg = write_config(tmp_path, "secret.json", **{
            "mqtt-broker-credential": {"secret-name": "mqtt-credential",
                                       "secret-region": "us-east-1",
                                       "endpoint": f"http://127.0.0.1:{hung.getsockname()[1]}"},
            "mqtt-broker": {"host": "127.0.0.1", "port": nothing_listens()},
            "subscriptions": {"acme/#": {"qos": 1, "target": "lake"}}})
        env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
        proc = UnsflowProcess(["run", str(cfg)], cwd=tmp_path, env=env).start()
        code, took = stop_and_time(proc, signal.SIGTERM, "[uns] connecting to 127.0.0.1:")
        assert code == 0, proc.output
        assert took < DEADLINE + 10, f"took {took:.1f}s"  # a boto3 call in a thread ends first
    finally:
        hung.close()
