"""The simulator's config: broker, timing, machines, sensors and their failure modes.

A JSON or YAML file with these keys (kebab-case, unknown keys rejected), e.g.::

    {"interval": 1, "style": "uns", "enterprise": "acme", "site": "plant1",
     "machines": [{"name": "press-1"}, {"name": "press-2", "line": "line2"}],
     "sensors": [
       {"name": "vibration", "unit": "mm/s", "low": 10, "high": 18, "step": 1,
        "failures": [{"mode": "spike", "every": 30}]},
       {"name": "temperature", "unit": "°C", "low": 45, "high": 55, "step": 0.5,
        "failures": [{"mode": "drift", "start": 100, "slope": 0.2}]}]}
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import Field, ValidationError, model_validator

from unsflow.config.models import Model
from unsflow.errors import ConfigError, ConfigIssue

__all__ = [
    "DriftFailure",
    "DropoutFailure",
    "FailureSpec",
    "MachineSpec",
    "SensorSpec",
    "SimulatorConfig",
    "SpikeFailure",
    "StuckFailure",
    "default_sensors",
    "load_simulator_config",
]


class SpikeFailure(Model):
    """Every Nth reading (N, 2N, ...) is the normal value times factor."""

    mode: Literal["spike"]
    every: int = Field(ge=1, description="A spike on readings N, 2N, 3N, ... (counted from 1).")
    factor: float = Field(2.5, description="Spike value = normal value * factor.")
    start: int = Field(0, ge=0, description="No spike before this reading index (0-based).")


class DriftFailure(Model):
    """Bearing wear: from reading `start` on, the value moves by `slope` per reading."""

    mode: Literal["drift"]
    start: int = Field(0, ge=0, description="First drifted reading index (0-based).")
    slope: float = Field(description="Added per reading: offset = slope * (index - start + 1).")
    length: int | None = Field(None, ge=1, description="Readings drifted; default: to the end.")


class StuckFailure(Model):
    """A stuck sensor: from reading `start` on, it repeats its last good value."""

    mode: Literal["stuck"]
    start: int = Field(0, ge=0, description="First stuck reading index (0-based).")
    length: int | None = Field(None, ge=1, description="Readings stuck; default: to the end.")


class DropoutFailure(Model):
    """Dropout: `length` readings from `start` on are not published."""

    mode: Literal["dropout"]
    start: int = Field(0, ge=0, description="First missing reading index (0-based).")
    length: int | None = Field(None, ge=1, description="Readings missing; default: to the end.")


FailureSpec = Annotated[
    Union[SpikeFailure, DriftFailure, StuckFailure, DropoutFailure],  # noqa: UP007
    Field(discriminator="mode"),
]


class SensorSpec(Model):
    """One sensor: a bounded random walk, plus failure modes."""

    name: str = Field(min_length=1, description="Sensor (metric) name: the topic's last level.")
    enabled: bool = Field(True, description="Publish this sensor's readings.")
    unit: str = Field("", description="Unit put in the uns payload.")
    low: float = Field(description="Lower bound of the walk.")
    high: float = Field(description="Upper bound of the walk.")
    step: float = Field(1.0, gt=0, description="Largest step of the walk per reading.")
    start: float | None = Field(None, description="First value; default: the middle.")
    decimals: int = Field(3, ge=0, le=12, description="Decimals of published values.")
    failures: list[FailureSpec] = Field(default_factory=list, description="Failure modes.")

    @model_validator(mode="after")
    def _bounds(self) -> SensorSpec:
        if self.high <= self.low:
            raise ValueError("high must be greater than low")
        if self.start is not None and not self.low <= self.start <= self.high:
            raise ValueError("start must lie between low and high")
        return self


def default_sensors() -> list[SensorSpec]:
    """The demo's sensors: vibration 10-18 (a spike every 30th reading), temperature 45-55."""
    return [
        SensorSpec.model_validate({"name": "vibration", "unit": "mm/s", "low": 10, "high": 18,
                                   "step": 1.0, "failures": [{"mode": "spike", "every": 30}]}),
        SensorSpec.model_validate({"name": "temperature", "unit": "°C", "low": 45, "high": 55,
                                   "step": 0.5}),
    ]


class MachineSpec(Model):
    """One machine; its sensors default to the config's `sensors`."""

    name: str = Field(min_length=1, description="Machine name (uns topic level; redhat machineId).")
    area: str | None = Field(None, description="uns: area level; default: the config's area.")
    line: str | None = Field(None, description="uns: line level; default: the config's line.")
    device: str | None = Field(None, description="redhat: deviceId; default: the machine name.")
    sensors: list[SensorSpec] | None = Field(None, description="Sensors; default: `sensors`.")


