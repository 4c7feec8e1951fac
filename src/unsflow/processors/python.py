"""python: run a user's Python function on every record, or on whole batches.

Contract:

- ``function`` is ``package.module:function`` (checked at config load) and is
  imported in ``start``; a module that does not import or a name that is not
  there raises :class:`~unsflow.errors.PermanentError` naming the function and
  why, before any message flows.
- ``mode: record`` calls ``fn(record, topic, **options)`` for each message
  (the payload is decoded as JSON first if nothing decoded it yet). It returns
  a dict (one output), a list of dicts (several outputs) or ``None`` (the
  message is filtered out and counted in ``filtered``). An exception, or a
  return value of another kind, is a :class:`~unsflow.message.Failure` of that
  message carrying the exception's type and text; the rest of the batch goes on.
- ``mode: batch`` calls ``fn(messages, **options)`` once per batch; it returns
  the list of output messages (build them with ``message.derive(record=...)``).
  An exception, or a return value that is not a list of messages, makes every
  message of the batch a Failure.
- A function that raises :class:`~unsflow.errors.TransientError` (its database
  is down, say) fails the whole batch for the engine to retry later.
- The function runs in a worker thread so that CPU-heavy code does not stall
  the event loop, and never concurrently with itself: it may keep state
  without locks.

Example::

    "processors": {"to-celsius": {"type": "python", "function": "plant.units:to_celsius",
                                  "options": {"field": "temp"}}}
"""

from __future__ import annotations

import asyncio
import importlib
import re
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from unsflow.codecs import decode_json
from unsflow.config.models import ProcessorConfig
from unsflow.errors import DecodeError, NotConnected, PermanentError, TransientError
from unsflow.message import NOT_DECODED, Failure, Message
from unsflow.processors.base import Processor, ProcessResult

__all__ = ["PythonProcessor", "PythonProcessorConfig"]

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
FUNCTION_PATTERN = rf"^{_NAME}(\.{_NAME})*:{_NAME}(\.{_NAME})*$"


class PythonProcessorConfig(ProcessorConfig):
    """Call a user function per record or per batch."""

    type: Literal["python"] = Field(description="Processor type: python.")
    function: str = Field(
        description="The function to call, as package.module:function.",
        json_schema_extra={"pattern": FUNCTION_PATTERN},
    )
    mode: Literal["record", "batch"] = Field(
        "record",
        description="record: fn(record, topic, **options) per message; "
        "batch: fn(messages, **options) per batch.",
    )
    # Declared after `mode`: the options validator reads it.
    options: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments passed to the function."
    )

    @field_validator("function")
    @classmethod
    def _function_ref(cls, value: str) -> str:
        if not re.match(FUNCTION_PATTERN, value):
            raise PydanticCustomError("function_ref", "a function as 'package.module:function'")
        return value

    @field_validator("options")
    @classmethod
    def _options_fit_signature(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        mode = info.data.get("mode")
        if mode is None:  # mode itself is invalid and reported
            return value
        taken = {"record", "topic"} if mode == "record" else {"messages"}
        clash = sorted(taken & set(value))
        if clash:
            raise PydanticCustomError(
                "option_clash",
                "options without the names the {mode} mode passes itself ({names})",
                {"mode": mode, "names": ", ".join(clash)},
            )
        return value


class PythonProcessor(Processor[PythonProcessorConfig]):
    """Runs a user function; see the module contract."""

    config_class = PythonProcessorConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fn: Callable[..., Any] | None = None
        # One call at a time: the user's function may keep state without locks.
        self._lock = asyncio.Lock()
        self.filtered = 0

    async def start(self) -> None:
        self._fn = load_function(self.config.function, component_id=self.id)

    async def process(self, batch: list[Message]) -> ProcessResult:
        if self._fn is None:
            raise NotConnected("process() before start()", component_id=self.id)
        run = self._run_records if self.config.mode == "record" else self._run_batch
        async with self._lock:
            return await asyncio.to_thread(run, self._fn, batch)

    def _run_records(self, fn: Callable[..., Any], batch: list[Message]) -> ProcessResult:
        outputs: list[Message] = []
        failures: list[Failure] = []
        options = self.config.options
        filtered = 0  # added at the end: a TransientError mid-batch means it runs again
        for msg in batch:
            try:
                record = decode_json(msg.payload) if msg.record is NOT_DECODED else msg.record
            except DecodeError as exc:
                failures.append(Failure(msg, str(exc), self.stage))
                continue
            try:
                result = fn(record, msg.topic, **options)
            except TransientError:
                raise
            except Exception as exc:  # noqa: BLE001 - user code: its failure is this message's fate
                failures.append(Failure(msg, f"{self._name} raised {_describe(exc)}", self.stage))
                continue
            if result is None:
                filtered += 1
            elif isinstance(result, dict):
                outputs.append(msg.derive(record=result))
            elif isinstance(result, list) and all(isinstance(item, dict) for item in result):
                outputs.extend(msg.derive(record=item) for item in result)
            else:
                failures.append(Failure(
                    msg, f"{self._name} returned {_kind(result, dict)}; expected a dict, "
                    "a list of dicts or None", self.stage))
        self.filtered += filtered
        return outputs, failures

    def _run_batch(self, fn: Callable[..., Any], batch: list[Message]) -> ProcessResult:
        try:
            result = fn(list(batch), **self.config.options)
        except TransientError:
            raise
        except Exception as exc:  # noqa: BLE001 - user code: the batch shares its fate
            error = f"{self._name} raised {_describe(exc)}"
            return [], [Failure(msg, error, self.stage) for msg in batch]
        if not isinstance(result, list) or not all(isinstance(m, Message) for m in result):
            error = f"{self._name} returned {_kind(result, Message)}; expected a list of Message"
            return [], [Failure(msg, error, self.stage) for msg in batch]
        return result, []

    @property
    def _name(self) -> str:
        return self.config.function

    def outcomes(self) -> dict[str, int]:
        return {"filtered": self.filtered}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "function": self.config.function,
                "mode": self.config.mode, "filtered": self.filtered}


def load_function(ref: str, *, component_id: str = "") -> Callable[..., Any]:
    """Import ``package.module:function``; PermanentError says which part failed and why."""
    module_name, _, attr_path = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise PermanentError(f"function {ref!r}: cannot import module {module_name!r}: {exc}",
                             component_id=component_id) from exc
    except Exception as exc:  # the user's module failed while importing
        raise PermanentError(f"function {ref!r}: importing module {module_name!r} raised "
                             f"{_describe(exc)}", component_id=component_id) from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise PermanentError(f"function {ref!r}: {module_name!r} has no attribute "
                                 f"{attr_path!r}", component_id=component_id) from exc
    if not callable(obj):
        raise PermanentError(f"function {ref!r}: {attr_path!r} is {_kind(obj)}, not a function",
                             component_id=component_id)
    return obj  # type: ignore[no-any-return]


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _kind(value: Any, item_type: type | None = None) -> str:
    """What a function returned, in words: ``a list holding str at 1``."""
    if isinstance(value, list) and item_type is not None:
        for i, item in enumerate(value):
            if not isinstance(item, item_type):
                return f"a list holding {_a(item)} at {i}"
    return "None" if value is None else _a(value)


def _a(value: Any) -> str:
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiouAEIOU' else 'a'} {name}"
