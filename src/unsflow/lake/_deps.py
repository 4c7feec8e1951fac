"""Lazy imports of the lake's heavy drivers (pyarrow, obstore): ``unsflow[lake]``."""

from __future__ import annotations

from typing import Any

from unsflow import _deps

__all__ = ["require"]


def require(module: str) -> Any:
    """``module``, imported; :class:`MissingDependency` naming the ``lake`` extra if absent."""
    return _deps.require(module, "lake", module.partition(".")[0])