class SimulatorConfig(Model):
    """What `unsflow simulate` publishes, where and how fast."""

    host: str = Field("localhost", description="MQTT broker host.")
    port: int = Field(1883, ge=1, le=65535, description="MQTT broker port.")
    qos: int = Field(1, ge=0, le=2, description="Publish QoS; 1 and 2 wait for acknowledgements.")
    interval: float = Field(5.0, gt=0, description="Seconds between readings of one sensor.")
    rate: float | None = Field(
        None, gt=0, description="Load mode: messages per second across all sensors "
        "(replaces interval).")
    count: int | None = Field(None, ge=1, description="Stop after this many readings published.")
    seed: int = Field(0, description="Random seed: the same seed gives the same values.")
    style: Literal["uns", "redhat"] = Field(
        "uns", description="uns: enterprise/site/area/line/machine/sensor with JSON; redhat: "
        "iot-sensor/sw/SENSOR with CSV machineId,deviceId,value,epochMillis.")
    prefix: str = Field("", description="Put in front of every topic (e.g. a test's own prefix).")
    enterprise: str = Field("acme", min_length=1, description="uns: enterprise level.")
    site: str = Field("plant1", min_length=1, description="uns: site level.")
    area: str = Field("area1", min_length=1, description="uns: area level.")
    line: str = Field("line1", min_length=1, description="uns: line level.")
    machines: list[MachineSpec] = Field(
        default_factory=lambda: [MachineSpec.model_validate({"name": "machine-1"})],
        description="The machines.")
    sensors: list[SensorSpec] = Field(
        default_factory=default_sensors, description="Sensors of machines that name none.")
    ground_truth: str | None = Field(
        None, description="JSON-lines file receiving every injected anomaly.")
    ground_truth_topic: str | None = Field(
        None, description="Topic (after prefix) receiving every injected anomaly as JSON.")

    @model_validator(mode="after")
    def _unique(self) -> SimulatorConfig:
        names = [m.name for m in self.machines]
        if len(set(names)) != len(names):
            raise ValueError("machine names must be distinct")
        return self

    def sensors_of(self, machine: MachineSpec) -> list[SensorSpec]:
        return list(machine.sensors if machine.sensors is not None else self.sensors)


def load_simulator_config(path: str | Path | None, overrides: dict[str, Any]) -> SimulatorConfig:
    """The file's config (JSON or YAML; none: defaults) with ``overrides`` on top.

    ``overrides`` uses the config's keys; ``machine-count: M`` replaces the
    machines by ``machine-1`` .. ``machine-M``. Raises ConfigError naming each
    bad key.
    """
    source = str(path) if path else "simulator config"
    data: Any = {}
    if path:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError([ConfigIssue("", "a readable JSON or YAML file", str(exc))],
                              source=source) from exc
        if not isinstance(data, dict):
            raise ConfigError([ConfigIssue("", "an object", type(data).__name__)], source=source)
    data = {**data, **{k: v for k, v in overrides.items() if v is not None}}
    count = data.pop("machine-count", None)
    if count is not None:
        data["machines"] = [{"name": f"machine-{i}", "device": f"pump-{i}"}
                            for i in range(1, int(count) + 1)]
    try:
        return SimulatorConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([_issue(err) for err in exc.errors()], source=source) from None


_MODES = {"spike", "drift", "stuck", "dropout"}


def _issue(err: Any) -> ConfigIssue:
    # The failure union adds its tag (spike, drift, ...) to the path; a user never wrote it.
    loc = [part for i, part in enumerate(err["loc"])
           if not (part in _MODES and i > 0 and err["loc"][i - 1] != "mode"
                   and isinstance(err["loc"][i - 1], int))]
    path = ".".join(str(part) for part in loc)
    kind = err["type"]
    if kind == "missing":
        return ConfigIssue(path, "a value (required key)", "nothing")
    if kind == "extra_forbidden":
        return ConfigIssue(path, "no such key (unknown keys are errors)", f"key {loc[-1]!r}")
    text = repr(err.get("input"))
    found = text if len(text) <= 80 else text[:77] + "..."
    return ConfigIssue(path, err["msg"].replace("Input should be ", "")
                       .replace("Value error, ", ""), found)
