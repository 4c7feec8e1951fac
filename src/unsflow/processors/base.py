"""The processor contract."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Generic, Literal, TypeVar

from unsflow.components import Context
from unsflow.config.models import ProcessorConfig
from unsflow.message import Failure, Message

__all__ = ["Processor", "ProcessResult"]

C = TypeVar("C", bound=ProcessorConfig)

ProcessResult = tuple[list[Message], list[Failure]]


class Processor(ABC, Generic[C]):
    """Maps a batch of messages to a batch of messages.

    Contract:

    - ``process`` gets a whole batch and returns ``(outputs, failures)``. An
      output is usually ``message.derive(record=...)`` of its input; one input
      may give zero, one or several outputs.
    - A message that can never succeed (undecodable, rejected by a model) is
      returned in ``failures`` with a reason; the rest of the batch goes on.
    - A failure of the whole batch that a retry may fix (a service down, a
      timeout after the processor's own retries) raises
      :class:`~unsflow.errors.TransientError`; the engine retries the batch with
      backoff and holds its acknowledgement meanwhile.
    - ``process`` must not block the event loop: CPU work over ~1 ms per batch
      goes to a thread (``asyncio.to_thread``).
    - Order (the engine guarantees it, :mod:`unsflow.engine.order`): on one
      target path, batches reach ``process`` in the order the source delivered
      them, and its outputs reach the next stage in that order, whatever
      ``process`` does inside (threads, awaits). With ``ordering = "serial"``
      (the default, for anything with state across batches) a batch enters
      only after the one before it left, so ``process`` runs for one batch at
      a time; a stateless processor declares ``ordering = "concurrent"`` and
      batches may overlap inside it (their outputs still leave in order).
    - Every input has an outcome a user can see: an output, a failure (dead
      letter), or a count of why it gave none (:meth:`outcomes`, exported as
      ``unsflow_processor_outcomes_total``): never acknowledged and gone
      without a trace.
    - The constructor only stores config; I/O starts in ``start``.
    """

    config_class: ClassVar[type[ProcessorConfig]]
    # "serial": one batch at a time, in source order (state across batches);
    # "concurrent": stateless, batches may overlap (outputs still leave in order).
    ordering: ClassVar[Literal["serial", "concurrent"]] = "serial"

    def __init__(self, component_id: str, config: C, context: Context) -> None:
        self.id = component_id
        self.config = config
        self.context = context

    @property
    def stage(self) -> str:
        return f"processor:{self.id}"

    async def start(self) -> None:
        """Open connections, load models. Called once before the first batch."""

    @abstractmethod
    async def process(self, batch: list[Message]) -> ProcessResult:
        """Process one batch (see the class contract)."""

    async def stop(self) -> None:
        """Release resources. Called once after the last batch."""

    def outcomes(self) -> dict[str, int]:
        """Counts since start of the notable outcomes beyond outputs and failures, by name:
        above all inputs that gave no output (``filtered``, ``warming``), and others a user
        should see (``late``, ``alerts``). Empty for a processor where every input gives
        an output or a failure."""
        return {}

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.config.type}
