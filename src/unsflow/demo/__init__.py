"""``unsflow demo``: the Red Hat industrial edge demo's walk-through on one machine.

Mosquitto (through the project's ``scripts/services.sh``), the simulator
(four machines, vibration, temperature switched off), a first anomaly model
(a warm-up on simulated history), ``unsflow serve``, the pipeline (local
Parquet lake; window -> model -> alerts on MQTT) and the dashboard, each a
process of its own. See :mod:`unsflow.demo.runner` and
``docs/components/dashboard.md``.
"""

from unsflow.demo.runner import Demo, DemoOptions

__all__ = ["Demo", "DemoOptions"]
