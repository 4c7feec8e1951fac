"""Fixtures for the real services the tests talk to, started by the project's own scripts.

A service that cannot start fails the test that needs it, with the script's
output; it never skips (docs/services.md).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# Ports for services, outside the range client sockets draw from (tests/ports.py).
from tests.ports import free_ports as _free_ports

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVICES_SH = REPO_ROOT / "scripts" / "services.sh"


def services_dir(env: dict[str, str] | None = None) -> Path:
    """The data dir of scripts/services.sh (same default, same variable; relative to the repo)."""
    configured = (env if env is not None else os.environ).get("UNSFLOW_SERVICES_DIR")
    return REPO_ROOT / configured if configured else REPO_ROOT / ".services"


def services(command: str, name: str, env: dict[str, str] | None = None) -> None:
    """``scripts/services.sh COMMAND NAME``; fails the test with the script's output."""
    result = subprocess.run(
        ["bash", str(SERVICES_SH), command, name],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,  # a first run may apt-get install
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"scripts/services.sh {command} {name} failed (exit {result.returncode}):\n"
            f"{result.stdout}{result.stderr}",
            pytrace=False,
        )


def services_up(name: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """``scripts/services.sh up NAME`` (idempotent), then the service's info.json."""
    services("up", name, env)
    info = services_dir(env) / name / "info.json"
    try:
        loaded: dict[str, Any] = json.loads(info.read_text())
    except (OSError, ValueError) as exc:
        pytest.fail(f"scripts/services.sh up {name} succeeded but {info}: {exc}", pytrace=False)
    return loaded


@dataclass(frozen=True)
class Broker:
    """The test Mosquitto: anonymous on ``port``, TLS + password on ``tls_port``."""

    host: str
    port: int
    tls_port: int
    ca_file: str
    client_cert: str
    client_key: str
    username: str
    password: str

    def tls_options(self) -> dict[str, Any]:
        """Keyword arguments for the unsflow.testing helpers on ``tls_port``."""
        return {"username": self.username, "password": self.password, "tls_ca": self.ca_file}


def _broker_fields(info: dict[str, Any]) -> dict[str, Any]:
    return {
        "host": info["host"],
        "port": int(info["port"]),
        "tls_port": int(info["tls_port"]),
        "ca_file": info["ca_file"],
        "client_cert": info["client_cert"],
        "client_key": info["client_key"],
        "username": info["username"],
        "password": info["password"],
    }


@pytest.fixture(scope="session")
def mqtt_broker() -> Broker:
    """The shared Mosquitto of scripts/services.sh, started if it is not running.

    Never stop it in a test: use ``own_mqtt_broker`` for that.
    """
    return Broker(**_broker_fields(services_up("mosquitto")))


@dataclass(frozen=True)
class OwnBroker(Broker):
    """A Mosquitto for one test alone, same setup, own data dir and ports.

    ``stop()`` is SIGTERM (the broker saves its queues), ``kill()`` is SIGKILL,
    ``start()`` brings it back on the same ports with its persisted state.
    """

    data_dir: str = ""
    env: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def start(self) -> None:
        services("up", "mosquitto", self.env)

    def stop(self) -> None:
        services("down", "mosquitto", self.env)

    def kill(self) -> None:
        pid = int(Path(self.data_dir, "mosquitto", "mosquitto.pid").read_text())
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def own_mqtt_broker(tmp_path: Path) -> Iterator[OwnBroker]:
    """A broker this test may stop, kill and restart without disturbing the others."""
    port, tls_port = _free_ports(2)
    env = dict(os.environ)
    env.update(
        UNSFLOW_SERVICES_DIR=str(tmp_path / "services"),
        UNSFLOW_MQTT_PORT=str(port),
        UNSFLOW_MQTTS_PORT=str(tls_port),
    )
    info = services_up("mosquitto", env)
    broker = OwnBroker(**_broker_fields(info), data_dir=env["UNSFLOW_SERVICES_DIR"], env=env)
    yield broker
    services("down", "mosquitto", env)


@pytest.fixture
def topic_prefix(request: pytest.FixtureRequest) -> str:
    """``t/<test name>/<8 hex>``: a topic space no other test (or run) publishes to."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name).strip("_")[:80]
    return f"t/{name}/{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class AwsEndpoint:
    """A local server that speaks an AWS API (MinIO: S3; moto: Secrets Manager), with a key it takes."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str
    log: str

    def client(self, service: str) -> Any:
        """A boto3 client for ``service`` at this endpoint (path-style addressing for S3)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            service, endpoint_url=self.endpoint, region_name=self.region,
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}))

    def arrow_filesystem(self) -> Any:
        """pyarrow's S3 file system at this endpoint (paths are ``bucket/key``)."""
        from urllib.parse import urlsplit

        import pyarrow.fs

        url = urlsplit(self.endpoint)
        return pyarrow.fs.S3FileSystem(
            endpoint_override=url.netloc, scheme=url.scheme, region=self.region,
            access_key=self.access_key, secret_key=self.secret_key)


def _aws_endpoint(info: dict[str, Any]) -> AwsEndpoint:
    return AwsEndpoint(info["endpoint"], info["access_key"], info["secret_key"], info["region"],
                       info["log"])


@pytest.fixture(scope="session")
def minio() -> AwsEndpoint:
    """The shared MinIO of scripts/services.sh (built on first use), started if it is not running.

    Tests make their own bucket (``s3_bucket``) and never stop it.
    """
    return _aws_endpoint(services_up("minio"))


@pytest.fixture(scope="session")
def secrets_manager() -> AwsEndpoint:
    """moto's server of scripts/services.sh: AWS Secrets Manager on a local port.

    It holds secrets in memory only; a test creates the secrets it reads, under unique names.
    """
    import sys

    env = dict(os.environ)
    env.setdefault("UNSFLOW_PYTHON", sys.executable)  # the interpreter that has moto[server]
    return _aws_endpoint(services_up("moto", env))


@pytest.fixture
def s3_bucket(minio: AwsEndpoint, request: pytest.FixtureRequest) -> Iterator[str]:
    """A new, empty MinIO bucket for this test alone; emptied and removed afterwards."""
    name = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    bucket = f"t-{name}-{uuid.uuid4().hex[:8]}"
    s3 = minio.client("s3")
    s3.create_bucket(Bucket=bucket)
    yield bucket
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})
    s3.delete_bucket(Bucket=bucket)


