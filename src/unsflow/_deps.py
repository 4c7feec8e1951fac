"""Optional dependencies, imported where first needed.

:func:`require` imports a module or raises :class:`~unsflow.errors.MissingDependency`
naming the install extra that brings it (``pip install 'unsflow[EXTRA]'``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from unsflow.errors import MissingDependency

__all__ = ["require"]


def require(module: str, extra: str, package: str | None = None) -> ModuleType:
    """``module``, imported; :class:`MissingDependency` for ``package`` (default: the
    module's name) and ``extra`` when it cannot be."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(package or module, extra) from exc
