"""What a new user meets in the first hour (issue 10): the README's set-up, the quick
start and its printed DuckDB hint, ending a persistent session, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from unsflow.testing import Collector, publish

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def unsflow(*args: str, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "unsflow.cli", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})}, cwd=cwd)


@pytest.mark.skipif(bool(os.environ.get("UNSFLOW_PYTHON")),
                    reason="UNSFLOW_PYTHON chose another interpreter on purpose")
def test_the_suite_runs_in_the_checkouts_own_venv() -> None:
    # scripts/setup.sh (the README's set-up, which scripts/test.sh runs) installs into
    # .venv of this checkout, never into a Python other checkouts or users share.
    assert Path(sys.prefix).resolve() == (REPO / ".venv").resolve()
    import unsflow as package

    assert Path(package.__file__).resolve().is_relative_to(REPO / "src")


def test_quickstart_rows_session_end_and_its_duckdb_hint_as_printed(own_mqtt_broker,
                                                                    tmp_path: Path) -> None:
    env = {**os.environ, "EDGE_BROKER_HOST": own_mqtt_broker.host,
           "EDGE_MQTT_PORT": str(own_mqtt_broker.port)}
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "quickstart.py"),
                          "--messages", "600"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "rows written under ./datalake for this run: 600 (600 distinct of 600" in run.stdout
    assert "ended the session of client id 'unsflow-local-datalake'" in run.stdout
    hint = next(line for line in run.stdout.splitlines()
                if line.startswith("query it yourself: ")).removeprefix("query it yourself: ")
    # exactly as printed, in a shell, from where the quick start ran
    query = subprocess.run(["bash", "-c", hint], cwd=tmp_path, capture_output=True, text=True,
                           timeout=60)
    assert query.returncode == 0, query.stderr
    assert "acme/plant1/assembly/line1/press-01/temperature" in query.stdout
    assert "│   100 │" in query.stdout  # 600 readings over six topics


def test_session_end_drops_what_the_broker_queued_for_a_stopped_pipeline(
        own_mqtt_broker, tmp_path: Path) -> None:
    broker = own_mqtt_broker
    config = tmp_path / "persistent.json"
    config.write_text(json.dumps({
        "mqtt-broker": {"host": broker.host, "port": broker.port, "client-id": "trial-run",
                        "clean-start": False},
        "targets": {"lake": {"type": "file", "path": str(tmp_path / "out.jsonl")}},
        "subscriptions": {"plant/#": {"qos": 1, "target": "lake"}},
    }))
    # the trial run's session, with messages queued for it while it is stopped
    with Collector(broker.host, broker.port, "plant/#", client_id="trial-run",
                   persistent=True):
        pass
    publish(broker.host, broker.port, [("plant/a", b"1"), ("plant/b", b"2")], qos=1)

    done = unsflow("session", "end", str(config))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        f"ended the session of client id 'trial-run' on {broker.host}:{broker.port}; the "
        "broker dropped what it had queued for it")
    again = unsflow("session", "end", str(config))
    assert again.returncode == 0 and "no session of client id 'trial-run'" in again.stdout
    # nothing queued is delivered to a new session of that client id
    with Collector(broker.host, broker.port, "plant/#", client_id="trial-run",
                   persistent=True) as fresh:
        publish(broker.host, broker.port, [("plant/c", b"3")], qos=1)
        assert [p for _, p in fresh.wait(1, timeout=10)] == [b"3"]


def test_session_end_without_a_client_id_says_there_is_nothing_to_end(tmp_path: Path) -> None:
    config = tmp_path / "clean.json"
    config.write_text(json.dumps({
        "targets": {"lake": {"type": "file", "path": "out.jsonl"}},
        "subscriptions": {"plant/#": {"qos": 1, "target": "lake"}}}))
    r = unsflow("session", "end", str(config))
    assert r.returncode == 2
    assert "mqtt-broker.client-id: expected a fixed client id" in r.stderr


def test_one_exit_code_per_kind_of_error(mqtt_broker, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"targets": {}, "subscriptions": {"a/#": {"qos": 1, "target": "x"}},}')
    for command in (["validate", str(bad)], ["run", str(bad)], ["session", "end", str(bad)]):
        r = unsflow(*command)
        assert r.returncode == 2, (command, r.stderr)  # what was given is wrong
        assert "line 1, column 68: expected no comma after the last item" in r.stderr
    # a refused login is a failure of the run (1), not of the config
    refused = tmp_path / "refused.json"
    refused.write_text(json.dumps({
        "mqtt-broker-credential": {"secret-name": "uns-login", "provider": "env"},
        "mqtt-broker": {"host": "localhost", "port": mqtt_broker.tls_port,
                        "tls": {"ca-file": mqtt_broker.ca_file}},
        "targets": {"lake": {"type": "file", "path": str(tmp_path / "out.jsonl")}},
        "subscriptions": {"plant/#": {"qos": 1, "target": "lake"}},
        "http": {"port": 0}}))
    env = {"UNS_LOGIN_USERNAME": mqtt_broker.username, "UNS_LOGIN_PASSWORD": "wrong"}
    assert unsflow("validate", str(refused), env=env).returncode == 0
    r = unsflow("run", str(refused), env=env)
    assert r.returncode == 1, r.stderr
    assert "refused the login" in r.stderr
    missing = tmp_path / "missing.json"
    r = unsflow("validate", str(missing))
    assert r.returncode == 2 and "expected a readable config file" in r.stderr
    r = unsflow("run", "--no-such-option")
    assert r.returncode == 2
