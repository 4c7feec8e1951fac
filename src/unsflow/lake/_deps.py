"""Lazy imports of the lake's heavy drivers (pyarrow, obstore): ``unsflow[lake]``."""

from __future__ import annotations

import importlib
from typing import Any

from unsflow.errors import MissingDependency

__all__ = ["require"]


def require(module: str) -> Any:
    """``module``, imported; :class:`MissingDependency` naming the ``lake`` extra if absent."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependency(module.partition(".")[0], "lake") from None
