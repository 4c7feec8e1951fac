"""Message: one MQTT (or Kafka) message on its way through the pipeline.

A message is created once by a source and decoded once: ``record`` holds the
decoded payload after the first decoding step, and every later stage reads
it instead of parsing ``payload`` again. Batches are plain lists of messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Message", "Batch", "Failure", "NOT_DECODED"]


class _NotDecoded:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NOT_DECODED"

    def __bool__(self) -> bool:
        return False


NOT_DECODED: Any = _NotDecoded()


@dataclass(slots=True)
class Message:
    """One message.

    ``topic`` and ``payload`` are as received. ``record`` is the decoded payload
    (a dict for one record, a list of dicts for ``event-type: batch``), or
    ``NOT_DECODED`` until a processor or target decodes it. ``received_at`` is
    epoch seconds at the source. ``attempts`` counts delivery attempts for the
    dead letter.
    """

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    received_at: float = 0.0
    properties: dict[str, Any] | None = None
    record: Any = NOT_DECODED
    source_id: str = ""
    attempts: int = 0
    headers: dict[str, Any] | None = None

    def derive(self, *, record: Any = NOT_DECODED, payload: bytes | None = None,
               topic: str | None = None) -> "Message":
        """A new message that keeps this one's origin (topic, time, source) with new content."""
        return Message(
            topic=self.topic if topic is None else topic,
            payload=self.payload if payload is None else payload,
            qos=self.qos,
            retain=self.retain,
            received_at=self.received_at,
            properties=self.properties,
            record=record,
            source_id=self.source_id,
            attempts=self.attempts,
            headers=self.headers,
        )


Batch = list[Message]


@dataclass(slots=True)
class Failure:
    """A message that cannot succeed, bound for the dead letter.

    ``stage`` is the id of the component that failed (``processor:edge-inference``,
    ``target:s3-target``); ``error`` says why in words a user can act on.
    """

    message: Message
    error: str
    stage: str
