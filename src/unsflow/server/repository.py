"""The models a server serves, loaded from a ModelStore, swapped when a new version appears.

Contract:

- ``refresh()`` asks the store for the latest complete version of every
  model (the names given, or every model in the store) and loads any version
  newer than the one served: fully (read + onnxruntime session), in a worker
  thread, and only then swaps it in with one reference assignment. A request
  takes its model reference once, when it starts, so a request in flight
  finishes on the version it started with and none is dropped or fails
  during a swap.
- A version that cannot be read or loaded (corrupt, store unreachable) is
  logged and the served version stays; a corrupt version is not retried until
  a newer one appears.
- The served version and up to ``keep`` earlier versions stay loaded. Any
  other complete version of the store is loaded on its first request to a
  versioned path and kept while among the ``keep`` most recently used.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from unsflow.errors import ModelCorrupt, ModelNotFound, ModelStoreError, ProtocolError

if TYPE_CHECKING:
    from unsflow.ml.store import ModelStore, OnnxModel

__all__ = ["ModelRepository", "Swap"]

log = logging.getLogger("unsflow.server")


@dataclass(frozen=True)
class Swap:
    """A model that changed version (``old`` None: first load)."""

    name: str
    old: int | None
    new: int


@dataclass
class _Entry:
    served: OnnxModel
    versions: list[int]
    others: OrderedDict[int, OnnxModel] = field(default_factory=OrderedDict)


class ModelRepository:
    """Loaded models by name and version; see the module contract."""

    def __init__(self, store: ModelStore, names: list[str] | None = None, *, keep: int = 2,
                 threads: int = 1,
                 on_swap: Callable[[Swap], None] | None = None,
                 on_error: Callable[[str], None] | None = None) -> None:
        self.store = store
        self.names = list(names) if names else None
        self.keep = keep
        self.threads = threads
        self._models: dict[str, _Entry] = {}
        self._bad: dict[str, int] = {}  # name -> newest version that failed to load
        self._on_swap = on_swap
        self._on_error = on_error
        self._lock = asyncio.Lock()  # one refresh or on-demand load at a time

    # -- what is served -------------------------------------------------------

    @property
    def served(self) -> dict[str, int]:
        """Name -> version served."""
        return {name: e.served.version for name, e in self._models.items()}

    def ready(self) -> tuple[bool, str]:
        """Ready when every named model (or, without names, at least one) is loaded."""
        if self.names:
            missing = [n for n in self.names if n not in self._models]
            if missing:
                return False, f"not loaded yet: {', '.join(missing)}"
            return True, ""
        return (True, "") if self._models else (False, f"no model in {self.store.url} yet")

    def versions(self, name: str) -> list[int]:
        return list(self._entry(name).versions)

    def _entry(self, name: str) -> _Entry:
        entry = self._models.get(name)
        if entry is None:
            raise ProtocolError(404, f"model {name!r} not found (served: "
                                     f"{sorted(self._models) or 'none'})")
        return entry

    def get(self, name: str) -> OnnxModel:
        """The served version of ``name``; ProtocolError(404) when there is none."""
        return self._entry(name).served

    async def get_version(self, name: str, version: int) -> OnnxModel:
        """Version ``version`` of ``name``, loaded on demand; ProtocolError(404) if none."""
        entry = self._entry(name)
        if entry.served.version == version:
            return entry.served
        model = entry.others.get(version)
        if model is not None:
            entry.others.move_to_end(version)
            return model
        if version not in entry.versions:
            # Perhaps it appeared since the last poll.
            entry.versions = await asyncio.to_thread(self.store.versions, name)
            if version not in entry.versions:
                raise ProtocolError(404, f"model {name!r} has no version {version} "
                                         f"(versions: {entry.versions})")
        async with self._lock:
            model = entry.others.get(version)
            if model is None:
                try:
                    model = await asyncio.to_thread(self._load, name, version)
                except ModelNotFound as exc:
                    raise ProtocolError(404, str(exc)) from exc
                except (ModelCorrupt, ModelStoreError) as exc:
                    self._error(f"model {name!r} version {version} asked for, not loaded: {exc}")
                    raise ProtocolError(500, str(exc)) from exc
                self._keep(entry, model)
        return model

    def _keep(self, entry: _Entry, model: OnnxModel) -> None:
        entry.others[model.version] = model
        entry.others.move_to_end(model.version)
        while len(entry.others) > self.keep:
            entry.others.popitem(last=False)

    # -- loading --------------------------------------------------------------

    def _load(self, name: str, version: int | None) -> OnnxModel:
        from unsflow.ml.store import OnnxModel

        artifact = self.store.read(name, version)
        return OnnxModel.from_artifact(artifact, threads=self.threads)

    async def refresh(self) -> list[Swap]:
        """Load what is new in the store; returns the swaps made (see the contract)."""
        async with self._lock:
            try:
                names = (self.names if self.names is not None
                         else await asyncio.to_thread(self.store.names))
            except ModelStoreError as exc:
                self._error(f"model store {self.store.url}: cannot list models: {exc}")
                return []
            swaps = []
            for name in names:
                swap = await self._refresh_one(name)
                if swap is not None:
                    swaps.append(swap)
            return swaps

    async def _refresh_one(self, name: str) -> Swap | None:
        try:
            versions = await asyncio.to_thread(self.store.versions, name)
        except (ModelStoreError, ValueError) as exc:
            self._error(f"model {name!r}: cannot list versions: {exc}")
            return None
        entry = self._models.get(name)
        if entry is not None:
            entry.versions = versions
        if not versions:
            return None
        latest = versions[-1]
        current = entry.served.version if entry is not None else None
        if latest == current or self._bad.get(name) == latest:
            return None
        try:
            model = await asyncio.to_thread(self._load, name, latest)
        except (ModelCorrupt, ModelNotFound, ModelStoreError, ValueError) as exc:
            self._bad[name] = latest
            self._error(f"model {name!r} version {latest} not loaded, "
                        f"{'still serving version ' + str(current) if current else 'not served'}"
                        f": {exc}")
            return None
        if entry is None:
            self._models[name] = _Entry(served=model, versions=versions)
        else:
            if current is not None and current < latest:
                self._keep(entry, entry.served)
            entry.others.pop(latest, None)
            entry.served = model  # the swap: requests that already hold the old one finish on it
        self._bad.pop(name, None)
        swap = Swap(name, current, latest)
        log.info("[serve] model %r: serving version %d%s", name, latest,
                 f" (was {current})" if current is not None else "")
        if self._on_swap is not None:
            self._on_swap(swap)
        return swap

    def _error(self, text: str) -> None:
        log.error("[serve] %s", text)
        if self._on_error is not None:
            self._on_error(text)

    async def poll(self, interval: float) -> None:
        """Refresh every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            await self.refresh()

    def describe(self) -> dict[str, Any]:
        return {name: {"served": e.served.version, "versions": e.versions,
                       "loaded": sorted([e.served.version, *e.others])}
                for name, e in self._models.items()}
