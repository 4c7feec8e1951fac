"""The factory-to-core topology of one test module (or benchmark), started by the project's
own scripts in a services dir of its own.

The core Kafka cluster, PostgreSQL, Debezium (Kafka Connect) and MirrorMaker 2
run in their own data dir on free ports, so a test may stop, kill and restart
any of them without disturbing anyone; the factory cluster is the shared
``kafka`` service (``factory=None``: a test never stops it) or one of its own
(benchmarks). The test CA of the shared services dir is copied in, so one
``ca.crt`` verifies both clusters. Topics are scoped by ``run_id``:
MirrorMaker replicates ``e2c.<run>.*`` only, Debezium writes
``e2c.<run>.line.public.<table>``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.ports import free_ports as _free_ports

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVICES_SH = REPO_ROOT / "scripts" / "services.sh"
TABLES = ("work_orders", "maintenance_events", "quality_results")


class ServiceError(RuntimeError):
    """scripts/services.sh failed; the message holds its output."""


def services(command: str, names: list[str], env: dict[str, str], *,
             locked: bool = False) -> None:
    """``scripts/services.sh COMMAND NAMES...``; ServiceError with its output on failure.

    ``locked``: skip the data dir's lock (for starting independent services in parallel).
    """
    run_env = {**env, "UNSFLOW_SERVICES_LOCKED": "1"} if locked else env
    result = subprocess.run(["bash", str(SERVICES_SH), command, *names], cwd=REPO_ROOT,
                            env=run_env, stdin=subprocess.DEVNULL, capture_output=True,
                            text=True, timeout=900, check=False)
    if result.returncode != 0:
        raise ServiceError(f"scripts/services.sh {command} {' '.join(names)} failed "
                           f"(exit {result.returncode}):\n{result.stdout}{result.stderr}")


def _parallel(*calls: Any) -> None:
    errors: list[BaseException] = []

    def run(call: Any) -> None:
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


@dataclass
class Cluster:
    """One Kafka cluster of the topology (the info.json of its service)."""

    name: str
    info: dict[str, Any]

    @property
    def bootstrap(self) -> str:
        return str(self.info["bootstrap"])

    @property
    def sasl_bootstrap(self) -> str:
        return str(self.info["sasl_bootstrap"])

    def client_config(self, **extra: Any) -> dict[str, Any]:
        return {"bootstrap.servers": self.bootstrap, **extra}

    def unsflow_connection(self, secret: str = "kafka-credential") -> dict[str, Any]:
        """The Kafka keys of an unsflow source or target: SASL_SSL, SCRAM-SHA-512."""
        return {"bootstrap-servers": self.sasl_bootstrap, "security-protocol": "SASL_SSL",
                "sasl-mechanism": "SCRAM-SHA-512", "ca-file": self.info["ca_file"],
                "credential": {"secret-name": secret, "provider": "env"}}

    def create_topic(self, name: str, partitions: int = 1) -> str:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient(self.client_config())
        admin.create_topics([NewTopic(name, partitions, 1)])[name].result(30)
        return name

    def topics(self) -> set[str]:
        from confluent_kafka.admin import AdminClient

        return set(AdminClient(self.client_config()).list_topics(timeout=10).topics)

    def end_offsets(self, topic: str) -> int:
        """Sum of the high watermarks of ``topic`` (0 while it does not exist)."""
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer(self.client_config(**{"group.id": f"probe-{uuid.uuid4().hex[:6]}"}))
        try:
            meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
            if meta is None or meta.error is not None:
                return 0
            return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                       for p in meta.partitions)
        finally:
            consumer.close()


@dataclass
class EdgeCore:
    """Factory Kafka, core Kafka, PostgreSQL, Debezium and MirrorMaker 2 of one run.

    ``start()`` brings everything up; ``stop_service``/``start_service``/``kill`` act
    on one component; ``close()`` stops what it started and removes the dir.
    """

    own_factory: bool = False
    cdc: bool = True  # PostgreSQL and Debezium
    extras: tuple[str, ...] = ()  # more services of this dir: "mosquitto", "minio"
    debezium_schemas: bool = True
    heap: str | None = None
    # Tests: the JVMs (core broker, MirrorMaker, Connect) with the first JIT tier only, which
    # starts them in about half the time on a busy 2-core machine; benchmarks want the
    # optimising compiler (about twice MirrorMaker's throughput) and say False.
    quick_jvm: bool = True
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    workdir: Path = field(init=False)
    env: dict[str, str] = field(init=False)
    factory: Cluster = field(init=False)
    core: Cluster = field(init=False)
    postgres: dict[str, Any] = field(init=False)
    debezium: dict[str, Any] = field(init=False)
    mm2: dict[str, Any] = field(init=False)
    extra: dict[str, dict[str, Any]] = field(init=False, default_factory=dict)
    shared_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        configured = os.environ.get("UNSFLOW_SERVICES_DIR")
        self.shared_dir = REPO_ROOT / configured if configured else REPO_ROOT / ".services"
        # Under /tmp, readable by all: PostgreSQL runs as user "postgres" when we are root
        # and must be able to enter its data dir (pytest's tmp_path is private to root).
        self.workdir = Path(tempfile.mkdtemp(prefix=f"unsflow-e2c-{self.run_id}-"))
        self.workdir.chmod(0o755)
        services_dir = self.workdir / "services"
        services_dir.mkdir(mode=0o755)
        core, core_sasl, core_ctl, pg, dbz, mqtt, mqtts, minio = _free_ports(8)
        self.env = {**os.environ, "UNSFLOW_SERVICES_DIR": str(services_dir),
                    "UNSFLOW_KAFKA_CORE_PORT": str(core),
                    "UNSFLOW_KAFKA_CORE_SASL_PORT": str(core_sasl),
                    "UNSFLOW_KAFKA_CORE_CONTROLLER_PORT": str(core_ctl),
                    "UNSFLOW_POSTGRES_PORT": str(pg), "UNSFLOW_DEBEZIUM_PORT": str(dbz),
                    "UNSFLOW_MQTT_PORT": str(mqtt), "UNSFLOW_MQTTS_PORT": str(mqtts),
                    "UNSFLOW_MINIO_PORT": str(minio),
                    "UNSFLOW_MM2_TOPICS": rf"e2c\.{self.run_id}\..*",
                    "UNSFLOW_DEBEZIUM_TOPIC_PREFIX": self.cdc_prefix,
                    "UNSFLOW_DEBEZIUM_SCHEMAS": "true" if self.debezium_schemas else "false"}
        for name, default in (("KAFKA_CORE", "-Xmx512m -Xms256m"), ("MM2", "-Xmx384m -Xms128m"),
                              ("DEBEZIUM", "-Xmx384m -Xms128m")):
            options = self.heap or default
            if self.quick_jvm:
                options += " -XX:TieredStopAtLevel=1"
            self.env[f"UNSFLOW_{name}_HEAP"] = options

    @property
    def cdc_prefix(self) -> str:
        """Debezium's topic.prefix: topics are ``<prefix>.public.<table>`` on the factory."""
        return f"e2c.{self.run_id}.line"

    def factory_topic(self, name: str) -> str:
        """A factory topic that MirrorMaker replicates (``e2c.<run>.<name>``)."""
        return f"e2c.{self.run_id}.{name}"

    @staticmethod
    def core_topic(factory_topic: str) -> str:
        """Its name on core (DefaultReplicationPolicy)."""
        return f"factory.{factory_topic}"

    def cdc_topics(self, *, core: bool) -> list[str]:
        topics = [f"{self.cdc_prefix}.public.{t}" for t in TABLES]
        return [self.core_topic(t) for t in topics] if core else topics

    def _info(self, name: str) -> dict[str, Any]:
        path = Path(self.env["UNSFLOW_SERVICES_DIR"]) / name / "info.json"
        loaded: dict[str, Any] = json.loads(path.read_text())
        return loaded

    def start(self) -> EdgeCore:
        services_dir = Path(self.env["UNSFLOW_SERVICES_DIR"])
        shared_ca = self.shared_dir / "ca"
        if self.own_factory:
            p, sp, cp = _free_ports(3)
            self.env.update(UNSFLOW_KAFKA_PORT=str(p), UNSFLOW_KAFKA_SASL_PORT=str(sp),
                            UNSFLOW_KAFKA_CONTROLLER_PORT=str(cp))
            if self.heap:
                self.env["UNSFLOW_KAFKA_HEAP"] = self.heap
        else:
            services("up", ["kafka"], {**os.environ, "UNSFLOW_SERVICES_DIR": str(self.shared_dir)})
            shared = json.loads((self.shared_dir / "kafka" / "info.json").read_text())
            self.env.update(UNSFLOW_KAFKA_PORT=str(shared["port"]),
                            UNSFLOW_KAFKA_SASL_PORT=str(shared["sasl_port"]),
                            UNSFLOW_KAFKA_CONTROLLER_PORT=str(shared["controller_port"]))
            self.factory = Cluster("factory", shared)
        if shared_ca.is_dir():
            shutil.copytree(shared_ca, services_dir / "ca")
        started = time.monotonic()
        first = [lambda: services("up", ["kafka-core"], self.env, locked=True)]
        if self.cdc:
            first.append(lambda: services("up", ["postgres"], self.env, locked=True))
        if self.own_factory:
            first.append(lambda: services("up", ["kafka"], self.env, locked=True))
        if self.extras:
            first.append(lambda: services("up", list(self.extras), self.env, locked=True))
        _parallel(*first)
        for name in self.extras:
            self.extra[name] = self._info(name)
        if self.own_factory:
            self.factory = Cluster("factory", self._info("kafka"))
        self.core = Cluster("core", self._info("kafka-core"))
        second = [lambda: services("up", ["mm2"], self.env, locked=True)]
        if self.cdc:
            self.postgres = self._info("postgres")
            second.append(lambda: services("up", ["debezium"], self.env, locked=True))
        _parallel(*second)
        if self.cdc:
            self.debezium = self._info("debezium")
        self.mm2 = self._info("mm2")
        self.started_in = time.monotonic() - started
        return self

    # -- faults --------------------------------------------------------------

    def stop_service(self, name: str) -> None:
        services("down", [name], self.env)

    def start_service(self, name: str) -> None:
        services("up", [name], self.env)

    def kill(self, name: str) -> None:
        """SIGKILL the service's process (mm2, debezium, kafka-core)."""
        pid_file = {"mm2": self.mm2["pid_file"], "debezium": self.debezium["pid_file"],
                    "kafka-core": str(Path(self.env["UNSFLOW_SERVICES_DIR"]) / "kafka-core"
                                      / "kafka.pid")}[name]
        pid = int(Path(pid_file).read_text().strip())
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        raise AssertionError(f"{name} (pid {pid}) still alive 10 s after SIGKILL")

    def close(self) -> None:
        names = ["mm2", *(["debezium", "postgres"] if self.cdc else []), "kafka-core",
                 *(["kafka"] if self.own_factory else []), *self.extras]
        try:
            services("down", names, self.env)
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- for unsflow configs -------------------------------------------------

    def secrets_env(self, minio: Any | None = None) -> dict[str, str]:
        """Environment for ``unsflow run``: the SCRAM user (secret ``kafka-credential``,
        same on both clusters) and, with ``minio``, the store's key (``minio-credential``)."""
        env = {"KAFKA_CREDENTIAL": json.dumps({"username": self.core.info["username"],
                                               "password": self.core.info["password"]})}
        if minio is not None:
            env["MINIO_CREDENTIAL"] = json.dumps({"username": minio.access_key,
                                                  "password": minio.secret_key})
        return env
