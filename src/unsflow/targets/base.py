"""The target contract."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Generic, TypeVar

from unsflow.components import Context
from unsflow.config.models import TargetConfig
from unsflow.message import Failure, Message

__all__ = ["Target"]

C = TypeVar("C", bound=TargetConfig)


class Target(ABC, Generic[C]):
    """Accepts batches of messages durably.

    Contract:

    - ``write(batch)`` returns only when every message of ``batch`` that is not
      in the returned failure list is durably accepted: written to the target
      system (a flushed, renamed file; an object PUT that returned; a publish
      acknowledged by the broker). Only then does the engine acknowledge the
      source. A target that batches internally (by records, bytes, age) keeps
      the caller waiting until the batch holding its messages is written.
    - Several ``write`` calls may be in flight at once (the engine overlaps
      batches); a target serialises what must be serialised itself. The engine
      calls ``write`` for the batches of a path in source order
      (:mod:`unsflow.engine.order`): a target that keeps order (a buffer, a
      Kafka partition) takes a batch's place before its first ``await``.
    - A message the target can never accept (it cannot be encoded, the topic
      is invalid) is returned as a :class:`Failure`; the engine dead-letters it.
    - A failure that a retry may fix raises
      :class:`~unsflow.errors.TransientError` or
      :class:`~unsflow.errors.NotConnected`; nothing of the batch counts as
      accepted, and the engine retries the whole batch with backoff.
    - ``stop`` flushes what is buffered (its writers are waiting) and closes.
    - The constructor only stores config; connections open in ``start``.
    """

    config_class: ClassVar[type[TargetConfig]]

    def __init__(self, component_id: str, config: C, context: Context) -> None:
        self.id = component_id
        self.config = config
        self.context = context

    @property
    def stage(self) -> str:
        return f"target:{self.id}"

    async def start(self) -> None:
        """Connect. Called once before the first write."""

    @abstractmethod
    async def write(self, batch: list[Message]) -> list[Failure]:
        """Durably accept ``batch`` (see the class contract)."""

    async def stop(self) -> None:
        """Flush buffered records (completing their writers) and close."""
