"""MQTT topic names and filters: validation and matching (MQTT 3.1.1 §4.7, 5.0 §4.7-4.8)."""

from __future__ import annotations

from functools import lru_cache

__all__ = ["filter_problem", "topic_problem", "split_shared", "matches", "TopicMatcher"]

MAX_TOPIC_BYTES = 65535


def split_shared(topic_filter: str) -> tuple[str | None, str]:
    """``$share/GROUP/FILTER`` -> ``(GROUP, FILTER)``; any other filter -> ``(None, filter)``."""
    if topic_filter.startswith("$share/"):
        _, group, rest = (topic_filter.split("/", 2) + ["", ""])[:3]
        return group, rest
    return None, topic_filter


def filter_problem(topic_filter: str) -> str | None:
    """Why ``topic_filter`` is not a valid subscription filter, or None if it is."""
    group, flt = split_shared(topic_filter)
    if group is not None:
        if not group:
            return "a shared subscription '$share/GROUP/FILTER' with a non-empty GROUP"
        if any(c in group for c in "+#"):
            return "a share GROUP without '+' or '#'"
        if not flt:
            return "a topic filter after '$share/GROUP/'"
    if not flt:
        return "a non-empty topic filter"
    if "\x00" in flt:
        return "a topic filter without NUL characters"
    if len(flt.encode("utf-8")) > MAX_TOPIC_BYTES:
        return f"a topic filter of at most {MAX_TOPIC_BYTES} bytes"
    levels = flt.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return "'#' only as a whole level and only as the last level (like 'a/b/#')"
        if "+" in level and level != "+":
            return "'+' only as a whole level (like 'a/+/c')"
    return None


def topic_problem(topic: str) -> str | None:
    """Why ``topic`` is not a valid topic name to publish to, or None if it is."""
    if not topic:
        return "a non-empty topic name"
    if "+" in topic or "#" in topic:
        return "a topic name without the wildcards '+' and '#'"
    if "\x00" in topic:
        return "a topic name without NUL characters"
    if len(topic.encode("utf-8")) > MAX_TOPIC_BYTES:
        return f"a topic name of at most {MAX_TOPIC_BYTES} bytes"
    return None


def matches(topic_filter: str, topic: str) -> bool:
    """True if ``topic`` matches ``topic_filter`` (shared-subscription prefix ignored).

    >>> matches("com1/plant1/+/Message1", "com1/plant1/area1/Message1")
    True
    >>> matches("a/#", "a")
    True
    >>> matches("#", "$SYS/broker/uptime")
    False
    """
    _, flt = split_shared(topic_filter)
    f_levels = flt.split("/")
    t_levels = topic.split("/")
    # MQTT 4.7.2: filters starting with a wildcard do not match topics starting with '$'.
    if topic.startswith("$") and f_levels[0] in ("+", "#"):
        return False
    for i, f in enumerate(f_levels):
        if f == "#":
            return True
        if i >= len(t_levels):
            return False
        if f != "+" and f != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)


class TopicMatcher:
    """Maps a topic to the values of every filter it matches, with a bounded cache.

    Routing asks the same question for the same few thousand topics over and
    over; the cache turns filter matching into one dict lookup per message.
    """

    def __init__(self, table: dict[str, list[str]], cache_size: int = 65536) -> None:
        self._table = [(flt, tuple(values)) for flt, values in table.items()]
        self._lookup = lru_cache(maxsize=cache_size)(self._compute)
        self._filters = lru_cache(maxsize=cache_size)(self._compute_filters)

    def _compute_filters(self, topic: str) -> tuple[str, ...]:
        return tuple(flt for flt, _ in self._table if matches(flt, topic))

    def filters(self, topic: str) -> tuple[str, ...]:
        """Every filter ``topic`` matches, in table order.

        >>> TopicMatcher({"a/+": ["t1"], "a/#": ["t2"], "b": ["t1"]}).filters("a/x")
        ('a/+', 'a/#')
        """
        return self._filters(topic)

    def _compute(self, topic: str) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for flt, values in self._table:
            if matches(flt, topic):
                for value in values:
                    seen[value] = None
        return tuple(seen)

    def __call__(self, topic: str) -> tuple[str, ...]:
        """Distinct values (in first-match order) of every filter ``topic`` matches."""
        return self._lookup(topic)
