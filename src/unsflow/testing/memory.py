"""In-memory components for testing a pipeline without a broker.

>>> import asyncio
>>> from unsflow.message import Message
>>> src = MemorySource()
>>> token = src.push([Message("a/b", b"{}")])
>>> messages, tok = asyncio.run(src.read())
>>> src.ack(tok); src.released
[0]
"""

from __future__ import annotations

import asyncio

from unsflow.components import Context
from unsflow.config.models import ComponentConfig, TargetConfig
from unsflow.engine.acks import InOrderAcks
from unsflow.message import Failure, Message
from unsflow.sources.base import Source
from unsflow.targets.base import Target

__all__ = ["MemorySource", "MemoryTarget"]


class MemorySource(Source[ComponentConfig]):
    """A source fed by :meth:`push`; records how the engine acknowledged.

    ``ack_calls`` lists tokens in the order the engine acked them;
    ``released`` lists them in the order a real source would acknowledge
    upstream (arrival order), as the MQTT and Kafka sources do.

    Handed to :class:`~unsflow.engine.pipeline.Pipeline` as its UNS source, it
    stays through every config reload (the config does not describe it) and
    is never restarted: what it was given and not acknowledged is not given
    again (``redelivers`` is false).
    """

    config_class = ComponentConfig
    redelivers = False

    def __init__(self, component_id: str = "memory", context: Context | None = None) -> None:
        super().__init__(component_id, ComponentConfig(type="memory"), context or Context(env={}))
        self._queue: asyncio.Queue[tuple[list[Message], int]] | None = None
        self._backlog: list[tuple[list[Message], int]] = []
        self._acks: InOrderAcks[int] = InOrderAcks()
        self.ack_calls: list[int] = []
        self.released: list[int] = []
        self._pushed = 0

    def push(self, messages: list[Message]) -> int:
        """Queue a batch for the pipeline; returns its token."""
        token = self._acks.add(self._pushed)
        self._pushed += 1
        item = (list(messages), token)
        if self._queue is None:
            self._backlog.append(item)
        else:
            self._queue.put_nowait(item)
        return token

    async def start(self) -> None:
        self._ensure_queue()

    def _ensure_queue(self) -> asyncio.Queue[tuple[list[Message], int]]:
        if self._queue is None:
            self._queue = asyncio.Queue()
            for item in self._backlog:
                self._queue.put_nowait(item)
            self._backlog.clear()
        return self._queue

    async def read(self) -> tuple[list[Message], int]:
        return await self._ensure_queue().get()

    def ack(self, token: int) -> None:
        self.ack_calls.append(token)
        self.released.extend(self._acks.done(token))

    @property
    def acked_batches(self) -> int:
        return len(self.released)

    async def stop(self) -> None:
        pass

    def keeps(self, config: ComponentConfig) -> bool:
        return True  # fed by the test, whatever the config says

    async def reconfigure(self, config: ComponentConfig, timeout: float) -> None:
        pass


class MemoryTarget(Target[TargetConfig]):
    """A target that keeps what it is given, in order: ``messages`` (every accepted
    message) and ``batches`` (one list per ``write`` call).

    Use it with :class:`~unsflow.engine.path.TargetPath` to test processors as the
    engine runs them, or register it for a pipeline under a type name of your own.
    """

    def __init__(self, component_id: str = "memory", config: TargetConfig | None = None,
                 context: Context | None = None) -> None:
        super().__init__(component_id, config or TargetConfig(type="memory"),
                         context or Context(env={}))
        self.messages: list[Message] = []
        self.batches: list[list[Message]] = []

    async def write(self, batch: list[Message]) -> list[Failure]:
        self.batches.append(list(batch))
        self.messages.extend(batch)
        return []
