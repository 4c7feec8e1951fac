"""Targets: accept batches durably."""

from unsflow.targets.base import Target

__all__ = ["Target"]
