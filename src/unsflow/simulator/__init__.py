"""Machine sensors publishing to MQTT: ``unsflow simulate``.

- :mod:`~unsflow.simulator.signals`: the demo's bounded random walk with
  failure modes (spike, drift, stuck, dropout), seeded and reproducible.
- :mod:`~unsflow.simulator.config`: what to simulate (machines, sensors,
  failures, timing, topic style), from a JSON or YAML file.
- :mod:`~unsflow.simulator.runner`: the loop: ticks, payloads in ``uns`` or
  ``redhat`` style, ground truth of every injected anomaly, live config changes;
  published with the project's one paho publisher (:mod:`unsflow._paho`), which
  waits for every acknowledgement.
"""

from unsflow.simulator.config import SimulatorConfig, load_simulator_config
from unsflow.simulator.runner import RunStats, Simulator
from unsflow.simulator.signals import Reading, SensorSignal

__all__ = ["Reading", "RunStats", "SensorSignal", "Simulator", "SimulatorConfig",
           "load_simulator_config"]
