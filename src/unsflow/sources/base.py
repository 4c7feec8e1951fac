"""The source contract."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, Generic, TypeVar

from unsflow.components import Context
from unsflow.config.models import ComponentConfig
from unsflow.message import Message

__all__ = ["AckToken", "Source"]

AckToken = Any

C = TypeVar("C", bound=ComponentConfig)


class Source(ABC, Generic[C]):
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
    - The constructor only stores config; connections open in ``start``.

    Configuration: a source of the ``sources`` section has a ``config_class``
    subclassing :class:`~unsflow.config.models.SourceConfig` (it names its
    targets). The source type serving the top-level UNS keys (``mqtt``) has a
    config class with ``from_pipeline(config)``, which assembles its config
    from ``mqtt-broker``, ``mqtt-broker-credential``, ``subscriptions`` and
    ``batch-size``; its messages are routed by the subscriptions' topic filters.

    Capability: a source whose ``live_subscriptions`` is true changes its
    subscriptions on the live connection (:meth:`update_subscriptions`), so a
    config reload that only changes subscriptions keeps its connection and
    session.
    """

    config_class: ClassVar[type[ComponentConfig]]
    # Changes its subscriptions on the live connection (update_subscriptions).
    live_subscriptions: ClassVar[bool] = False
    # Upstream gives unacknowledged batches again after a restart (MQTT session, Kafka
    # offsets); a reload whose drain timed out restarts such sources to get them back.
    redelivers: ClassVar[bool] = True

    def __init__(self, component_id: str, config: C, context: Context) -> None:
        self.id = component_id
        self.config = config
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

    async def leave(self, timeout: float) -> None:
        """Before a stop, while still being read: give back this member's share of a
        group that others go on consuming (MQTT ``$share`` filters). Default: nothing."""

    def describe_endpoint(self) -> str:
        """Where the source connects, for logs (host:port, bootstrap servers); no secrets."""
        return self.id

    @property
    def ready(self) -> bool:
        """Connected and subscribed."""
        return True

    def keeps(self, config: C) -> bool:
        """Whether this running source can take ``config`` (a reload) without a restart.

        By default only an equal config; a source overrides it to accept also
        what its :meth:`reconfigure` applies live (the MQTT source: subscriptions).
        """
        return config == self.config

    async def reconfigure(self, config: C, timeout: float) -> None:
        """Apply ``config``, which :meth:`keeps` accepted, to the running source.

        Raises (and keeps the old settings) when the upstream system refuses a
        change, e.g. a subscription; ``timeout`` bounds the wait for its answer.
        """
        self.config = config

    async def update_subscriptions(self, subscriptions: Mapping[str, int],
                                   timeout: float = 10.0) -> None:
        """Make ``subscriptions`` ({filter: qos}) those of the live session
        (``live_subscriptions`` sources only)."""
        raise NotImplementedError(f"{type(self).__name__} cannot change subscriptions live")

    def forget_on_connect(self, filters: set[str]) -> None:
        """Drop ``filters`` from the upstream session when connecting: a session that
        outlives this process (an MQTT persistent session) may still hold filters an
        earlier source of the same identity had. Nothing by default (no such session)."""
