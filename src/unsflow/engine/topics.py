"""MQTT topic names and filters: validation and matching (MQTT 3.1.1 §4.7, 5.0 §4.7-4.8);
topic templates, the one implementation for every target that names its output topic or key
(:func:`compile_template`)."""

from __future__ import annotations

import string
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING

import orjson

from unsflow.message import NOT_DECODED

if TYPE_CHECKING:
    from unsflow.message import Message

__all__ = ["TEMPLATE_FIELDS", "TopicMatcher", "compile_template", "filter_problem", "matches",
           "topic_only",
           "split_shared", "topic_problem"]

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


TEMPLATE_FIELDS = ("{topic} (the message's topic), {target} (this target's name), {levels[N]} "
                   "(topic level N, from 0), {record[KEY]} (a field of the JSON record), "
                   "{headers[NAME]} (a header of a message from a Kafka source, e.g. kafka.key)")
_FIELD_ROOTS = frozenset({"topic", "target", "levels", "record", "headers"})
_CACHE_SIZE = 65536  # distinct topics remembered by a template of the topic alone


def check_fields(template: str, known: set[str]) -> None:
    """Raise ``ValueError`` unless ``template`` is a format string whose fields are all in
    ``known`` (a component's own topic template: OPC UA, Sparkplug B).

    >>> check_fields("plant/{name}", {"name"})
    >>> check_fields("plant/{nmae}", {"name", "node_id"})
    Traceback (most recent call last):
    ...
    ValueError: unknown field(s) ['nmae'] (known: name, node_id)
    """
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise ValueError(f"not a topic template: {exc}") from None
    unknown = fields - known
    if unknown:
        raise ValueError(f"unknown field(s) {sorted(unknown)} (known: "
                         f"{', '.join(sorted(known))})")


def topic_only(template: str) -> bool:
    """Whether ``template`` is filled from the topic (and target name) alone, so that its
    value can be remembered per topic.

    >>> topic_only("{levels[1]}/{target}"), topic_only("a/{record[machineId]}")
    (True, False)
    """
    fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    return {f.split("[", 1)[0].split(".", 1)[0] for f in fields} <= {"topic", "target", "levels"}


def compile_template(template: str, target: str) -> Callable[[Message], str]:
    """A function that fills ``template`` for a message (fields: :data:`TEMPLATE_FIELDS`).

    Raises ``ValueError`` at once for a template that is not one (bad braces,
    an unknown field): config validation calls it. The function raises
    ``KeyError`` or ``IndexError`` for a message that lacks a field (a record
    key, a topic level); a target dead-letters that message. A record not yet
    decoded is read from the JSON payload; a message that is not a JSON object
    has no record fields.

    >>> from unsflow.message import Message
    >>> m = Message("acme/site1/press/vibration", b'{"machineId": "m7"}')
    >>> compile_template("{levels[1]}", "lake")(m)
    'site1'
    >>> compile_template("alerts/{record[machineId]}/{target}", "lake")(m)
    'alerts/m7/lake'
    >>> compile_template("{machine}", "lake")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: template '{machine}': unknown field(s) ['machine']; known: {topic} ...
    """
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise ValueError(f"template {template!r}: {exc}") from None
    roots = {f.split("[", 1)[0].split(".", 1)[0] for f in fields}
    unknown = roots - _FIELD_ROOTS
    if unknown or "" in roots:
        raise ValueError(f"template {template!r}: unknown field(s) {sorted(unknown) or ['{}']}; "
                         f"known: {TEMPLATE_FIELDS}")
    if not fields:
        return lambda msg: template
    if template == "{topic}":
        return lambda msg: msg.topic
    if template == "{target}":
        return lambda msg: target
    needs_record = "record" in roots
    if not needs_record and "headers" not in roots:
        # A function of the topic alone: remembered per topic (a UNS has a bounded set).
        known: dict[str, str] = {}

        def by_topic(msg: Message) -> str:
            value = known.get(msg.topic)
            if value is None:
                value = template.format(topic=msg.topic, target=target,
                                        levels=msg.topic.split("/"))
                if len(known) < _CACHE_SIZE:
                    known[msg.topic] = value
            return value

        return by_topic

    def fill(msg: Message) -> str:
        record = msg.record
        if needs_record and record is NOT_DECODED:
            try:
                record = orjson.loads(msg.payload)
            except orjson.JSONDecodeError:
                record = None
        return template.format(topic=msg.topic, target=target, levels=msg.topic.split("/"),
                               record=record if isinstance(record, dict) else {},
                               headers=msg.headers or {})

    return fill
