"""User functions that fail the way real dependencies do, for engine tests."""

from __future__ import annotations

from typing import Any

from unsflow.errors import TransientError

state: dict[str, int] = {"calls": 0, "fail_first": 0}


def flaky(record: dict[str, Any], topic: str) -> dict[str, Any]:
    """Raises TransientError for the first ``state['fail_first']`` calls."""
    state["calls"] += 1
    if state["calls"] <= state["fail_first"]:
        raise TransientError("inference service unavailable (test)")
    return {**record, "checked": True}


def sleepy_batch(messages: list[Any]) -> list[Any]:
    """Sleeps a random time per batch (a slow lookup), recording the order it saw."""
    import random
    import time

    time.sleep(random.uniform(0, 0.005))
    state.setdefault("seen", [])  # type: ignore[arg-type]
    state["seen"].extend(m.record["n"] for m in messages)  # type: ignore[union-attr]
    return messages
