"""The processor contract."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Generic, TypeVar

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
    - The constructor only stores config; I/O starts in ``start``.
    """

    config_class: ClassVar[type[ProcessorConfig]]

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

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.config.type}
