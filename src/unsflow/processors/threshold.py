"""threshold: limit alerts, e.g. temperature above 70 °C.

Contract:

- Records that hold every ``match`` field with the given value (all records
  when ``match`` is empty) are checked: ``field`` is compared with ``above``
  (alert when strictly greater) and ``below`` (alert when strictly less).
- ``mode: alerts`` outputs only alert records, one per reading out of limits::

      {"alert": "temperature above 70", "limit": 70, "value": 73.2,
       "reading": <the record>, "topic": <its topic>}

  Other readings give no output; the engine acknowledges them all the same.
  The output message keeps the reading's topic (an MQTT target's ``topic``
  template decides where the alert goes).
- ``mode: annotate`` outputs every record as ``{**record, <output-field>: true|false}``;
  records that ``match`` does not select get ``false``.
- A selected record without ``field``, or whose ``field`` is not a number, is
  a :class:`~unsflow.message.Failure` saying which; so is a payload that no
  earlier step decoded and that is not JSON. A bare number is read as
  ``{"value": number}``.

Example, the demo's temperature alert::

    "hot": {"type": "threshold", "match": {"sensor": "temperature"}, "above": 70}
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

__all__ = ["ThresholdProcessor", "ThresholdProcessorConfig"]

# About 2.5 us a record here: from this many on, a batch goes to a worker thread so that
# the event loop is not held over ~1 ms (the processor contract).
_THREAD_MIN = 400


class ThresholdProcessorConfig(ProcessorConfig):
    """Alert when a field goes above or below a limit."""

    type: Literal["threshold"] = Field(description="Processor type: threshold.")
    field: str = Field("value", min_length=1, description="Record field compared with the limits.")
    above: int | float | None = Field(None, description="Alert when the field is greater.")
    below: int | float | None = Field(None, description="Alert when the field is less.")
    match: dict[str, Any] = Field(
        default_factory=dict,
        description="Only records holding these field values are checked, "
        "e.g. {\"sensor\": \"temperature\"}.")
    mode: Literal["alerts", "annotate"] = Field(
        "alerts", description="alerts: output alert records only; annotate: every record "
        "with output-field true or false.")
    name: str | None = Field(
        None, description="What the alert text calls the reading; default: the match values "
        "(e.g. temperature), else the field name.")
    output_field: str = Field("alert", min_length=1, description="annotate: the record key set.")

    @model_validator(mode="after")
    def _limits(self) -> ThresholdProcessorConfig:
        if self.above is None and self.below is None:
            raise ValueError("at least one limit: above or below")
        for name in ("above", "below"):
            limit = getattr(self, name)
            if limit is not None and not math.isfinite(limit):
                raise ValueError(f"{name}: a finite number")
        return self


class ThresholdProcessor(Processor[ThresholdProcessorConfig]):
    """Compares one field with limits; outputs alerts or annotated records."""

    config_class = ThresholdProcessorConfig
    ordering = "concurrent"  # stateless: batches may overlap

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cfg = self.config
        self._subject = cfg.name or " ".join(str(v) for v in cfg.match.values()) or cfg.field
        self._match = list(cfg.match.items())
        self.alerts = 0
        self.checked = 0  # selected by match and compared with the limits
        self.skipped = 0  # not selected by match

    async def process(self, batch: list[Message]) -> ProcessResult:
        if len(batch) >= _THREAD_MIN:
            outputs, failures, counts = await asyncio.to_thread(self._process_all, batch)
        else:
            outputs, failures, counts = self._process_all(batch)
        # Counted here, on the event loop: batches may be in several threads at once.
        self.alerts += counts[0]
        self.checked += counts[1]
        self.skipped += counts[2]
        return outputs, failures

    def _process_all(self, batch: list[Message]
                     ) -> tuple[list[Message], list[Failure], tuple[int, int, int]]:
        outputs: list[Message] = []
        failures: list[Failure] = []
        alerts = checked = skipped = 0
        cfg = self.config
        annotate = cfg.mode == "annotate"
        for msg in batch:
            try:
                record = _record(msg)
                selected = self._selects(record)
                alert = self._check(record) if selected else None
            except ValueError as exc:
                failures.append(Failure(msg, str(exc), self.stage))
                continue
            if selected:
                checked += 1
            else:
                skipped += 1
            if alert is not None:
                alerts += 1
            if annotate:
                outputs.append(msg.derive(record={**record, cfg.output_field: alert is not None}))
            elif alert is not None:
                text, limit, value = alert
                outputs.append(msg.derive(record={
                    "alert": text, "limit": limit, "value": value, "reading": record,
                    "topic": msg.topic}))
        return outputs, failures, (alerts, checked, skipped)

    def _selects(self, record: dict[str, Any]) -> bool:
        return all(name in record and record[name] == want for name, want in self._match)

    def _check(self, record: dict[str, Any]) -> tuple[str, int | float, Any] | None:
        cfg = self.config
        if cfg.field not in record:
            raise ValueError(f"record has no field {cfg.field!r}")
        value = record[cfg.field]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
            raise ValueError(f"field {cfg.field!r} must hold a number, found {value!r:.60}")
        if cfg.above is not None and value > cfg.above:
            return f"{self._subject} above {cfg.above}", cfg.above, value
        if cfg.below is not None and value < cfg.below:
            return f"{self._subject} below {cfg.below}", cfg.below, value
        return None

    def outcomes(self) -> dict[str, int]:
        out = {"alerts": self.alerts}
        if self.config.mode == "alerts":  # readings that gave no alert give no output
            out["within-limits"] = self.checked - self.alerts
            out["not-selected"] = self.skipped
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "above": self.config.above, "below": self.config.below,
                "alerts": self.alerts}


_record = record_object
