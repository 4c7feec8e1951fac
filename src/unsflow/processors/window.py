"""window: a sliding window of each key's last ``size`` values, as a feature vector.

Contract:

- Records are grouped by a key: the record fields ``key-fields`` (default
  ``machine`` and ``sensor``) or the template ``key`` (``{topic}``,
  ``{levels[N]}``, ``{record[FIELD]}``, as in the MQTT target's topic).
- Each key keeps its newest ``size`` values of ``value-field``, ordered by
  ``time-field`` (epoch numbers or ISO 8601 strings) when one is configured,
  else by arrival. A record that arrives late is put in its place by time, so
  the window is always **oldest first**, whatever the order of arrival.
- A record that fills (or keeps full) its key's window is output as
  ``{**record, <output-field>: [v_oldest, ..., v_newest]}``: the key's newest
  ``size`` values once this record's value is in.
- A record that gets no full window (its key is still warming up, or it is
  older than every value of its full window) is *held* by default: its value
  is kept in the window (if recent enough) but no output is made for it; the
  engine acknowledges the message all the same. ``no-window: pass`` passes
  such records on unchanged (no ``output-field``), ``emit-partial: true``
  outputs the shorter window while warming. Both cases are counted
  (``warming``, ``late``) in ``describe()``.
- With a ``time-field``, a second value with the same time for a key replaces
  the first: a redelivered message (QoS 1 is at least once) does not count twice.
- A record without the key, value or time field, or whose value is not a
  finite number, is a :class:`~unsflow.message.Failure` saying which; so is a
  payload that no earlier step decoded and that is not JSON. A record that is
  a bare number is read as ``{"value": number}``.
- State is bounded: at most ``max-keys`` keys; the least recently used key is
  forgotten first (counted in ``evicted``). State lives in memory: a restart
  starts every window warming again.
- Batches are windowed in the order the engine hands them over, also when
  several are in flight at once and a large one goes to a worker thread.
- One window processor should serve one target: two targets sharing it would
  each add the same messages.

Example, the Red Hat (MANUela) demo's vibration sensors after ``parse``::

    "vibration-window": {"type": "window", "size": 5, "key-fields": ["machineId", "deviceId"],
                         "time-field": "epochMillis"}
"""

from __future__ import annotations

import asyncio
import math
import threading
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
        "hold", description="A record without a full window (warming, or too late): hold (no "
        "output; its value stays in the window; acknowledged) or pass (output unchanged).")
    max_keys: int = Field(100000, ge=1, description="Most keys kept; least recently used go first.")

    @model_validator(mode="after")
    def _one_key(self) -> WindowProcessorConfig:
        if self.key is not None and self.key_fields is not None:
            raise ValueError("either key or key-fields, not both")
        if self.key_fields is not None and not self.key_fields:
            raise ValueError("key-fields: at least one field name")
        return self


class _Window:
    """One key's newest values, sorted by time (oldest first)."""

    __slots__ = ("times", "values")

    def __init__(self) -> None:
        self.times: list[float] = []
        self.values: list[float] = []

    def add(self, t: float, value: float, size: int, replace_same_time: bool) -> bool:
        """Insert by time; False if the value is older than every value of a full window."""
        i = bisect_left(self.times, t)
        if replace_same_time and i < len(self.times) and self.times[i] == t:
            self.values[i] = value
            return True
        if len(self.times) >= size and i == 0:
            return False
        self.times.insert(i, t)
        self.values.insert(i, value)
        if len(self.times) > size:
            del self.times[0], self.values[0]
        return True


class WindowProcessor(Processor[WindowProcessorConfig]):
    """Per-key sliding windows, oldest value first, bounded by max-keys."""

    config_class = WindowProcessorConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._windows: OrderedDict[Any, _Window] = OrderedDict()
        self._arrivals = 0
        # process() may run in a worker thread; batches must not interleave.
        self._lock = threading.Lock()
        # The engine runs batches concurrently: a large batch (worker thread) must not be
        # overtaken by the small one after it, or its values would arrive "late".
        self._in_order = asyncio.Lock()
        self.warming = 0
        self.late = 0
        self.evicted = 0
        self._key_fields = tuple(self.config.key_fields or _DEFAULT_KEY_FIELDS)

    async def process(self, batch: list[Message]) -> ProcessResult:
        async with self._in_order:  # FIFO: batches are windowed in the order handed over
            if len(batch) >= _THREAD_MIN:
                return await asyncio.to_thread(self._process_all, batch)
            return self._process_all(batch)

    def _process_all(self, batch: list[Message]) -> ProcessResult:
        outputs: list[Message] = []
        failures: list[Failure] = []
        cfg = self.config
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
                if not window.add(t, value, cfg.size, cfg.time_field is not None):
                    self.late += 1
                    if cfg.no_window == "pass":
                        outputs.append(msg if msg.record is not NOT_DECODED
                                       else msg.derive(record=record))
                    continue
                if len(window.values) < cfg.size:
                    self.warming += 1
                    if not cfg.emit_partial:
                        if cfg.no_window == "pass":
                            outputs.append(msg if msg.record is not NOT_DECODED
                                           else msg.derive(record=record))
                        continue
                outputs.append(msg.derive(record={**record, cfg.output_field: list(window.values)}))
        return outputs, failures

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


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
