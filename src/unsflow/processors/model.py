"""model: in-process inference of an ONNX model from the model store, batched.

Contract:

- ``start()`` loads version ``version`` of ``model`` (the latest complete one
  when unset) from the model store ``store`` (:mod:`unsflow.ml.store`: a
  directory or ``s3://``/``gs://``/``az://`` URL with ``store-options`` and an
  optional ``credential``). A model that is missing or cannot be loaded fails
  the start with the store's words (which store, which model, which version).
- Each record's ``input-field`` (default ``window``, what the ``window``
  processor emits: a list of numbers, oldest first; a bare number is a row of
  one) is one input row. Rows are validated first; all valid rows of a batch
  then go through onnxruntime in a worker thread, ``batch-size`` rows per call
  (one call per batch up to that size, never one per message).
- Output: ``{**record, <output-field>: <answer>}`` in the input's order, the
  shape the ``remote`` processor gives with ``protocol: v2`` for the same model
  (its first output, ``label``, a row of one becoming a scalar), so a config
  can switch between ``remote`` and ``model`` without changing its target.
  ``output: probability`` gives the positive class's probability instead,
  ``output: all`` an object ``{"label": 1, "probabilities": [0.1, 0.9],
  "model": "name", "version": 3}``.
- Bad input is data: a record without the input field, a value that is not a
  finite number or a list of them, or a row whose length is not the model's
  input width is a :class:`~unsflow.message.Failure` naming the field, what
  was expected and what was found; so is a payload no earlier step decoded
  and that is not JSON. The rest of the batch goes on.
- With ``version`` unset, a poller checks the store every ``poll-interval``
  seconds and loads a newer complete version in a thread; it replaces the
  model between batches (a batch is answered by one version only, none is
  dropped). A newer version that cannot be loaded is logged and skipped; the
  running model stays. ``describe()`` tells the version in use and the swaps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from unsflow.codecs import decode_json
from unsflow.config.models import ProcessorConfig, SecretRef
from unsflow.errors import (
    DecodeError,
    ModelCorrupt,
    ModelNotFound,
    ModelStoreError,
    NotConnected,
    PermanentError,
)
from unsflow.message import NOT_DECODED, Failure, Message
from unsflow.processors.base import Processor, ProcessResult

if TYPE_CHECKING:
    from unsflow.ml.store import ModelStore, OnnxModel

__all__ = ["ModelProcessor", "ModelProcessorConfig"]

log = logging.getLogger(__name__)

# Batches of at most this many rows are scored on the event loop, bigger ones in a thread.
INLINE_ROWS = 64


class ModelProcessorConfig(ProcessorConfig):
    """Run an ONNX model from the model store on each record's feature vector."""

    type: Literal["model"] = Field(description="Processor type: model (in-process ONNX).")
    store: str = Field(min_length=1, description="Model store: a directory, or s3://bucket/prefix, "
                       "gs://..., az://... .")
    store_options: dict[str, str] = Field(
        default_factory=dict, description="Object store options: endpoint, region, allow-http, "
        "retry-timeout (see docs/components/ml.md).")
    credential: SecretRef | None = Field(
        None, description="Object store credential: username = access key id (Azure: account), "
        "password = secret key. Default: the store's environment variables.")
    model: str = Field(min_length=1, description="Model name in the store.")
    version: int | None = Field(None, ge=1, description="Model version; default: the latest, "
                                "and newer versions are picked up while running.")
    input_field: str = Field("window", min_length=1,
                             description="Record field holding the feature vector.")
    output_field: str = Field("inference", min_length=1,
                              description="Record field that receives the answer.")
    output: Literal["label", "probability", "all"] = Field(
        "label", description="label: the predicted class (as remote v2 gives); probability: "
        "of the positive class; all: label, probabilities, model and version.")
    batch_size: int = Field(1024, ge=1, le=1_000_000,
                            description="Most rows in one onnxruntime call.")
    poll_interval: float = Field(30.0, ge=0, description="Seconds between checks for a newer "
                                 "version (0: never; ignored when version is set).")
    threads: int = Field(1, ge=0, le=64, description="onnxruntime intra-op threads per call "
                         "(0: onnxruntime's default, all cores).")


