"""The simulator's run loop: ticks, payloads, ground truth, live config changes.

Every tick publishes one reading of each enabled sensor of each machine. Ticks
come every ``interval`` seconds, or, with ``rate``, as often as makes ``rate``
messages per second across all sensors (load mode; if the broker cannot keep
up, the loop runs as fast as it can and the rate printed says what it
achieved). A reading's timestamp is its tick's scheduled time, in epoch
milliseconds, so the readings of one sensor are evenly spaced.

Ground truth: every reading that a failure mode changed (or dropped) is
written as one JSON line to ``ground-truth`` and/or published to
``ground-truth-topic``, with machine, sensor, index, timestamp, the
anomalies, the value published (null for a dropout) and the normal value.

A config file is polled for changes (its mtime) about once a second; a valid
new config takes effect at the next tick (sensors enabled or disabled,
failure modes, timing, topics), each sensor's walk going on where it was. An
invalid one is reported and the running config kept. Broker changes need a
restart.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any

from unsflow._paho import Publisher
from unsflow.errors import ConfigError
from unsflow.simulator.config import MachineSpec, SensorSpec, SimulatorConfig, load_simulator_config
from unsflow.simulator.signals import Reading, SensorSignal

__all__ = ["RunStats", "Simulator", "topic_and_payload"]

log = logging.getLogger("unsflow.simulator")

_POLL_SECONDS = 1.0
_PROGRESS_SECONDS = 10.0


@dataclass
class RunStats:
    published: int = 0
    anomalies: int = 0
    ticks: int = 0
    reloads: int = 0
    seconds: float = 0.0
    asked_rate: float | None = None

    @property
    def rate(self) -> float:
        return self.published / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        asked = f" (asked {self.asked_rate:g})" if self.asked_rate else ""
        return (f"published {self.published} messages in {self.seconds:.2f} s: "
                f"{self.rate:.1f} msg/s{asked}; {self.anomalies} anomalies injected")


@dataclass
class _Stream:
    machine: MachineSpec
    spec: SensorSpec
    signal: SensorSignal = field(repr=False)


def topic_and_payload(cfg: SimulatorConfig, machine: MachineSpec, spec: SensorSpec,
                      value: float, ts_ms: int) -> tuple[str, bytes]:
    """The topic and payload of one reading in the config's style.

    >>> cfg = SimulatorConfig(prefix="t1")
    >>> m = MachineSpec(name="press-1", device="pump-2")
    >>> s = cfg.sensors[0]
    >>> topic_and_payload(cfg, m, s, 13.8, 1587640442999)
    ('t1/acme/plant1/area1/line1/press-1/vibration', b'{"value": 13.8, "unit": "mm/s", \
"timestamp": 1587640442999, "machine": "press-1", "sensor": "vibration"}')
    >>> topic_and_payload(cfg.model_copy(update={"style": "redhat"}), m, s, 13.8, 1587640442999)
    ('t1/iot-sensor/sw/vibration', b'press-1,pump-2,13.8,1587640442999')
    """
    if cfg.style == "redhat":
        topic = f"iot-sensor/sw/{spec.name}"
        payload = f"{machine.name},{machine.device or machine.name},{value},{ts_ms}".encode()
    else:
        topic = "/".join((cfg.enterprise, cfg.site, machine.area or cfg.area,
                          machine.line or cfg.line, machine.name, spec.name))
        payload = json.dumps({"value": value, "unit": spec.unit, "timestamp": ts_ms,
                              "machine": machine.name, "sensor": spec.name},
                             ensure_ascii=False).encode()
    return _prefixed(cfg, topic), payload


def _prefixed(cfg: SimulatorConfig, topic: str) -> str:
    return f"{cfg.prefix.rstrip('/')}/{topic}" if cfg.prefix else topic


class Simulator:
    """Publishes the readings of ``config`` until ``count`` or ``stop``."""

    def __init__(self, config: SimulatorConfig, *, config_path: str | None = None,
                 overrides: dict[str, Any] | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.overrides = dict(overrides or {})
        self.stats = RunStats(asked_rate=config.rate)
        self._signals: dict[str, SensorSignal] = {}
        self._streams: list[_Stream] = []
        self._mtime = self._stat()
        self._build_streams()

    def _stat(self) -> tuple[int, int] | None:
        if not self.config_path:
            return None
        try:
            st = os.stat(self.config_path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def _build_streams(self) -> None:
        cfg = self.config
        streams = []
        for machine in cfg.machines:
            for spec in cfg.sensors_of(machine):
                key = f"{machine.name}/{spec.name}"
                signal = self._signals.get(key)
                if signal is None:
                    signal = self._signals[key] = SensorSignal(spec, seed=cfg.seed, key=key)
                else:
                    signal.update(spec)
                if spec.enabled:
                    streams.append(_Stream(machine, spec, signal))
        self._streams = streams

    def _period(self) -> float:
        cfg = self.config
        if cfg.rate:
            return max(len(self._streams), 1) / cfg.rate
        return cfg.interval

    def _maybe_reload(self) -> None:
        stamp = self._stat()
        if stamp is None or stamp == self._mtime:
            return
        self._mtime = stamp
        try:
            new = load_simulator_config(self.config_path, self.overrides)
        except ConfigError as exc:
            log.error("config change ignored, the running config stays: %s", exc)
            return
        if (new.host, new.port, new.qos) != (self.config.host, self.config.port, self.config.qos):
            log.warning("broker host, port and qos changes take effect after a restart")
        self.config = new
        self.stats.reloads += 1
        self.stats.asked_rate = new.rate
        self._build_streams()
        log.info("config reloaded: %d sensor(s) enabled", len(self._streams))

    def run(self, stop: threading.Event | None = None) -> RunStats:
        """Publish until ``count`` readings were published or ``stop`` is set; then flush."""
        stop = stop or threading.Event()
        cfg = self.config
        publisher = Publisher(cfg.host, cfg.port, qos=cfg.qos, role="simulate",
                              component_id="simulator")
        publisher.open()
        truth: IO[str] | None = open(cfg.ground_truth, "a") if cfg.ground_truth else None  # noqa: SIM115
        started = time.monotonic()
        wall0 = time.time()
        next_tick = started
        next_poll = started + _POLL_SECONDS
        next_progress = started + _PROGRESS_SECONDS
        try:
            while not stop.is_set() and not self._done():
                now = time.monotonic()
                if now >= next_poll:
                    self._maybe_reload()
                    next_poll = now + _POLL_SECONDS
                if now >= next_progress:
                    self.stats.seconds = now - started
                    log.info("%s", self.stats.summary())
                    next_progress = now + _PROGRESS_SECONDS
                if now < next_tick:
                    publisher.pump(min(next_tick - now, 0.1))
                    continue
                ts_ms = int((wall0 + (next_tick - started)) * 1000)
                self._tick(publisher, truth, ts_ms)
                next_tick += self._period()
                publisher.pump(0)
            publisher.flush()
        finally:
            self.stats.seconds = time.monotonic() - started
            publisher.close()
            if truth is not None:
                truth.close()
        return self.stats

    def _done(self) -> bool:
        count = self.config.count
        return count is not None and self.stats.published >= count

    def _tick(self, publisher: Publisher, truth: IO[str] | None, ts_ms: int) -> None:
        cfg = self.config
        self.stats.ticks += 1
        for stream in self._streams:
            if self._done():
                break
            reading = stream.signal.next()
            if reading.value is not None:
                topic, payload = topic_and_payload(cfg, stream.machine, stream.spec,
                                                   reading.value, ts_ms)
                publisher.publish(topic, payload)
                self.stats.published += 1
            else:
                topic = ""
            if reading.anomalies:
                self._record_truth(publisher, truth, stream, reading, ts_ms, topic)
        if truth is not None:
            truth.flush()

    def _record_truth(self, publisher: Publisher, truth: IO[str] | None, stream: _Stream,
                      reading: Reading, ts_ms: int, topic: str) -> None:
        self.stats.anomalies += 1
        entry = {"timestamp": ts_ms, "machine": stream.machine.name, "sensor": stream.spec.name,
                 "index": reading.index, "anomalies": list(reading.anomalies),
                 "value": reading.value, "normal": reading.normal, "topic": topic or None}
        line = json.dumps(entry, ensure_ascii=False)
        if truth is not None:
            truth.write(line + "\n")
        if self.config.ground_truth_topic:
            publisher.publish(_prefixed(self.config, self.config.ground_truth_topic), line.encode())
