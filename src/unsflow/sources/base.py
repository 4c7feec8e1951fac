"""The source contract."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from unsflow.components import Context
from unsflow.message import Message

__all__ = ["Source", "AckToken"]

AckToken = Any


class Source(ABC):
    """Delivers batches of messages and takes their acknowledgements.

    Contract:

    - ``read()`` waits for the next batch and returns ``(messages, token)``.
    - ``ack(token)`` is called once per batch, only after every target the
      batch was routed to has durably accepted it (or its messages were
      dead-lettered). A source acknowledges upstream in the order it delivered,
      whatever order ``ack`` is called in.
    - Messages of a batch that is never acked are redelivered by the upstream
      system (MQTT persistent session, Kafka committed offsets).
    - In-flight work is bounded: when too many batches wait for acks, the
      source stops taking more from upstream (backpressure).
    - ``stop`` closes the connection without unsubscribing, so a persistent
      session keeps collecting messages while the process is down.
    """

    def __init__(self, component_id: str, context: Context) -> None:
        self.id = component_id
        self.context = context

    @abstractmethod
    async def start(self) -> None:
        """Connect and subscribe."""

    @abstractmethod
    async def read(self) -> tuple[list[Message], AckToken]:
        """The next batch and its acknowledgement token."""

    @abstractmethod
    def ack(self, token: AckToken) -> None:
        """The batch of ``token`` is durably accepted everywhere it was routed."""

    @abstractmethod
    async def stop(self) -> None:
        """Close without unsubscribing."""

    def describe_endpoint(self) -> str:
        """Where the source connects, for logs (host:port, bootstrap servers); no secrets."""
        return self.id

    @property
    def ready(self) -> bool:
        """Connected and subscribed."""
        return True
