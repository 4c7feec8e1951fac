"""window: a sliding window of each key's last ``size`` values, as a feature vector.

Contract:

- Records are grouped by a key: the record fields ``key-fields`` (default
  ``machine`` and ``sensor``) or the template ``key`` (``{topic}``,
  ``{levels[N]}``, ``{record[FIELD]}``, as in the MQTT target's topic).
- Each key keeps its newest ``history`` values (default ``4 * size``) of
  ``value-field``, ordered by ``time-field`` (epoch numbers or ISO 8601
  strings) when one is configured, else by arrival.
- A record's window is the ``size`` values of its key at or before its own
  time, **oldest first**, its own value last: ``{**record, <output-field>:
  [v_oldest, ..., v_own]}``. A record that arrives after newer ones of its key
  (a device that sends out of order) is put in its place and gets the window
  it would have had in order, as long as its place is within the kept
  history.
- Every record has an outcome a user can see; none is acknowledged and gone
  without a trace:

  - *warming*: fewer than ``size`` values of its key exist at or before its
    time (a new key, or one forgotten by ``max-keys``). Expected at start; by
    default *held* (``no-window: hold``): no output, its value joins the
    window, counted. ``no-window: pass`` passes it on unchanged,
    ``emit-partial: true`` outputs the shorter window.
  - *late*: it is older than the oldest value kept for its key while older
    values existed (``history`` was too short to rebuild its window). By
    default a failure for the dead letter saying so (``late: dead-letter``);
    ``late: pass`` passes it on unchanged. Counted and logged either way.

  Both are counted and exported per processor as
  ``unsflow_processor_outcomes_total{outcome="warming"|"late"}``.
- With a ``time-field``, a second value with the same time for a key replaces
  the first: a redelivered message (QoS 1 is at least once) does not count
  twice; it gets its window again.
- A record without the key, value or time field, or whose value is not a
  finite number, is a :class:`~unsflow.message.Failure` saying which; so is a
  payload that no earlier step decoded and that is not JSON. A record that is
  a bare number is read as ``{"value": number}``.
- State is bounded: at most ``max-keys`` keys of ``history`` values; the least
  recently used key is forgotten first (counted in ``evicted``). State lives
  in memory: a restart starts every window warming again.
- Order: a ``serial`` processor; the engine hands it the batches of a path one
  at a time in source order (:mod:`unsflow.engine.order`), so a burst gives
  the same windows as a slow replay.
- One window processor should serve one target: two targets sharing it would
  each add the same messages.

Example, the Red Hat (MANUela) demo's vibration sensors after ``parse``::

    "vibration-window": {"type": "window", "size": 5, "key-fields": ["machineId", "deviceId"],
                         "time-field": "epochMillis"}
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from bisect import bisect_left
from collections import OrderedDict
from datetime import datetime
from typing import Any, Literal

from pydantic import Field, model_validator

from unsflow.codecs import record_object
from unsflow.config.models import ProcessorConfig
from unsflow.message import NOT_DECODED, Failure, Message
from unsflow.processors.base import Processor, ProcessResult

__all__ = ["WindowProcessor", "WindowProcessorConfig"]

log = logging.getLogger("unsflow.processors.window")

# Seconds between two warnings about late records of one processor.
_LATE_LOG_INTERVAL = 10.0

# About 3-6 us a record here: from this many on, a batch goes to a worker thread so that
# the event loop is not held over ~1 ms (the processor contract).
_THREAD_MIN = 200
_DEFAULT_KEY_FIELDS = ("machine", "sensor")


class WindowProcessorConfig(ProcessorConfig):
    """Sliding window of the last `size` values per key, oldest first."""

    type: Literal["window"] = Field(description="Processor type: window.")
    size: int = Field(5, ge=1, le=100000, description="Values in a window.")
    value_field: str = Field("value", min_length=1, description="Record field holding the number.")
    time_field: str | None = Field(
        None, description="Record field that orders values (epoch number or ISO 8601 string), "
        "e.g. epochMillis or timestamp. Without it: arrival order.")
    key_fields: list[str] | None = Field(
        None, description="Record fields whose values form the key; default [machine, sensor].")
    key: str | None = Field(
        None, description="Key template instead of key-fields: {topic}, {levels[N]}, "
        "{record[FIELD]}; e.g. \"{topic}\".")
    output_field: str = Field("window", min_length=1, description="Record key of the window.")
    emit_partial: bool = Field(
        False, description="Output a shorter window while a key is warming up.")
    no_window: Literal["hold", "pass"] = Field(
        "hold", description="A record whose key is still warming up (fewer than size values "
        "at or before it): hold (no output; its value joins the window; counted as warming) "
        "or pass (output unchanged).")
    history: int | None = Field(
        None, ge=1, le=1000000, description="Values kept per key, so that a record arriving "
        "after newer ones still gets its own window; default 4 * size (at least size).")
    late: Literal["dead-letter", "pass"] = Field(
        "dead-letter", description="A record older than every value kept for its key (history "
        "too short to rebuild its window): dead-letter (with the reason) or pass (output "
        "unchanged). Counted either way.")
    max_keys: int = Field(100000, ge=1, description="Most keys kept; least recently used go first.")

    @model_validator(mode="after")
    def _one_key(self) -> WindowProcessorConfig:
        if self.key is not None and self.key_fields is not None:
            raise ValueError("either key or key-fields, not both")
        if self.key_fields is not None and not self.key_fields:
            raise ValueError("key-fields: at least one field name")
        if self.history is not None and self.history < self.size:
            raise ValueError(f"history ({self.history}) must be at least size ({self.size})")
        return self

    @property
    def kept(self) -> int:
        """Values kept per key."""
        return self.history if self.history is not None else 4 * self.size


class _Window:
    """One key's newest values, sorted by time (oldest first)."""

    __slots__ = ("times", "values", "trimmed")

    def __init__(self) -> None:
        self.times: list[float] = []
        self.values: list[float] = []
        self.trimmed = False  # older values were dropped to keep the history bounded

    def add(self, t: float, value: float, kept: int, replace_same_time: bool) -> int | None:
        """Insert by time; the value's index, or None when it is older than every kept
        value of a key that had older ones (its window cannot be rebuilt)."""
        times = self.times
        i = bisect_left(times, t)
        if replace_same_time and i < len(times) and times[i] == t:
            self.values[i] = value
            return i
        if i == 0 and times and (self.trimmed or len(times) >= kept):
            return None  # older than every kept value, and older ones existed
        times.insert(i, t)
        self.values.insert(i, value)
        if len(times) > kept:
            del times[0], self.values[0]
            self.trimmed = True
            i -= 1
        return i