class ModelProcessor(Processor[ModelProcessorConfig]):
    """In-process ONNX inference; see the module contract."""

    config_class = ModelProcessorConfig
    ordering = "concurrent"  # stateless: batches may overlap

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._store: ModelStore | None = None
        self._model: OnnxModel | None = None
        self._poller: asyncio.Task[None] | None = None
        self._skipped: set[int] = set()
        self.swaps = 0
        self.rows = 0
        self.calls = 0

    @property
    def model_version(self) -> int | None:
        return self._model.version if self._model is not None else None

    async def start(self) -> None:
        from unsflow.ml.store import ModelStore

        cfg = self.config
        options = dict(cfg.store_options)
        if cfg.credential is not None:
            cred = await self.context.resolve_secret(cfg.credential)
            azure = cfg.store.startswith(("az://", "abfs", "azure://"))
            options["account-name" if azure else "access-key-id"] = cred.username or ""
            options["account-key" if azure else "secret-access-key"] = cred.password or ""
            token = cred.extra.get("session-token") or cred.extra.get("session_token")
            if token and not azure:
                options["session-token"] = str(token)
        try:
            self._store = ModelStore(cfg.store, options or None)
        except ValueError as exc:
            raise PermanentError(str(exc), component_id=self.id) from exc
        self._model = await asyncio.to_thread(self._load, cfg.version)
        log.info("[%s] model %r version %d loaded from %s", self.id, cfg.model,
                 self._model.version, cfg.store)
        if cfg.version is None and cfg.poll_interval > 0:
            self._poller = asyncio.create_task(self._poll(), name=f"{self.stage}:poller")

    def _load(self, version: int | None) -> OnnxModel:
        from unsflow.ml.store import OnnxModel

        assert self._store is not None
        try:
            return OnnxModel.from_artifact(self._store.read(self.config.model, version),
                                           threads=self.config.threads)
        except (ModelNotFound, ModelCorrupt) as exc:
            raise PermanentError(str(exc), component_id=self.id) from exc
        except ModelStoreError as exc:
            raise NotConnected(str(exc), component_id=self.id) from exc

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_interval)
            await self.check_for_update()

    async def check_for_update(self) -> bool:
        """Load and swap in a newer complete version if the store has one; True if swapped."""
        assert self._store is not None
        try:
            latest = await asyncio.to_thread(self._store.latest, self.config.model)
        except ModelStoreError as exc:
            log.warning("[%s] cannot check for a new model version: %s", self.id, exc)
            return False
        current = self.model_version or 0
        if latest is None or latest <= current or latest in self._skipped:
            return False
        try:
            model = await asyncio.to_thread(self._load, latest)
        except (PermanentError, NotConnected) as exc:
            if isinstance(exc, PermanentError):
                self._skipped.add(latest)
            log.error("[%s] version %d not loaded, version %d stays: %s", self.id, latest,
                      current, exc)
            return False
        # One reference swap: a batch in flight keeps the model it started with.
        self._model = model
        self.swaps += 1
        log.info("[%s] model %r: now version %d (was %d)", self.id, self.config.model, latest,
                 current)
        return True

    async def stop(self) -> None:
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller

    async def process(self, batch: list[Message]) -> ProcessResult:
        model = self._model
        if model is None:
            raise NotConnected("process() before start()", component_id=self.id)
        cfg = self.config
        results: list[Message | Failure | None] = [None] * len(batch)
        good: list[tuple[int, dict[str, Any]]] = []
        rows: list[list[float]] = []
        for i, msg in enumerate(batch):
            try:
                raw = decode_json(msg.payload) if msg.record is NOT_DECODED else msg.record
                record = raw if isinstance(raw, dict) else {"value": raw}
                rows.append(_row(record, cfg.input_field, model.width))
            except (DecodeError, ValueError) as exc:
                results[i] = Failure(msg, str(exc), self.stage)
                continue
            good.append((i, record))
        if good:
            # A few rows are scored here: the hop to a worker thread and back costs more than
            # the inference, and adds a wait for a thread to be scheduled (latency).
            answers = self._infer(model, rows) if len(rows) <= INLINE_ROWS \
                else await asyncio.to_thread(self._infer, model, rows)
            for (i, record), answer in zip(good, answers, strict=True):
                if isinstance(answer, _NotFinite):
                    results[i] = Failure(batch[i], answer.reason(cfg.input_field, record),
                                         self.stage)
                else:
                    results[i] = batch[i].derive(record={**record, cfg.output_field: answer})
        outputs = [r for r in results if isinstance(r, Message)]
        failures = [r for r in results if isinstance(r, Failure)]
        return outputs, failures

    def _infer(self, model: OnnxModel, rows: list[list[float]]) -> list[Any]:
        """One answer per row; a row holding NaN or infinity gets a _NotFinite instead."""
        import numpy as np

        size = self.config.batch_size
        with np.errstate(over="ignore"):  # a number too large for FP32 becomes inf: refused
            x = np.asarray(rows, dtype=np.float32)
        finite: Any = np.isfinite(x).all(axis=1)  # one check for the batch, not one per value
        if not finite.all():
            x = x[finite]
        labels: list[Any] = []
        probabilities: list[Any] = []
        for start in range(0, len(x), size):
            out = model.predict(x[start:start + size])
            self.calls += 1
            labels.extend(out["label"].tolist())
            probs = out.get("probabilities")
            probabilities.extend(probs.tolist() if probs is not None else [None] * len(out["label"]))
        self.rows += len(x)
        mode = self.config.output
        if mode == "label":
            answers: list[Any] = labels
        elif mode == "probability":
            answers = [p[-1] if p is not None else float(lab) for p, lab in
                       zip(probabilities, labels, strict=True)]
        else:
            answers = [{"label": lab, "probabilities": p, "model": model.name,
                        "version": model.version}
                       for lab, p in zip(labels, probabilities, strict=True)]
        if len(answers) == len(rows):
            return answers
        it = iter(answers)
        return [next(it) if ok else _NOT_FINITE for ok in finite.tolist()]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model": self.config.model, "version": self.model_version,
                "swaps": self.swaps, "rows": self.rows, "calls": self.calls}


