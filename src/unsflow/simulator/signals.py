"""Sensor signals: the demo's bounded random walk, with failure modes injected on top.

Pure and reproducible: a signal's values depend only on the seed, its key
(``machine/sensor``) and its spec, never on time or on other signals. The walk
draws the same random numbers whatever failure modes are configured, so
``normal`` (the value without failures) of a reading is the same with and
without them, and a test can see exactly what each failure changed.

Failure modes, applied in this order on top of the walk:

- ``drift``: from reading ``start`` on, ``slope * (index - start + 1)`` is added
  (bearing wear);
- ``spike``: readings ``every``, ``2*every``, ... (counted from 1) are multiplied
  by ``factor`` (2.5 in the demo);
- ``stuck``: from reading ``start`` on, the sensor repeats its last value;
- ``dropout``: from reading ``start`` on, no value (``None``: nothing is published).

>>> from unsflow.simulator.config import SensorSpec
>>> spec = SensorSpec(name="vibration", low=10, high=18, step=1,
...                   failures=[{"mode": "spike", "every": 3}])
>>> readings = [r for r in SensorSignal(spec, seed=1, key="m1/vibration").take(3)]
>>> [r.anomalies for r in readings]
[(), (), ('spike',)]
>>> abs(readings[2].value - readings[2].normal * 2.5) < 0.002  # both rounded to 3 decimals
True
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from unsflow.simulator.config import (
    DriftFailure,
    DropoutFailure,
    SensorSpec,
    SpikeFailure,
    StuckFailure,
)

__all__ = ["Reading", "SensorSignal"]


@dataclass(frozen=True, slots=True)
class Reading:
    """One reading. ``value`` is what is published (None: dropped out)."""

    index: int
    value: float | None
    normal: float
    anomalies: tuple[str, ...]


def _active(index: int, start: int, length: int | None) -> bool:
    return index >= start and (length is None or index < start + length)


class SensorSignal:
    """A bounded random walk in [low, high] with steps of at most ``step``, plus failures."""

    def __init__(self, spec: SensorSpec, *, seed: int, key: str) -> None:
        # A str seed is hashed with SHA-512: the same on every run and platform.
        self._rng = random.Random(f"{seed}/{key}")
        self.spec = spec
        self.key = key
        self.index = 0
        self._walk = spec.start if spec.start is not None else (spec.low + spec.high) / 2
        self._last: float | None = None
        self._held: float | None = None

    def update(self, spec: SensorSpec) -> None:
        """Take a changed spec (a reloaded config); the walk goes on from where it is."""
        self.spec = spec
        self._walk = min(max(self._walk, spec.low), spec.high)

    def _step(self) -> None:
        spec = self.spec
        delta = self._rng.uniform(0.0, spec.step)
        if self._rng.random() < 0.5:
            delta = -delta
        walk = self._walk + delta
        # Reflect at the bounds so that the walk stays inside without sticking to them.
        if walk > spec.high:
            walk = spec.high - (walk - spec.high)
        if walk < spec.low:
            walk = spec.low + (spec.low - walk)
        self._walk = min(max(walk, spec.low), spec.high)

    def next(self) -> Reading:
        """The next reading; the walk advances whether or not it is published."""
        spec = self.spec
        i = self.index
        if i > 0:
            self._step()
        self.index += 1
        value = self._walk
        anomalies: list[str] = []
        stuck = dropout = False
        for failure in spec.failures:
            if isinstance(failure, DriftFailure) and _active(i, failure.start, failure.length):
                value += failure.slope * (i - failure.start + 1)
                anomalies.append("drift")
        for failure in spec.failures:
            if isinstance(failure, SpikeFailure) and i >= failure.start and (i + 1) % failure.every == 0:
                value *= failure.factor
                anomalies.append("spike")
            elif isinstance(failure, StuckFailure) and _active(i, failure.start, failure.length):
                stuck = True
            elif isinstance(failure, DropoutFailure) and _active(i, failure.start, failure.length):
                dropout = True
        value = round(value, spec.decimals)
        if stuck:
            if self._held is None:
                self._held = self._last if self._last is not None else value
            value = self._held
            anomalies = ["stuck"]
        else:
            self._held = None
        normal = round(self._walk, spec.decimals)
        if dropout:
            return Reading(i, None, normal, ("dropout",))
        self._last = value
        return Reading(i, value, normal, tuple(anomalies))

    def take(self, n: int) -> Iterator[Reading]:
        """The next ``n`` readings."""
        for _ in range(n):
            yield self.next()
