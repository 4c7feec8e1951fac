"""Capped exponential backoff with jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass
class Backoff:
    """Delays ``initial * 2**n`` capped at ``maximum``, each jittered to [d/2, d].

    Half-jitter keeps retries of many clients apart without ever retrying at
    once, which full jitter (uniform in [0, d]) sometimes does.

    >>> b = Backoff(initial=1.0, maximum=4.0)
    >>> [(b.peek_cap(), b.next())[0] for _ in range(4)]
    [1.0, 2.0, 4.0, 4.0]
    """

    initial: float = 0.2
    maximum: float = 30.0
    attempt: int = field(default=0, init=False)

    def peek_cap(self) -> float:
        return min(self.maximum, self.initial * (2 ** self.attempt))

    def next(self) -> float:
        """The next delay; each call grows the cap until ``maximum``."""
        cap = self.peek_cap()
        self.attempt += 1
        return random.uniform(cap / 2, cap)

    def reset(self) -> None:
        self.attempt = 0