class _NotFinite:
    """The answer for a row holding NaN or infinity (or a number too large for FP32)."""

    @staticmethod
    def reason(field: str, record: dict[str, Any]) -> str:
        return (f"input field {field!r} must hold finite numbers, found "
                f"{_short(repr(record.get(field)))}")


_NOT_FINITE = _NotFinite()
_NUMBER_TYPES = frozenset({int, float})


def _short(text: str) -> str:
    return text if len(text) <= 80 else text[:77] + "..."


def _row(record: dict[str, Any], field: str, width: int) -> list[float]:
    """The model input of one record; ValueError says what is wrong.

    Finiteness is checked later, for the whole batch at once (``_infer``).
    """
    value = record.get(field, _row)
    if type(value) is list and set(map(type, value)) <= _NUMBER_TYPES:
        row = value  # the common case, checked at C speed
    elif value is _row:
        raise ValueError(f"record has no input field {field!r}")
    else:
        row = value if isinstance(value, list) else [value]
        if any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in row):
            raise ValueError(f"input field {field!r} must hold a number or a list of "
                             f"numbers, found {_short(repr(value))}")
    if width > 0 and len(row) != width:
        raise ValueError(f"input field {field!r} holds {len(row)} value(s); the model expects "
                         f"{width}")
    return row
