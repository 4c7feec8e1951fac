"""The model store: versioned ONNX model artifacts in a directory or an object store.

Contract (shared by ``unsflow train``, the ``model`` processor and ``unsflow serve``;
changes are additive only and are noted here):

- Note (serve): :meth:`ModelStore.names` added, the model names of the store
  (``unsflow serve`` without ``--models`` serves them all).

- Layout, the Triton/KServe model-repository convention::

      <root>/<model-name>/<version>/model.onnx
                                    metrics.json     (optional)
                                    metadata.json    (written last)

  ``<version>`` is a positive integer directory. A version is *complete* when
  its ``metadata.json`` exists; it is written last, so a reader never sees a
  half-written version. The latest version is the highest complete one.
- ``<root>`` is a local directory (a path or ``file://`` URL) or an object
  store URL, ``s3://bucket/prefix``, ``gs://bucket/prefix``,
  ``az://container/prefix``; the store is built like the ``s3`` target's
  (:func:`unsflow.lake.build_store`). ``options``:
  ``endpoint``, ``region``, ``allow-http`` (``true``/``false``),
  ``access-key-id``, ``secret-access-key``, ``session-token`` (S3, MinIO),
  ``account-name``, ``account-key`` (Azure), ``service-account-key`` (GCS),
  ``retry-timeout`` (seconds). Without credentials the store's environment
  variables apply (``AWS_ACCESS_KEY_ID``, ...).
- Local writes are temp file + fsync + rename, then the directory is fsynced;
  object store writes are single PUTs (all or nothing). :meth:`ModelStore.save`
  writes ``model.onnx`` and ``metrics.json`` first, ``metadata.json`` last. One
  writer per model name on an object store (there is no atomic "create
  version" there); locally, a version directory is claimed with ``mkdir``.
- ``metadata.json``: ``name``, ``version``, ``created`` (ISO 8601 UTC),
  ``framework`` ("onnx"), ``inputs`` / ``outputs`` (KServe v2 tensor specs:
  ``name``, ``datatype``, ``shape``), ``window``, ``positive-label``,
  ``training`` (what data, how many rows, parameters). The input is named
  ``predict`` (the Red Hat demo's requests name it so); classifiers are
  exported with ZipMap off, so outputs are the tensors ``label`` (INT64 [n])
  and ``probabilities`` (FP32 [n, 2]).
- Errors: :class:`~unsflow.errors.ModelNotFound` (no such model or version),
  :class:`~unsflow.errors.ModelCorrupt` (an artifact that cannot be read or
  loaded), :class:`~unsflow.errors.ModelStoreError` (the store cannot be
  reached or written); each names the store, the model and the version.

The API is synchronous; callers on an event loop run it in a thread.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import orjson

from unsflow.errors import MissingDependency, ModelCorrupt, ModelNotFound, ModelStoreError
from unsflow.lake._deps import require
from unsflow.lake.durable import fsync_dir, write_file
from unsflow.lake.store import STORE_OPTION_KEYS, credential_from_options, first_line

if TYPE_CHECKING:
    import numpy

__all__ = [
    "ModelArtifact",
    "ModelCorrupt",
    "ModelNotFound",
    "ModelStore",
    "ModelStoreError",
    "OnnxModel",
    "default_metadata",
]

MODEL_FILE = "model.onnx"
METADATA_FILE = "metadata.json"
METRICS_FILE = "metrics.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_REMOTE_SCHEMES = {"s3", "s3a", "gs", "az", "abfs", "abfss", "azure", "memory"}


@dataclass(frozen=True)
class ModelArtifact:
    """One complete version of a model as read from the store."""

    name: str
    version: int
    model: bytes
    metadata: dict[str, Any]
    metrics: dict[str, Any] | None
    location: str = ""  # where it was read from, for messages


def default_metadata(window: int, training: dict[str, Any] | None = None) -> dict[str, Any]:
    """The contract's metadata for a binary classifier on a raw window of ``window`` values.

    >>> default_metadata(5)["inputs"]
    [{'name': 'predict', 'datatype': 'FP32', 'shape': [-1, 5]}]
    """
    return {
        "framework": "onnx",
        "inputs": [{"name": "predict", "datatype": "FP32", "shape": [-1, window]}],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]},
                    {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}],
        "window": window,
        "positive-label": 1,
        "training": dict(training or {}),
    }


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"model name {name!r} must match {_NAME.pattern}")
    return name


def _version_of(segment: str) -> int | None:
    """``'12'`` -> 12; anything that is not a canonical positive integer -> None."""
    if segment.isdigit() and not segment.startswith("0"):
        return int(segment)
    return None


class ModelStore:
    """Versioned model artifacts under ``url`` (module docstring: the contract)."""

    def __init__(self, url: str, options: dict[str, str] | None = None) -> None:
        self.url = str(url)
        self.options = dict(options or {})
        unknown = sorted(set(self.options) - STORE_OPTION_KEYS)
        if unknown:
            raise ValueError(f"model store {self.url}: unknown option(s) {unknown}; "
                             f"known: {sorted(STORE_OPTION_KEYS)}")
        parts = urlsplit(self.url)
        self._local: Path | None = None
        self._store: Any = None
        if parts.scheme in ("", "file") or (len(parts.scheme) == 1 and os.name == "nt"):
            path = url2pathname(parts.path) if parts.scheme == "file" else self.url
            self._local = Path(path).expanduser().resolve()
            if self.options:
                raise ValueError(f"model store {self.url}: options apply to object stores only")
        elif parts.scheme not in _REMOTE_SCHEMES:
            raise ValueError(f"model store {self.url}: scheme {parts.scheme!r} is not one of "
                             f"{sorted(_REMOTE_SCHEMES | {'file'})} (or a local path)")

    def __repr__(self) -> str:
        return f"ModelStore({self.url!r})"

    # -- the remote store, built on first use --------------------------------

    def _remote(self) -> Any:
        if self._store is None:
            from unsflow.lake.store import build_store

            o = self.options
            credential = credential_from_options(o)
            try:
                retry = float(o.get("retry-timeout", "30"))
                allow_http = o.get("allow-http", "false").strip().lower() in ("true", "1", "yes")
                self._store, _ = build_store(
                    store_url=self.url, region=o.get("region"), endpoint=o.get("endpoint"),
                    allow_http=allow_http, credential=credential, retry_timeout=retry)
            except MissingDependency:
                raise
            except Exception as exc:  # ValueError, obstore's errors: the boundary
                raise ModelStoreError(f"model store {self.url}: cannot open it: "
                                      f"{first_line(exc)}") from exc
        return self._store

    def _obstore(self) -> Any:
        return require("obstore")

    # -- reading --------------------------------------------------------------

    def versions(self, name: str) -> list[int]:
        """The complete versions of ``name``, ascending; [] when there are none."""
        _check_name(name)
        if self._local is not None:
            folder = self._local / name
            try:
                entries = list(os.scandir(folder))
            except FileNotFoundError:
                return []
            except OSError as exc:
                raise ModelStoreError(f"model store {self.url}: cannot list model {name!r}: "
                                      f"{exc}") from exc
            found = [v for e in entries if (v := _version_of(e.name)) is not None
                     and e.is_dir() and (folder / e.name / METADATA_FILE).is_file()]
            return sorted(found)
        return sorted(v for v, files in self._remote_versions(name).items()
                      if METADATA_FILE in files)

    def _remote_versions(self, name: str) -> dict[int, set[str]]:
        """Every version directory of ``name`` on the object store with its file names."""
        obstore = self._obstore()
        found: dict[int, set[str]] = {}
        try:
            for chunk in obstore.list(self._remote(), prefix=f"{name}/"):
                for meta in chunk:
                    parts = meta["path"].split("/")
                    if len(parts) == 3 and parts[0] == name \
                            and (v := _version_of(parts[1])) is not None:
                        found.setdefault(v, set()).add(parts[2])
        except ModelStoreError:
            raise
        except Exception as exc:
            raise ModelStoreError(f"model store {self.url}: cannot list model {name!r}: "
                                  f"{first_line(exc)}") from exc
        return found

    def names(self) -> list[str]:
        """The model names under the root that have at least one complete version, sorted."""
        if self._local is not None:
            try:
                entries = list(os.scandir(self._local))
            except FileNotFoundError:
                return []
            except OSError as exc:
                raise ModelStoreError(f"model store {self.url}: cannot list models: "
                                      f"{exc}") from exc
            candidates = [e.name for e in entries if e.is_dir() and _NAME.match(e.name)]
        else:
            obstore = self._obstore()
            try:
                listing = obstore.list_with_delimiter(self._remote())
            except ModelStoreError:
                raise
            except Exception as exc:
                raise ModelStoreError(f"model store {self.url}: cannot list models: "
                                      f"{first_line(exc)}") from exc
            candidates = [p.rstrip("/").rsplit("/", 1)[-1] for p in listing["common_prefixes"]]
            candidates = [c for c in candidates if _NAME.match(c)]
        return sorted(n for n in candidates if self.versions(n))

    def latest(self, name: str) -> int | None:
        """The highest complete version of ``name``, or None."""
        versions = self.versions(name)
        return versions[-1] if versions else None

    def read(self, name: str, version: int | None = None) -> ModelArtifact:
        """Version ``version`` of ``name`` (the latest when None)."""
        _check_name(name)
        if version is None:
            version = self.latest(name)
            if version is None:
                raise ModelNotFound(f"model store {self.url} has no complete version of "
                                    f"model {name!r}")
        elif not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ValueError(f"version must be a positive integer, found {version!r}")
        where = f"model store {self.url}, model {name!r} version {version}"
        metadata_bytes = self._get(name, version, METADATA_FILE)
        if metadata_bytes is None:
            have = self.versions(name)
            raise ModelNotFound(f"{where}: no such complete version (complete versions: "
                                f"{have or 'none'})")
        metadata = _json_object(metadata_bytes, f"{where}: {METADATA_FILE}")
        model = self._get(name, version, MODEL_FILE)
        if model is None:
            raise ModelCorrupt(f"{where}: {METADATA_FILE} exists but {MODEL_FILE} is missing")
        if not model:
            raise ModelCorrupt(f"{where}: {MODEL_FILE} is empty")
        metrics_bytes = self._get(name, version, METRICS_FILE)
        metrics = None if metrics_bytes is None else \
            _json_object(metrics_bytes, f"{where}: {METRICS_FILE}")
        return ModelArtifact(name, version, model, metadata, metrics, location=where)

    def _get(self, name: str, version: int, file: str) -> bytes | None:
        """The file's bytes, or None when it does not exist."""
        key = f"{name}/{version}/{file}"
        if self._local is not None:
            try:
                return (self._local / key).read_bytes()
            except FileNotFoundError:
                return None
            except OSError as exc:
                raise ModelStoreError(f"model store {self.url}: cannot read {key}: {exc}") from exc
        obstore = self._obstore()
        try:
            return bytes(obstore.get(self._remote(), key).bytes())
        except FileNotFoundError:
            return None
        except ModelStoreError:
            raise
        except Exception as exc:
            raise ModelStoreError(f"model store {self.url}: cannot read {key}: "
                                  f"{first_line(exc)}") from exc

    # -- writing ----------------------------------------------------------------

    def save(self, name: str, model: bytes, metadata: dict[str, Any],
             metrics: dict[str, Any] | None = None) -> int:
        """Write ``model`` as the next version of ``name``; return that version.

        ``metadata`` gets ``name``, ``version`` and (unless given) ``created``
        set here; it is written last, which makes the version complete.
        """
        _check_name(name)
        if not isinstance(model, (bytes, bytearray, memoryview)) or not model:
            raise ValueError("model must be the non-empty bytes of an ONNX model")
        if not isinstance(metadata, dict):
            raise TypeError("metadata must be a dict")
        if self._local is not None:
            version, folder = self._claim_local(name)
        else:
            existing = self._remote_versions(name)
            version = max(existing, default=0) + 1
            folder = None
        meta = {**metadata, "name": name, "version": version}
        meta.setdefault("created", datetime.now(UTC).isoformat(timespec="seconds")
                        .replace("+00:00", "Z"))
        files: list[tuple[str, bytes]] = [(MODEL_FILE, bytes(model))]
        if metrics is not None:
            files.append((METRICS_FILE, orjson.dumps(metrics, option=_JSON_OPTIONS)))
        files.append((METADATA_FILE, orjson.dumps(meta, option=_JSON_OPTIONS)))
        for file, data in files:
            if folder is not None:
                self._put_local(folder, file, data)
            else:
                self._put_remote(f"{name}/{version}/{file}", data)
        return version

    def _claim_local(self, name: str) -> tuple[int, Path]:
        """mkdir the next free version directory (mkdir is atomic: two savers never share one)."""
        assert self._local is not None
        folder = self._local / name
        try:
            folder.mkdir(parents=True, exist_ok=True)
            while True:
                taken = [v for e in os.scandir(folder) if (v := _version_of(e.name)) is not None]
                version = max(taken, default=0) + 1
                try:
                    (folder / str(version)).mkdir()
                except FileExistsError:
                    continue
                fsync_dir(folder)
                return version, folder / str(version)
        except OSError as exc:
            raise ModelStoreError(f"model store {self.url}: cannot create a version of model "
                                  f"{name!r}: {exc}") from exc

    def _put_local(self, folder: Path, file: str, data: bytes) -> None:
        try:
            write_file(folder / file, data)
        except OSError as exc:
            raise ModelStoreError(f"model store {self.url}: cannot write "
                                  f"{folder.parent.name}/{folder.name}/{file}: {exc}") from exc

    def _put_remote(self, key: str, data: bytes) -> None:
        obstore = self._obstore()
        try:
            obstore.put(self._remote(), key, data)
        except ModelStoreError:
            raise
        except Exception as exc:
            raise ModelStoreError(f"model store {self.url}: cannot write {key}: "
                                  f"{first_line(exc)}") from exc