@pytest.fixture(scope="session")
def chromium() -> str:
    """The executable of Debian's Chromium (scripts/services.sh up chromium installs it).

    The dashboard's browser tests drive it with Playwright (``executable_path``);
    Playwright's own browser downloads are never used. Missing, it fails the test.
    """
    return str(services_up("chromium")["executable"])


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Any]:
    """Headless Chromium for one test module, driven by Playwright (tests/e2e/browser.py)."""
    from playwright.sync_api import sync_playwright

    from tests.e2e.browser import CHROMIUM_ARGS

    args = [*CHROMIUM_ARGS, *(["--no-sandbox"] if os.geteuid() == 0 else [])]  # root
    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=chromium, args=args)
        yield launched
        launched.close()


@dataclass(frozen=True)
class KafkaCluster:
    """The test Kafka (KRaft, one node): PLAINTEXT on ``bootstrap``, SASL_SSL SCRAM on ``sasl_bootstrap``."""

    bootstrap: str
    sasl_bootstrap: str
    ca_file: str
    username: str
    password: str
    mechanism: str
    log: str

    def client_config(self, *, sasl: bool = False, **extra: Any) -> dict[str, Any]:
        """confluent-kafka settings for a test's own producer, consumer or admin client."""
        config: dict[str, Any] = {"bootstrap.servers": self.bootstrap}
        if sasl:
            config = {"bootstrap.servers": self.sasl_bootstrap, "security.protocol": "SASL_SSL",
                      "sasl.mechanism": self.mechanism, "sasl.username": self.username,
                      "sasl.password": self.password, "ssl.ca.location": self.ca_file}
        config.update(extra)
        return config

    def consume(self, topic: str, count: int, timeout: float = 60.0, **conf: Any) -> list[Any]:
        """Every record of ``topic`` from the beginning (a fresh group), until ``count`` arrived."""
        from confluent_kafka import Consumer

        group = f"{topic}.check.{uuid.uuid4().hex[:6]}"
        consumer = Consumer(self.client_config(**{"group.id": group,
                                                  "auto.offset.reset": "earliest", **conf}))
        consumer.subscribe([topic])
        records: list[Any] = []
        deadline = time.monotonic() + timeout
        try:
            while len(records) < count and time.monotonic() < deadline:
                records += [r for r in consumer.consume(1000, 0.5) if r.error() is None]
        finally:
            consumer.close()
        return records

    def create_topic(self, name: str, partitions: int = 1) -> str:
        """Create ``name`` and wait until it exists."""
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient(self.client_config())
        admin.create_topics([NewTopic(name, partitions, 1)])[name].result(30)
        return name


