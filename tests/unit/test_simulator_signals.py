"""Simulator signals: a reproducible bounded walk; failures exactly where the ground truth says."""

from __future__ import annotations

import doctest
import json
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

import unsflow.simulator.runner
import unsflow.simulator.signals
from unsflow.errors import ConfigError
from unsflow.simulator.config import MachineSpec, SensorSpec, load_simulator_config
from unsflow.simulator.runner import Simulator, topic_and_payload
from unsflow.simulator.signals import Reading, SensorSignal


def vibration(*failures: dict[str, Any], **kw: Any) -> SensorSpec:
    return SensorSpec.model_validate({"name": "vibration", "unit": "mm/s", "low": 10, "high": 18,
                                      "step": 1, "failures": list(failures), **kw})


def readings(spec: SensorSpec, n: int, seed: int = 7, key: str = "m1/vibration") -> list[Reading]:
    return list(SensorSignal(spec, seed=seed, key=key).take(n))


def test_same_seed_same_values_other_seed_or_key_other_values() -> None:
    a = [r.value for r in readings(vibration(), 200)]
    assert a == [r.value for r in readings(vibration(), 200)]
    assert a != [r.value for r in readings(vibration(), 200, seed=8)]
    assert a != [r.value for r in readings(vibration(), 200, key="m2/vibration")]


def test_walk_stays_in_bounds_with_steps_up_to_step() -> None:
    values = [r.value for r in readings(vibration(), 5000)]
    assert all(v is not None and 10 <= v <= 18 for v in values)
    steps = [abs(b - a) for a, b in pairwise(values)]  # type: ignore[operator]
    assert max(steps) <= 1.0 + 1e-3
    assert min(values) < 11 and max(values) > 17  # it does walk the whole range
    temperature = SensorSpec(name="temperature", low=45, high=55, step=0.5)
    assert all(45 <= r.value <= 55 for r in readings(temperature, 5000))  # type: ignore[operator]


def test_failures_do_not_change_the_walk_underneath() -> None:
    plain = readings(vibration(), 300)
    failing = readings(vibration({"mode": "spike", "every": 7}, {"mode": "drift", "slope": 0.1,
                                 "start": 50}, {"mode": "dropout", "start": 200, "length": 5}), 300)
    assert [r.normal for r in failing] == [r.value for r in plain]


def test_spikes_exactly_every_nth_reading_times_factor() -> None:
    got = readings(vibration({"mode": "spike", "every": 10, "factor": 2.5, "start": 15}), 100)
    spiked = [r.index for r in got if r.anomalies == ("spike",)]
    assert spiked == [19, 29, 39, 49, 59, 69, 79, 89, 99]
    for r in got:
        assert r.value is not None
        if r.index in spiked:
            assert r.value == pytest.approx(r.normal * 2.5, abs=2e-3) and r.value > 18 * 1.0
        else:
            assert r.value == r.normal and r.anomalies == ()


def test_drift_adds_slope_per_reading_from_start() -> None:
    got = readings(vibration({"mode": "drift", "start": 100, "slope": 0.25, "length": 40}), 200)
    for r in got:
        offset = 0.25 * (r.index - 99) if 100 <= r.index < 140 else 0.0
        assert r.value == pytest.approx(r.normal + offset, abs=2e-3)
        assert r.anomalies == (("drift",) if offset else ())
    # the wear shows: the drifted tail leaves the walk's range
    assert got[139].value > 18  # type: ignore[operator]


def test_stuck_sensor_repeats_its_last_value() -> None:
    got = readings(vibration({"mode": "stuck", "start": 20, "length": 10}), 40)
    last_good = got[19].value
    assert [r.value for r in got[20:30]] == [last_good] * 10
    assert all(r.anomalies == ("stuck",) for r in got[20:30])
    assert got[30].value == got[30].normal != last_good and got[30].anomalies == ()


def test_dropout_leaves_gaps() -> None:
    got = readings(vibration({"mode": "dropout", "start": 5, "length": 3},
                             {"mode": "dropout", "start": 50}), 60)
    missing = [r.index for r in got if r.value is None]
    assert missing == [5, 6, 7, *range(50, 60)]
    assert all(r.anomalies == ("dropout",) for r in got if r.value is None)


def test_docstring_examples() -> None:
    for module in (unsflow.simulator.signals, unsflow.simulator.runner):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0


def test_payload_styles() -> None:
    cfg = load_simulator_config(None, {"prefix": "t/"})
    m = MachineSpec(name="floor-1-line-1-extruder-1", device="pump-2", line="line7")
    topic, payload = topic_and_payload(cfg, m, cfg.sensors[1], 51.5, 1587640442999)
    assert topic == "t/acme/plant1/area1/line7/floor-1-line-1-extruder-1/temperature"
    assert json.loads(payload) == {"value": 51.5, "unit": "°C", "timestamp": 1587640442999,
                                   "machine": "floor-1-line-1-extruder-1", "sensor": "temperature"}
    red = load_simulator_config(None, {"style": "redhat"})
    assert topic_and_payload(red, m, red.sensors[0], 13.8, 1587640442999) == (
        "iot-sensor/sw/vibration", b"floor-1-line-1-extruder-1,pump-2,13.8,1587640442999")


def test_config_file_with_overrides_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "sim.yaml"
    path.write_text("interval: 2\nseed: 3\nmachines: [{name: press-1}]\n"
                    "sensors:\n  - {name: vibration, low: 10, high: 18,"
                    " failures: [{mode: stuck, start: 4}]}\n")
    cfg = load_simulator_config(path, {"seed": 9, "host": None, "machine-count": 3})
    assert (cfg.interval, cfg.seed) == (2, 9)
    assert [m.name for m in cfg.machines] == ["machine-1", "machine-2", "machine-3"]
    assert cfg.sensors[0].failures[0].mode == "stuck"
    path.write_text('{"sensors": [{"name": "v", "low": 5, "high": 1,'
                    ' "failures": [{"mode": "spike"}]}], "colour": "red"}')
    with pytest.raises(ConfigError) as info:
        load_simulator_config(path, {})
    text = str(info.value)
    assert "sensors.0.failures.0.every: expected a value (required key), found nothing" in text
    path.write_text('{"sensors": [{"name": "v", "low": 5, "high": 1}]}')
    with pytest.raises(ConfigError) as info:
        load_simulator_config(path, {})
    assert "sensors.0: expected high must be greater than low" in str(info.value)
    assert "colour: expected no such key (unknown keys are errors), found key 'colour'" in text


def test_reload_keeps_walks_and_applies_enabled_flags(tmp_path: Path) -> None:
    path = tmp_path / "sim.json"
    data = {"machines": [{"name": "m1"}],
            "sensors": [{"name": "vibration", "low": 10, "high": 18},
                        {"name": "temperature", "low": 45, "high": 55, "enabled": False}]}
    path.write_text(json.dumps(data))
    sim = Simulator(load_simulator_config(path, {}), config_path=str(path))
    assert [s.spec.name for s in sim._streams] == ["vibration"]
    signal = sim._streams[0].signal
    signal.take(5).__next__()
    data["sensors"][1]["enabled"] = True
    data["sensors"][0]["failures"] = [{"mode": "stuck"}]
    path.write_text(json.dumps(data) + " ")  # another size: a change even within one mtime tick
    sim._maybe_reload()
    assert [s.spec.name for s in sim._streams] == ["vibration", "temperature"]
    assert sim._streams[0].signal is signal and signal.index == 1
    path.write_text("{broken")
    sim._maybe_reload()  # reported, and the running config stays
    assert len(sim._streams) == 2 and sim.stats.reloads == 1
