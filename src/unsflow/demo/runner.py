"""``unsflow demo``: the whole line on one machine, as processes a user could start by hand.

Order of events (each step's child is an ``unsflow`` command in a process of
its own, its output in ``<dir>/logs/<name>.log``):

1. The broker: ``scripts/services.sh up mosquitto`` (the project's broker on
   127.0.0.1:1883, shared with the tests), or ``--broker HOST:PORT``; with
   ``--kafka`` also ``scripts/services.sh up kafka``.
2. ``unsflow dashboard`` and ``unsflow simulate`` (``sensors.yaml``); the
   dashboard's URL is printed as soon as it answers.
3. The first model (:mod:`unsflow.demo.warmup`, a subprocess), unless the
   model store already has one; then ``unsflow serve`` on the model store.
4. ``unsflow run pipeline.json`` (with ``--kafka``: ``factory.json``, MQTT to
   Kafka plus the alert paths, and ``core.json``, Kafka to the lake).
5. Until SIGINT or SIGTERM; a child that dies on its own stops the demo with
   its log's tail. Then SIGTERM to each child (the simulator first, so that
   the pipeline drains what was published) and exit 0 when all stopped cleanly.

Children run in sessions of their own (a Ctrl-C in the terminal reaches the
demo only, which stops them in order) and get SIGTERM if the demo dies
(Linux ``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unsflow.demo.files import (
    MODEL,
    DemoState,
    alerts_root,
    pipeline_configs,
    port_free,
    sensors_yaml,
)
from unsflow.errors import UnsflowError

__all__ = ["Demo", "DemoOptions", "services_script"]

URL_TIMEOUT = 25.0  # seconds for the dashboard to answer (the URL is due within 30 s)
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


def services_script() -> Path | None:
    """The project's ``scripts/services.sh`` (a source checkout), or None."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[3] / "scripts" / "services.sh",
                      Path.cwd() / "scripts" / "services.sh"):
        if candidate.is_file():
            return candidate
    return None


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the demo process dies (Linux only)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@dataclass
class DemoOptions:
    directory: Path
    port: int = 8050
    broker: tuple[str, int] | None = None
    prefix: str = ""
    kafka: bool = False
    interval: float = 1.0


