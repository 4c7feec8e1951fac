"""scripts/services.sh for the factory-to-core services: a missing dependency is named,
with the command that starts it; status tells stopped from running.

(The services themselves run in tests/e2e/test_edge_to_core.py.)
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, SERVICES_SH, _free_ports, services_dir

pytestmark = pytest.mark.integration


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SERVICES_SH), *args], cwd=REPO_ROOT, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
                          check=False)


@pytest.fixture
def env(kafka, tmp_path: Path) -> dict[str, str]:
    """A data dir of the test's own whose factory cluster is the shared one; nothing else up."""
    shared = json.loads((services_dir() / "kafka" / "info.json").read_text())
    pg, core, core_sasl, core_ctl, dbz = _free_ports(5)
    return {**os.environ, "UNSFLOW_SERVICES_DIR": str(tmp_path / "services"),
            "UNSFLOW_KAFKA_PORT": str(shared["port"]),
            "UNSFLOW_KAFKA_SASL_PORT": str(shared["sasl_port"]),
            "UNSFLOW_KAFKA_CONTROLLER_PORT": str(shared["controller_port"]),
            "UNSFLOW_POSTGRES_PORT": str(pg), "UNSFLOW_KAFKA_CORE_PORT": str(core),
            "UNSFLOW_KAFKA_CORE_SASL_PORT": str(core_sasl),
            "UNSFLOW_KAFKA_CORE_CONTROLLER_PORT": str(core_ctl),
            "UNSFLOW_DEBEZIUM_PORT": str(dbz)}


def test_debezium_without_postgres_says_which_and_how(env):
    result = run(env, "up", "debezium")
    assert result.returncode == 1
    port = env["UNSFLOW_POSTGRES_PORT"]
    assert (f"debezium: PostgreSQL (127.0.0.1:{port}) is not answering; start it first: "
            "scripts/services.sh up postgres") in result.stderr


def test_mm2_without_the_core_cluster_says_which_and_how(env):
    result = run(env, "up", "mm2")
    assert result.returncode == 1
    port = env["UNSFLOW_KAFKA_CORE_SASL_PORT"]
    assert (f"mm2: the core cluster (127.0.0.1:{port}) is not answering; start it first: "
            "scripts/services.sh up kafka-core") in result.stderr


def test_status_of_stopped_services_exits_3(env):
    result = run(env, "status", "kafka-core", "postgres", "debezium", "mm2")
    assert result.returncode == 3
    assert [line.split() for line in result.stdout.splitlines()] == [
        ["kafka-core", "stopped"], ["postgres", "stopped"], ["debezium", "stopped"],
        ["mm2", "stopped"]]
