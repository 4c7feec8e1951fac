"""filter: keep only the messages whose record matches a condition, e.g. the anomalies.

Contract:

- ``field`` names a record field; a dotted name (``inference.label``) reaches
  into nested objects when the record has no key with the dots in it.
- Conditions, all of which must hold (at least one is required):
  ``equals`` (a JSON value; ``1`` matches ``1`` and ``1.0``, a boolean only a
  boolean), ``not-equals``, ``in`` (a list of values), ``above`` / ``below``
  (strictly greater / less than a number).
- A message that matches is output unchanged (its record decoded, as the
  reading that caused it); one that does not gives no output, and the engine
  acknowledges it all the same.
- A record without ``field`` is a :class:`~unsflow.message.Failure` with
  ``missing: fail`` (the default: an upstream step did not do its job) and
  is left out with ``missing: drop``. ``above`` / ``below`` on a value that
  is not a number is a Failure; so is a payload that no earlier step decoded
  and that is not JSON. A bare number is read as ``{"value": number}``.

Example, publish only what the model called an anomaly (``remote`` wrote its
label to ``anomaly``)::

    "anomalies-only": {"type": "filter", "field": "anomaly", "equals": 1}
"""

from __future__ import annotations

import asyncio
import math
from typing import Any, Literal

from pydantic import Field, model_validator

from unsflow.codecs import record_object
from unsflow.config.models import ProcessorConfig
from unsflow.message import Failure, Message
from unsflow.processors.base import Processor, ProcessResult

__all__ = ["FilterProcessor", "FilterProcessorConfig"]

# About 1-2 us a record: from this many on, a batch goes to a worker thread so that the
# event loop is not held over ~1 ms (the processor contract).
_THREAD_MIN = 500
_UNSET: Any = object()


class FilterProcessorConfig(ProcessorConfig):
    """Keep messages whose record field matches every condition given."""

    type: Literal["filter"] = Field(description="Processor type: filter.")
    field: str = Field(min_length=1, description="Record field tested; a dotted name "
                       "(inference.label) reaches into nested objects.")
    equals: Any = Field(None, description="Keep when the field equals this JSON value "
                        "(null too, when given).")
    not_equals: Any = Field(None, description="Keep when the field differs from this value.")
    in_: list[Any] | None = Field(None, alias="in",
                                  description="Keep when the field equals one of these values.")
    above: int | float | None = Field(None, description="Keep when the field is greater.")
    below: int | float | None = Field(None, description="Keep when the field is less.")
    missing: Literal["fail", "drop"] = Field(
        "fail", description="A record without the field: fail (dead letter) or drop (no output).")

    @model_validator(mode="after")
    def _one_condition(self) -> FilterProcessorConfig:
        given = [name in self.model_fields_set for name in ("equals", "not_equals")]
        given += [self.in_ is not None, self.above is not None, self.below is not None]
        if not any(given):
            raise ValueError("at least one condition: equals, not-equals, in, above or below")
        for name in ("above", "below"):
            limit = getattr(self, name)
            if limit is not None and not math.isfinite(limit):
                raise ValueError(f"{name}: a finite number")
        return self


def _same(value: Any, want: Any) -> bool:
    """JSON equality: 1 == 1.0, but a boolean equals only a boolean."""
    if isinstance(value, bool) or isinstance(want, bool):
        return isinstance(value, bool) and isinstance(want, bool) and value == want
    return bool(value == want)


class FilterProcessor(Processor[FilterProcessorConfig]):
    """Passes matching messages on, unchanged; see the module contract."""

    config_class = FilterProcessorConfig
    ordering = "concurrent"  # stateless: batches may overlap

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._path = self.config.field.split(".")
        given = self.config.model_fields_set
        self._equals = self.config.equals if "equals" in given else _UNSET
        self._not_equals = self.config.not_equals if "not_equals" in given else _UNSET
        self.kept = 0
        self.dropped = 0

    async def process(self, batch: list[Message]) -> ProcessResult:
        if len(batch) >= _THREAD_MIN:
            outputs, failures = await asyncio.to_thread(self._process_all, batch)
        else:
            outputs, failures = self._process_all(batch)
        # Counted here, on the event loop: batches may be in several threads at once.
        self.kept += len(outputs)
        self.dropped += len(batch) - len(outputs) - len(failures)
        return outputs, failures

    def _process_all(self, batch: list[Message]) -> ProcessResult:
        outputs: list[Message] = []
        failures: list[Failure] = []
        for msg in batch:
            try:
                record = _record(msg)
                value = self._value(record)
                keep = value is not _UNSET and self._matches(value)
            except ValueError as exc:
                failures.append(Failure(msg, str(exc), self.stage))
                continue
            if keep:
                outputs.append(msg if msg.record is record else msg.derive(record=record))
        return outputs, failures

    def _value(self, record: dict[str, Any]) -> Any:
        name = self.config.field
        if name in record:
            return record[name]
        value: Any = record
        for part in self._path:
            if not isinstance(value, dict) or part not in value:
                if self.config.missing == "drop":
                    return _UNSET
                raise ValueError(f"record has no field {name!r}")
            value = value[part]
        return value

    def _matches(self, value: Any) -> bool:
        cfg = self.config
        if self._equals is not _UNSET and not _same(value, self._equals):
            return False
        if self._not_equals is not _UNSET and _same(value, self._not_equals):
            return False
        if cfg.in_ is not None and not any(_same(value, w) for w in cfg.in_):
            return False
        if cfg.above is not None or cfg.below is not None:
            if not isinstance(value, (int, float)) or isinstance(value, bool) \
                    or math.isnan(value):
                raise ValueError(f"field {cfg.field!r} must hold a number to compare, "
                                 f"found {value!r:.60}")
            if cfg.above is not None and not value > cfg.above:
                return False
            if cfg.below is not None and not value < cfg.below:
                return False
        return True

    def outcomes(self) -> dict[str, int]:
        return {"filtered": self.dropped}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "field": self.config.field, "kept": self.kept,
                "dropped": self.dropped}


_record = record_object