@dataclass
class _Child:
    name: str
    args: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    stopped: bool = False

    def tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class Demo:
    options: DemoOptions
    say: Callable[[str], None] = field(default=lambda text: print(f"unsflow demo: {text}",
                                                                  flush=True))
    children: list[_Child] = field(default_factory=list)
    stop_requested: bool = False

    # --- the whole run ---------------------------------------------------------

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        try:
            failed = self._start_and_wait()
        except UnsflowError as exc:
            self.say(f"error: {exc}")
            failed = True
        finally:
            clean = self._stop_all()
        if not failed:
            self._summary()
        return 0 if clean and not failed else 1

    def _on_signal(self, signum: int, frame: Any) -> None:
        if not self.stop_requested:
            self.stop_requested = True
            print(f"\nunsflow demo: {signal.Signals(signum).name}: stopping (the lake stays)",
                  flush=True)

    def _start_and_wait(self) -> bool:
        """True when a child failed."""
        o = self.options
        directory = o.directory.resolve()
        (directory / "logs").mkdir(parents=True, exist_ok=True)
        reused = (directory / "lake").is_dir()
        host, port = o.broker if o.broker else self._broker_from_services()
        kafka = self._kafka_from_services() if o.kafka else None
        state = self._state(directory, host, port, kafka)
        objects = sum(1 for _ in (directory / "lake").rglob("*.parquet")) if reused else 0
        self.say(f"directory {directory}" + (f" (reused: the lake holds {objects} Parquet "
                                             "objects)" if reused else ""))
        if not port_free(o.port):
            raise UnsflowError(f"port {o.port} is in use; choose another with --port")
        self._write_files(directory, state)
        configs = [directory / n for n in pipeline_configs(state, directory, o.kafka)]
        cli = [sys.executable, "-m", "unsflow.cli"]
        config_args = [arg for c in configs for arg in ("--config", str(c))]
        dash = self._start("dashboard", [*cli, "dashboard", *config_args, "--host", "127.0.0.1",
                                         "--port", str(o.port)])
        self._start("simulator", [*cli, "simulate", "--config", str(directory / "sensors.yaml"),
                                  "--host", state.broker_host, "--port", str(state.broker_port),
                                  *(["--prefix", state.prefix] if state.prefix else [])])
        url = f"http://127.0.0.1:{o.port}/"
        if not self._wait_http(url + "healthz", URL_TIMEOUT, dash):
            return self._failed(dash, "the dashboard did not answer")
        self.say(f"dashboard  {url}")
        if self.stop_requested:
            return False
        warm = self._start("warmup", [sys.executable, "-m", "unsflow.demo.warmup",
                                      str(directory)])
        assert warm.proc is not None
        while warm.proc.poll() is None:
            time.sleep(0.1)
        warm.stopped = True
        if warm.proc.returncode != 0:
            return self._failed(warm, "the first model could not be made")
        self.say(warm.tail(1).strip() or "model ready")
        if self.stop_requested:
            return False
        self._start("serve", [*cli, "serve", "--store", str(directory / "models"), "--host",
                              "127.0.0.1", "--port", str(state.serve_port),
                              "--poll-interval", "5"])
        for config in configs:
            child = self._start(f"pipeline-{config.stem}", [*cli, "run", str(config)])
            port_ = state.metrics_port if config.stem != "core" else state.core_metrics_port
            if not self._wait_http(f"http://127.0.0.1:{port_}/readyz", READY_TIMEOUT, child):
                return self._failed(child, f"the pipeline {config.name} did not become ready")
        if self.stop_requested:
            return False
        flow = ("MQTT -> Kafka -> lake, and window -> model -> alerts on MQTT" if o.kafka
                else "MQTT -> lake, and window -> model -> alerts on MQTT")
        self.say(f"pipeline running ({flow}); lake: {directory / 'lake'}")
        self.say(f"alerts on topics {alerts_root(state)}/#; inference server "
                 f"http://127.0.0.1:{state.serve_port}/v2/models/{MODEL}")
        self.say(f"switch the temperature sensors on: edit {directory / 'sensors.yaml'} "
                 "(enabled: true under temperature) and save; the charts appear within seconds")
        self.say(f"logs in {directory / 'logs'}; Ctrl-C stops everything (the lake stays)")
        while not self.stop_requested:
            for child in self.children:
                if not child.stopped and child.proc is not None and \
                        child.proc.poll() is not None:
                    return self._failed(child, f"{child.name} exited with status "
                                               f"{child.proc.returncode}")
            time.sleep(0.3)
        return False

    # --- set-up ----------------------------------------------------------------

    def _services(self, name: str) -> dict[str, Any]:
        script = services_script()
        if script is None:
            raise UnsflowError(
                "the demo starts its broker with the project's scripts/services.sh, which is "
                "not here (unsflow installed from a wheel?): run it from a clone of unsflow "
                "after `bash scripts/setup.sh`, or start a broker and pass --broker HOST:PORT")
        self.say(f"starting {name} (bash {script.relative_to(script.parents[1])} up {name})")
        result = subprocess.run(["bash", str(script), "up", name], cwd=script.parents[1],
                                stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                check=False)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
            install = ("bash scripts/setup.sh   (or: sudo apt-get install mosquitto "
                       "mosquitto-clients)" if name == "mosquitto"
                       else f"bash scripts/services.sh up {name}   (see docs/services.md)")
            raise UnsflowError(f"cannot start {name}:\n{tail}\ninstall it with: {install}")
        services_dir = Path(os.environ.get("UNSFLOW_SERVICES_DIR") or
                            script.parents[1] / ".services")
        if not services_dir.is_absolute():
            services_dir = script.parents[1] / services_dir
        try:
            info: dict[str, Any] = json.loads((services_dir / name / "info.json").read_text())
        except (OSError, ValueError) as exc:
            raise UnsflowError(f"{name} started but its info.json cannot be read: {exc}") \
                from exc
        return info

    def _broker_from_services(self) -> tuple[str, int]:
        info = self._services("mosquitto")
        self.say(f"Mosquitto at {info['host']}:{info['port']}")
        return str(info["host"]), int(info["port"])

    def _kafka_from_services(self) -> str:
        info = self._services("kafka")
        self.say(f"Kafka at {info['bootstrap']}")
        return str(info["bootstrap"])

    def _state(self, directory: Path, host: str, port: int, kafka: str | None) -> DemoState:
        o = self.options
        state = DemoState.load(directory)
        if state is not None and (state.broker_host, state.broker_port, state.prefix) == \
                (host, port, o.prefix) and \
                all(port_free(p) for p in (state.metrics_port, state.serve_port,
                                           state.core_metrics_port)):
            if kafka and state.kafka_bootstrap != kafka:
                state.kafka_bootstrap = kafka
                state.save(directory)
            return state
        fresh = DemoState.new(host, port, o.prefix)
        if state is not None:
            fresh.demo_id = state.demo_id  # same Kafka topic and consumer group as before
        fresh.kafka_bootstrap = kafka
        fresh.save(directory)
        return fresh

    def _write_files(self, directory: Path, state: DemoState) -> None:
        sensors = directory / "sensors.yaml"
        if not sensors.exists():
            sensors.write_text(sensors_yaml(state, directory, self.options.interval),
                               encoding="utf-8")
        for name, config in pipeline_configs(state, directory, self.options.kafka).items():
            path = directory / name
            text = json.dumps(config, indent=2) + "\n"
            try:
                if path.read_text(encoding="utf-8") == text:
                    continue
            except OSError:
                pass
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)

    # --- children --------------------------------------------------------------

    def _start(self, name: str, args: list[str]) -> _Child:
        log = self.options.directory.resolve() / "logs" / f"{name}.log"
        child = _Child(name, args, log)
        with open(log, "ab") as out:
            out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(args)}\n".encode())
            out.flush()
            child.proc = subprocess.Popen(
                args, cwd=self.options.directory.resolve(), stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                # The demo process has no threads (the warm-up runs in a child), so a
                # preexec_fn is safe here.
                preexec_fn=_die_with_parent,  # noqa: PLW1509
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.children.append(child)
        return child

    def _wait_http(self, url: str, timeout: float, child: _Child) -> bool:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stop_requested:
            if child.proc is not None and child.proc.poll() is not None:
                return False
            try:
                with opener.open(url, timeout=2) as response:
                    if response.status == 200:
                        return True
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.2)
        return self.stop_requested

    def _failed(self, child: _Child, why: str) -> bool:
        self.say(f"error: {why}; the end of {child.log}:\n{child.tail()}")
        return True

    def _stop_all(self) -> bool:
        """SIGTERM to every child still running, the simulator first; True when all exited 0."""
        order = {"simulator": 0, "pipeline-factory": 1, "pipeline-pipeline": 1,
                 "pipeline-core": 2, "dashboard": 3, "serve": 3, "warmup": 0}
        clean = True
        for child in sorted(self.children, key=lambda c: order.get(c.name, 4)):
            proc = child.proc
            if proc is None or child.stopped:
                continue
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.say(f"{child.name} did not stop within {STOP_TIMEOUT:.0f} s; killed")
                    proc.kill()
                    proc.wait()
                    clean = False
                    continue
            if proc.returncode != 0:
                self.say(f"{child.name} exited with status {proc.returncode} (log {child.log})")
                clean = False
            child.stopped = True
        return clean

    def _summary(self) -> None:
        lake = self.options.directory.resolve() / "lake"
        objects = list(lake.rglob("*.parquet")) if lake.is_dir() else []
        self.say(f"stopped; the lake keeps {len(objects)} Parquet objects in {lake}. Run "
                 "`unsflow demo` again to go on with it.")
