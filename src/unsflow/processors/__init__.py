"""Processors: a batch of messages in, a batch of messages (and failures) out."""

from unsflow.processors.base import Processor, ProcessResult

__all__ = ["Processor", "ProcessResult"]
