"""The optional compiled hot paths: the ``unsflow-speedups`` package (Rust, ``speedups/``).

``scripts/setup.sh`` builds and installs it where a Rust toolchain exists;
without it unsflow runs the same steps in Python (:mod:`unsflow.sources._mqtt_wire`,
:mod:`unsflow.lake.parquet`), with the same results: tests run both ways.
``UNSFLOW_SPEEDUPS=0`` in the environment turns the compiled code off (it is read
each time a connection or a flush asks, so a test can switch).
"""

from __future__ import annotations

import os
from types import ModuleType

__all__ = ["speedups"]


def speedups() -> ModuleType | None:
    """The compiled module, or None when it is not installed or turned off."""
    if os.environ.get("UNSFLOW_SPEEDUPS", "1") == "0":
        return None
    try:
        import unsflow_speedups
    except ImportError:
        return None
    return unsflow_speedups
