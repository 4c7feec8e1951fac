"""What users need to test their own pipelines.

- MQTT helpers that lose nothing themselves: :func:`publish` waits for every
  acknowledgement, :class:`Collector` subscribes before returning
  (``unsflow.testing.mqtt``).
- In-memory components: :class:`MemorySource` feeds a :class:`Pipeline`
  without a broker and records its acknowledgements; :class:`MemoryTarget`
  keeps what it is given, in order (``unsflow.testing.memory``).
"""

from unsflow.testing.memory import MemorySource, MemoryTarget
from unsflow.testing.mqtt import (
    Collector,
    end_session,
    numbered_payload,
    publish,
    publish_numbered,
    subscribe_collect,
)

__all__ = [
    "Collector",
    "end_session",
    "MemorySource",
    "MemoryTarget",
    "numbered_payload",
    "publish",
    "publish_numbered",
    "subscribe_collect",
]
