"""`unsflow demo` as a newcomer runs it: the URL within 30 s, live charts and an anomaly alert
within 60 s in a real browser, temperature switched on by editing the demo's config file,
Ctrl-C (SIGINT) exits 0 and keeps the lake, a second run goes on with it; and `--kafka`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import _free_ports
from tests.e2e.browser import watch
from tests.e2e.helpers import read_rows

pytestmark = pytest.mark.e2e

UNSFLOW = str(Path(sys.executable).parent / "unsflow")  # the worktree's .venv, as a user has it


class Demo:
    """`unsflow demo ...` with its output collected line by line, with the time each arrived."""

    def __init__(self, *args: str, cwd: Path) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen([UNSFLOW, "demo", *args], cwd=cwd, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.monotonic() - self.started, line.rstrip("\n")))

    @property
    def output(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def wait_for(self, pattern: str, timeout: float) -> tuple[float, re.Match[str]]:
        """(seconds since start, match) of the first line matching ``pattern``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, line in list(self.lines):
                found = re.search(pattern, line)
                if found:
                    return at, found
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern!r} within {timeout}s:\n{self.output}")

    def interrupt(self, timeout: float = 90.0) -> int:
        """Ctrl-C: SIGINT to the demo, then its exit status."""
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)


@pytest.fixture
def demos() -> Iterator[list[Demo]]:
    started: list[Demo] = []
    yield started
    for demo in started:
        demo.kill()  # a failed test's demo; its children get SIGTERM when it dies


def _parquet(lake: Path) -> list[Path]:
    return sorted(lake.rglob("*.parquet")) if lake.is_dir() else []


def test_demo_live_charts_alert_temperature_switch_stop_and_reuse(browser, mqtt_broker,
                                                                  tmp_path, demos):
    directory = tmp_path / "demo"
    (port,) = _free_ports(1)
    prefix = f"t/demo/{uuid.uuid4().hex[:8]}"
    args = ("--dir", str(directory), "--port", str(port), "--prefix", prefix)
    demo = Demo(*args, cwd=tmp_path)
    demos.append(demo)
    at, found = demo.wait_for(r"dashboard +(http://127\.0\.0\.1:\d+/)", timeout=60)
    assert at < 30, f"the URL came after {at:.1f} s:\n{demo.output}"
    url = found.group(1)

    w = watch(browser, url.rstrip("/"))
    w.page.goto(url)
    for machine in ("press-1", "press-2", "extruder-1", "extruder-2"):
        chart = w.page.wait_for_selector(
            f".chart[data-machine='{machine}'][data-sensor='vibration']", timeout=60_000)
        assert chart is not None
    remaining = max(1.0, 60 - (time.monotonic() - demo.started))
    alert = w.page.wait_for_selector("li.alert.anomaly", timeout=remaining * 1000)
    alert_at = time.monotonic() - demo.started
    assert alert_at < 60, demo.output
    assert alert.get_attribute("data-version") == "1"
    points = [int(c.get_attribute("data-points") or 0)
              for c in w.page.query_selector_all(".chart[data-sensor='vibration']")]
    assert len(points) == 4 and min(points) >= 5, points
    assert w.page.query_selector_all(".group")[0].inner_text().startswith(prefix.split("/")[0])
    w.shot("demo-live-charts-and-alert")
    print(f"\nunsflow demo: URL after {at:.1f} s, first anomaly alert after {alert_at:.1f} s")

    # `unsflow serve` serves the first model.
    _, served = demo.wait_for(r"inference server (http://\S+)", timeout=5)
    import httpx

    deadline, model = time.monotonic() + 30, None
    while time.monotonic() < deadline:
        try:
            model = httpx.get(served.group(1), trust_env=False, timeout=5)
            if model.status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    assert model is not None and model.status_code == 200, model and model.text
    assert model.json()["versions"] == ["1"] and model.json()["version"] == "1"

    # The seed's config change: temperature on, by editing the file the demo printed.
    demo.wait_for(r"switch the temperature sensors on: edit (\S+sensors\.yaml)", timeout=5)
    sensors = directory / "sensors.yaml"
    text = sensors.read_text()
    assert text.count("\n    enabled: false\n") == 1  # the temperature sensor's key
    sensors.write_text(text.replace("\n    enabled: false\n", "\n    enabled: true\n"))
    switched = time.monotonic()
    for machine in ("press-1", "press-2", "extruder-1", "extruder-2"):
        w.page.wait_for_selector(f".chart[data-machine='{machine}'][data-sensor='temperature']",
                                 timeout=30_000)
    print(f"temperature charts {time.monotonic() - switched:.1f} s after the edit")
    w.page.wait_for_timeout(3000)
    w.shot("demo-temperature-switched-on")
    assert w.problems == []

    # Ctrl-C: exit 0, the lake stays.
    assert demo.interrupt() == 0, demo.output
    _, stopped = demo.wait_for(r"the lake keeps (\d+) Parquet objects", timeout=5)
    lake = directory / "lake"
    first = _parquet(lake)
    assert len(first) == int(stopped.group(1)) > 0
    rows = read_rows(lake)
    assert {r["sensor"] for r in rows} == {"vibration", "temperature"}
    assert {r["machine"] for r in rows} == {"press-1", "press-2", "extruder-1", "extruder-2"}

    # A second run goes on with the same lake and model.
    again = Demo(*args, cwd=tmp_path)
    demos.append(again)
    again.wait_for(r"dashboard +http://", timeout=60)
    again.wait_for(rf"reused: the lake holds {len(first)} Parquet objects", timeout=5)
    again.wait_for(r"version 1 found in the model store; no warm-up needed", timeout=60)
    again.wait_for(r"pipeline running", timeout=60)
    deadline = time.monotonic() + 30
    while len(_parquet(lake)) <= len(first) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert set(first) < set(_parquet(lake)), "the second run did not add to the lake"
    assert again.interrupt() == 0, again.output
    assert len(read_rows(lake)) > len(rows)