@pytest.fixture(scope="session")
def kafka() -> KafkaCluster:
    """The shared Kafka of scripts/services.sh (jars fetched on first use), started if not running.

    Tests use their own topics and groups (``kafka_topic``) and never stop it.
    """
    info = services_up("kafka")
    return KafkaCluster(info["bootstrap"], info["sasl_bootstrap"], info["ca_file"],
                        info["username"], info["password"], info["mechanism"], info["log"])


@pytest.fixture
def kafka_topic(request: pytest.FixtureRequest) -> str:
    """``t.<test name>.<8 hex>``: a Kafka topic (and group id stem) no other test uses."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", request.node.name).strip("_")[:80]
    return f"t.{name}.{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class OpcuaServer:
    """The test OPC UA server (Eclipse Milo, scripts/services.d/opcua.sh)."""

    endpoint: str
    port: int
    username: str
    password: str
    env: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def start(self) -> None:
        services("up", "opcua", self.env or None)

    def stop(self) -> None:
        services("down", "opcua", self.env or None)


def _opcua(info: dict[str, Any], env: dict[str, str] | None = None) -> OpcuaServer:
    return OpcuaServer(info["endpoint"], int(info["port"]), info["username"], info["password"],
                       env or {})


@pytest.fixture(scope="session")
def opcua_server() -> OpcuaServer:
    """The shared OPC UA server, started if it is not running. Never stop it in a test."""
    return _opcua(services_up("opcua"))


@pytest.fixture(scope="module")
def own_opcua_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpcuaServer]:
    """An OPC UA server of this module's own, which its tests may stop and start."""
    env = dict(os.environ)
    env.update(UNSFLOW_SERVICES_DIR=str(tmp_path_factory.mktemp("opcua-services")),
               UNSFLOW_OPCUA_PORT=str(_free_ports(1)[0]))
    server = _opcua(services_up("opcua", env), env)
    yield server
    services("down", "opcua", env)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build MinIO before the first test that needs it, when it is not built yet.

    A first build takes minutes (once per machine), and pytest-timeout counts a
    session fixture's setup against the test that first uses it. A failed
    build is reported by the ``minio`` fixture, which runs ``up`` again.
    """
    if not any("minio" in getattr(item, "fixturenames", ()) for item in session.items):
        return
    build = subprocess.Popen(["bash", str(SERVICES_SH), "install", "minio"], cwd=REPO_ROOT,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        build.wait(2)
    except subprocess.TimeoutExpired:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("building MinIO from its Go module (minutes, once per machine)")
        build.wait(3600)


# Fault-scenario rows, as the controller saw them reported (tests/e2e/helpers.py
# ``report_scenario``). With pytest-xdist the scenarios run in worker processes: each row
# travels to the controller on its test's report (``user_properties``).
_FAULT_ROWS: list[dict[str, Any]] = []
_FAULT_SENT = [0]  # rows of this process's FAULT_REPORT already put on a report


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Any:
    outcome = yield
    from tests.e2e.helpers import FAULT_REPORT

    report = outcome.get_result()
    new = FAULT_REPORT[_FAULT_SENT[0]:]
    if new:
        _FAULT_SENT[0] = len(FAULT_REPORT)
        report.user_properties.extend(("fault_scenario", dict(row)) for row in new)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _FAULT_ROWS.extend(value for key, value in report.user_properties
                       if key == "fault_scenario")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The fault suite's table (tests/e2e/helpers.py ``report_scenario``), also as JSON."""
    if not _FAULT_ROWS:
        return
    rows = sorted(_FAULT_ROWS, key=lambda e: e["scenario"])
    write = terminalreporter.write_line
    terminalreporter.section("fault scenarios")
    write(f"{'scenario':<34} {'published':>9} {'delivered':>9} {'dead-lettered':>13} "
          f"{'duplicated':>10} {'lost':>5}")
    for e in rows:
        write(f"{e['scenario']:<34} {e['published']:>9} {e['delivered']:>9} "
              f"{e['dead_lettered']:>13} {e['duplicated']:>10} {e['lost']:>5}")
    out = Path(__file__).parents[1] / "build" / "fault-report.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    write(f"(written to {out})")
