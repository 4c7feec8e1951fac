"""Sources: deliver batches of messages, take acknowledgements."""

from unsflow.sources.base import Source

__all__ = ["Source"]