def test_demo_with_kafka(kafka, mqtt_broker, tmp_path, demos):
    directory = tmp_path / "demo"
    (port,) = _free_ports(1)
    prefix = f"t/demo-kafka/{uuid.uuid4().hex[:8]}"
    demo = Demo("--kafka", "--dir", str(directory), "--port", str(port), "--prefix", prefix,
                "--interval", "0.5", cwd=tmp_path)
    demos.append(demo)
    demo.wait_for(r"Kafka at ", timeout=120)
    demo.wait_for(r"pipeline running \(MQTT -> Kafka -> lake", timeout=120)
    lake = directory / "lake"
    deadline = time.monotonic() + 60
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = read_rows(lake) if _parquet(lake) else []
        if len({r["machine"] for r in rows}) == 4:
            break
        time.sleep(1)
    assert {r["machine"] for r in rows} == {"press-1", "press-2", "extruder-1", "extruder-2"}, \
        demo.output
    # The rows came through Kafka: the core pipeline restored the MQTT topic from a header.
    assert all(r["_topic"].startswith(prefix + "/acme/plant1/") for r in rows)
    assert (directory / "core.json").is_file() and (directory / "factory.json").is_file()
    assert demo.interrupt() == 0, demo.output


def test_demo_says_how_to_install_the_broker_when_it_cannot_start(tmp_path):
    import socket

    with socket.socket() as taken:  # the broker's port, held by someone else
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "UNSFLOW_SERVICES_DIR": str(tmp_path / "services"),
               "UNSFLOW_MQTT_PORT": str(port), "UNSFLOW_MQTTS_PORT": str(_free_ports(1)[0])}
        result = subprocess.run([UNSFLOW, "demo", "--dir", str(tmp_path / "demo")], cwd=tmp_path,
                                env=env, capture_output=True, text=True, timeout=120,
                                check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"port {port} on 127.0.0.1 is in use" in result.stdout
    assert "install it with: bash scripts/setup.sh" in result.stdout
    assert "sudo apt-get install mosquitto mosquitto-clients" in result.stdout