_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS


def _json_object(data: bytes, where: str) -> dict[str, Any]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ModelCorrupt(f"{where} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ModelCorrupt(f"{where} is not a JSON object")
    return value


class OnnxModel:
    """An onnxruntime session around a model artifact; ``predict`` is thread-safe."""

    def __init__(self, session: Any, artifact: ModelArtifact) -> None:
        self._session = session
        self.name = artifact.name
        self.version = artifact.version
        self.metadata = artifact.metadata
        self.metrics = artifact.metrics
        self.inputs: list[dict[str, Any]] = [
            {"name": i.name, "datatype": _DATATYPES.get(i.type, i.type), "shape": _shape(i.shape)}
            for i in session.get_inputs()]
        self.outputs: list[dict[str, Any]] = [
            {"name": o.name, "datatype": _DATATYPES.get(o.type, o.type), "shape": _shape(o.shape)}
            for o in session.get_outputs()]
        self.input_name: str = self.inputs[0]["name"]
        width = self.inputs[0]["shape"][-1] if len(self.inputs[0]["shape"]) == 2 else -1
        if width == -1:
            width = int(self.metadata.get("window", -1))
        self.width: int = width  # values in one input row; -1 when the model does not say

    @classmethod
    def from_artifact(cls, artifact: ModelArtifact, threads: int = 0) -> OnnxModel:
        """Load ``artifact.model``; ``threads`` caps onnxruntime's intra-op threads (0: its default)."""
        try:
            import onnxruntime
        except ImportError:
            raise MissingDependency("onnxruntime", "ml") from None
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            session = onnxruntime.InferenceSession(artifact.model, options,
                                                   providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            where = artifact.location or f"model {artifact.name!r} version {artifact.version}"
            raise ModelCorrupt(f"{where}: {MODEL_FILE} cannot be loaded by onnxruntime: "
                               f"{first_line(exc)}") from exc
        if len(session.get_inputs()) != 1:
            raise ModelCorrupt(f"{artifact.location}: expected one model input, found "
                               f"{[i.name for i in session.get_inputs()]}")
        return cls(session, artifact)

    def predict(self, rows: numpy.ndarray) -> dict[str, numpy.ndarray]:
        """``rows`` [n, k] -> every output by name, e.g. ``label`` [n] and ``probabilities`` [n, 2].

        Raises ValueError for rows of the wrong shape or with values that are not finite.
        """
        import numpy as np

        x = np.asarray(rows, dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f"model {self.name!r}: expected rows of shape [n, {self.width}], "
                             f"found shape {list(x.shape)}")
        if self.width > 0 and x.shape[1] != self.width:
            raise ValueError(f"model {self.name!r} version {self.version}: expected "
                             f"{self.width} values per row, found {x.shape[1]}")
        if not np.isfinite(x).all():
            raise ValueError(f"model {self.name!r}: input holds a value that is not a finite "
                             "number")
        names = [o["name"] for o in self.outputs]
        results = self._session.run(names, {self.input_name: x})
        return dict(zip(names, results, strict=True))


_DATATYPES = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(int64)": "INT64",
              "tensor(int32)": "INT32", "tensor(string)": "BYTES", "tensor(bool)": "BOOL"}


def _shape(shape: list[Any]) -> list[int]:
    return [d if isinstance(d, int) else -1 for d in shape]