class WindowProcessor(Processor[WindowProcessorConfig]):
    """Per-key sliding windows, oldest value first, bounded by max-keys and history."""

    config_class = WindowProcessorConfig
    ordering = "serial"  # windows are state across batches: one batch at a time, in order

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._windows: OrderedDict[Any, _Window] = OrderedDict()
        self._arrivals = 0
        # process() may run in a worker thread; batches must not interleave.
        self._lock = threading.Lock()
        self.warming = 0
        self.late = 0
        self.evicted = 0
        self._late_logged_at = 0.0
        self._late_logged = 0  # late count at the last warning
        self._key_fields = tuple(self.config.key_fields or _DEFAULT_KEY_FIELDS)

    async def process(self, batch: list[Message]) -> ProcessResult:
        if len(batch) >= _THREAD_MIN:
            result = await asyncio.to_thread(self._process_all, batch)
        else:
            result = self._process_all(batch)
        self._log_late()
        return result

    def _process_all(self, batch: list[Message]) -> ProcessResult:
        outputs: list[Message] = []
        failures: list[Failure] = []
        cfg = self.config
        size, kept = cfg.size, cfg.kept
        with self._lock:
            for msg in batch:
                try:
                    record = record_object(msg)
                    key = self._key(msg, record)
                    value = self._value(record)
                    t = self._time(record)
                except ValueError as exc:
                    failures.append(Failure(msg, str(exc), self.stage))
                    continue
                window = self._window(key)
                i = window.add(t, value, kept, cfg.time_field is not None)
                # Too late: older than every kept value, or its window needs values the
                # bounded history no longer holds.
                if i is None or (i + 1 < size and window.trimmed):
                    self.late += 1
                    if cfg.late == "pass":
                        outputs.append(_as_is(msg, record))
                    else:
                        failures.append(Failure(msg, self._late_reason(key, t, window),
                                                self.stage))
                    continue
                start = i + 1 - size
                if start < 0:
                    self.warming += 1
                    if not cfg.emit_partial:
                        if cfg.no_window == "pass":
                            outputs.append(_as_is(msg, record))
                        continue
                    start = 0
                outputs.append(msg.derive(
                    record={**record, cfg.output_field: window.values[start:i + 1]}))
        return outputs, failures

    def _late_reason(self, key: Any, t: float, window: _Window) -> str:
        return (f"late: time {_time_text(t)} is older than the {len(window.times)} values kept "
                f"for key {_short(key)} (oldest {_time_text(window.times[0])}); its window "
                f"cannot be rebuilt: raise history (now {self.config.kept}) to accept later "
                f"arrivals")

    def _log_late(self) -> None:
        # Real out-of-order data comes in runs: one warning every few seconds, with a count.
        new = self.late - self._late_logged
        if not new:
            return
        now = time.monotonic()
        if now - self._late_logged_at < _LATE_LOG_INTERVAL:
            return
        self._late_logged_at = now
        self._late_logged = self.late
        fate = "passed on without a window" if self.config.late == "pass" else "dead-lettered"
        log.warning("[%s] %d late record(s) (older than the %d values kept per key) %s; "
                    "raise history to window them", self.stage, new, self.config.kept, fate)

    def outcomes(self) -> dict[str, int]:
        return {"warming": self.warming, "late": self.late, "evicted": self.evicted}

    def _key(self, msg: Message, record: dict[str, Any]) -> Any:
        template = self.config.key
        if template is not None:
            try:
                return template.format(topic=msg.topic, levels=msg.topic.split("/"), record=record)
            except (KeyError, IndexError) as exc:
                raise ValueError(f"key {template!r} cannot be filled: missing {exc}") from None
        try:
            values = tuple(record[name] for name in self._key_fields)
        except KeyError as exc:
            raise ValueError(f"record has no key field {exc}") from None
        try:
            hash(values)
        except TypeError:
            raise ValueError(f"key fields {list(self._key_fields)} must hold scalars, "
                             f"found {_short(list(values))}") from None
        return values

    def _value(self, record: dict[str, Any]) -> float:
        name = self.config.value_field
        if name not in record:
            raise ValueError(f"record has no value field {name!r}")
        value = record[name]
        if not _is_number(value) or not math.isfinite(value):
            raise ValueError(f"value field {name!r} must hold a finite number, found {_short(value)}")
        return value  # type: ignore[no-any-return]

    def _time(self, record: dict[str, Any]) -> float:
        name = self.config.time_field
        if name is None:
            self._arrivals += 1
            return float(self._arrivals)
        if name not in record:
            raise ValueError(f"record has no time field {name!r}")
        t = record[name]
        if _is_number(t) and math.isfinite(t):
            return float(t)
        if isinstance(t, str):
            try:
                return datetime.fromisoformat(t).timestamp()
            except ValueError:
                pass
        raise ValueError(f"time field {name!r} must hold an epoch number or an ISO 8601 time, "
                         f"found {_short(t)}")

    def _window(self, key: Any) -> _Window:
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = _Window()
            if len(self._windows) > self.config.max_keys:
                self._windows.popitem(last=False)
                self.evicted += 1
        else:
            self._windows.move_to_end(key)
        return window

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "size": self.config.size, "keys": len(self._windows),
                "warming": self.warming, "late": self.late, "evicted": self.evicted}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_is(msg: Message, record: dict[str, Any]) -> Message:
    """``msg`` passed on without a window (decoded here if no earlier step did)."""
    return msg if msg.record is not NOT_DECODED else msg.derive(record=record)


def _time_text(t: float) -> str:
    """A time as the record had it: epoch milliseconds stay whole numbers."""
    return str(int(t)) if t.is_integer() else repr(t)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
