"""The dashboard's live view of the UNS: topics, sensor series and alerts, bounded.

:meth:`UnsView.ingest` is called by the MQTT client's thread once per
message and does a few dictionary and counter operations, nothing more: no
parsing, no allocation beyond keeping a reference to the payload. Every
``update_interval`` the dashboard's event loop calls :meth:`UnsView.tick`,
which parses what was kept since the last tick and returns the changes.

Bounds (whatever the message rate):

- at most ``max_topics`` topics are tracked (later ones are counted in
  ``untracked``), each with its last payload cut to ``PAYLOAD_PREVIEW`` bytes;
- a sensor topic keeps at most ``points_per_second`` readings per second for
  its chart, after a burst allowance of ``MAX_PENDING`` readings (a token
  bucket per topic, refilled at ``points_per_second``): a short burst, such as
  a backlog of a few dozen readings after a reconnect, is charted whole however
  it falls between two ticks; a sustained higher rate is decimated to about
  ``points_per_second``, never delayed;
- at most ``history`` points per series, ``MAX_ALERTS`` recent alerts, and
  ``MAX_ALERTS_PER_TICK`` new alerts parsed per tick (the rest are counted).

When the feed samples the UNS (:mod:`unsflow.dashboard.mqtt`: above a message
rate budget it subscribes to the sensor topics for part of each period only),
``sampling`` is that share, topic rates are measured over the subscribed
windows (:meth:`UnsView.sample_start`, :meth:`UnsView.sample_end`), and the
retained messages a broker sends again at each subscription are not counted
twice nor charted again.

What counts as a reading (a chart point):

- UNS JSON: ``.../enterprise/site/area/line/machine/sensor`` with an object
  holding a numeric ``value`` (``unit``, ``timestamp`` in epoch ms, ``machine``
  and ``sensor`` used when present) or a bare number;
- the Red Hat demo's CSV: ``.../iot-sensor/sw/<sensor>`` with
  ``machineId,deviceId,value,epochMillis``.

Topics matching an alert filter are alerts, never chart points: the records
the ``threshold`` processor emits (``alert``, ``limit``, ``value``,
``reading``) and those a model path emits (the reading plus ``inference``
with ``label`` and ``version``, or an ``anomaly`` field).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from unsflow.engine.topics import matches

__all__ = ["Alert", "Reading", "Series", "UnsView", "parse_alert", "parse_reading"]

PAYLOAD_PREVIEW = 2048
MAX_ALERTS = 200
MAX_ALERTS_PER_TICK = 100
MAX_PENDING = 64  # kept payloads per topic between two ticks, and its burst allowance


@dataclass(frozen=True)
class Reading:
    """One sensor reading, wherever it came from."""

    group: str  # the UNS path above the machine, e.g. acme/plant1/area1/line1
    machine: str
    sensor: str
    value: float
    ts: float  # epoch seconds
    unit: str = ""
    device: str = ""


@dataclass(frozen=True)
class Alert:
    """One alert as the dashboard lists it."""

    kind: str  # "anomaly" or "threshold"
    machine: str
    sensor: str
    value: float | None
    ts: float
    text: str
    topic: str
    model: str | None = None
    version: int | None = None
    limit: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "machine": self.machine, "sensor": self.sensor,
                "value": self.value, "ts": self.ts, "text": self.text, "topic": self.topic,
                "model": self.model, "version": self.version, "limit": self.limit}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                return None
        else:
            return None
    value = float(value)
    return value if math.isfinite(value) else None


def _seconds(value: Any, default: float) -> float:
    """Epoch milliseconds (or seconds, for small values) as epoch seconds."""
    number = _number(value)
    if number is None or number <= 0:
        return default
    return number / 1000.0 if number > 1e11 else number


def parse_reading(topic: str, payload: bytes, now: float) -> Reading | None:
    """The reading in a message, or None when it holds no numeric value.

    >>> parse_reading("acme/plant1/area1/line1/press-1/vibration",
    ...               b'{"value": 13.8, "unit": "mm/s", "timestamp": 1587640442999}', 0.0)
    Reading(group='acme/plant1/area1/line1', machine='press-1', sensor='vibration', \
value=13.8, ts=1587640442.999, unit='mm/s', device='')
    >>> parse_reading("iot-sensor/sw/vibration", b"floor-1-line-1-extruder-1,pump-2,13.8,1587640442999",
    ...               0.0).machine
    'floor-1-line-1-extruder-1'
    """
    levels = topic.split("/")
    if len(levels) >= 3 and levels[-3] == "iot-sensor" and levels[-2] == "sw":
        parts = payload.decode("utf-8", "replace").strip().split(",")
        if len(parts) < 3:
            return None
        value = _number(parts[2])
        if value is None:
            return None
        ts = _seconds(parts[3], now) if len(parts) > 3 else now
        return Reading("/".join(levels[:-1]), parts[0].strip() or "?", levels[-1], value, ts,
                       device=parts[1].strip())
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if isinstance(data, dict):
        value = _number(data.get("value"))
        if value is None:
            return None
        unit = data.get("unit")
        ts = _seconds(data.get("timestamp", data.get("ts")), now)
        machine = data.get("machine")
        sensor = data.get("sensor")
    else:
        value = _number(data)
        if value is None or isinstance(data, str):
            return None
        unit, ts, machine, sensor = "", now, None, None
    sensor = str(sensor) if sensor else levels[-1]
    machine = str(machine) if machine else (levels[-2] if len(levels) > 1 else "")
    group = "/".join(levels[:-2]) if len(levels) > 2 else ""
    return Reading(group, machine, sensor, value, ts, unit=str(unit) if unit else "")


def _version(inference: Any) -> tuple[str | None, int | None]:
    if isinstance(inference, dict):
        version = inference.get("version")
        model = inference.get("model")
        return (str(model) if model is not None else None,
                int(version) if isinstance(version, int) and not isinstance(version, bool)
                else None)
    return None, None


def parse_alert(topic: str, payload: bytes, now: float) -> Alert | None:
    """An alert record (threshold or model output) as an :class:`Alert`; None if not JSON.

    >>> a = parse_alert("alerts/press-1/vibration", b'{"value": 31.0, "machine": "press-1", '
    ...                 b'"sensor": "vibration", "timestamp": 1000000000000, '
    ...                 b'"inference": {"label": 1, "model": "m", "version": 3}}', 0.0)
    >>> a.kind, a.version, a.ts
    ('anomaly', 3, 1000000000.0)
    """
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    levels = topic.split("/")
    nested = data.get("reading")
    reading: dict[str, Any] = nested if isinstance(nested, dict) else data
    machine = reading.get("machine") or reading.get("machineId") or \
        (levels[-2] if len(levels) > 1 else "?")
    sensor = reading.get("sensor")
    if not sensor:
        source = data.get("topic")
        sensor = (source if isinstance(source, str) else topic).rsplit("/", 1)[-1]
    ts = _seconds(reading.get("timestamp", reading.get("epochMillis", reading.get("ts"))), now)
    value = _number(data.get("value", reading.get("value")))
    if "alert" in data:
        return Alert("threshold", str(machine), str(sensor), value, ts, str(data["alert"]), topic,
                     limit=_number(data.get("limit")))
    model, version = _version(data.get("inference"))
    if version is None:
        version_field = data.get("model-version", data.get("model_version"))
        if isinstance(version_field, int) and not isinstance(version_field, bool):
            version = version_field
    return Alert("anomaly", str(machine), str(sensor), value, ts, "anomaly", topic,
                 model=model, version=version)


@dataclass
class Series:
    """One chart: a machine's sensor."""

    sid: str
    group: str
    machine: str
    sensor: str
    unit: str
    device: str
    points: deque[tuple[float, float]]
    limit_above: float | None = None
    limit_below: float | None = None
    topic: str = ""

    def meta(self) -> dict[str, Any]:
        return {"sid": self.sid, "group": self.group, "machine": self.machine,
                "sensor": self.sensor, "unit": self.unit, "device": self.device,
                "above": self.limit_above, "below": self.limit_below, "topic": self.topic}


@dataclass
class _Topic:
    topic: str
    alert: bool
    count: int = 0
    retained: bool = False
    last: bytes = b""  # the whole last payload; cut to PAYLOAD_PREVIEW when shown
    last_at: float = 0.0
    tokens: float = MAX_PENDING  # chart points it may keep now (refilled with time)
    filled_at: float = 0.0  # the view's clock at the last refill
    pending: list[bytes] = field(default_factory=list)
    # Set at ticks:
    rate: float = 0.0
    counted: int = 0
    changed: bool = True


class UnsView:
    """Live state of the topics the dashboard subscribes to (module docstring)."""

    def __init__(self, *, alert_filters: list[str] | None = None,
                 limits: dict[str, tuple[float | None, float | None]] | None = None,
                 history: int = 300, points_per_second: float = 10.0,
                 max_topics: int = 20000, clock: Any = time.monotonic) -> None:
        self.alert_filters = list(alert_filters or [])
        self.limits = dict(limits or {})
        self.history = history
        self.points_per_second = points_per_second
        self.max_topics = max_topics
        self.topics: dict[str, _Topic] = {}
        self.series: dict[str, Series] = {}
        self.alerts: deque[dict[str, Any]] = deque(maxlen=MAX_ALERTS)
        self.alerts_total = 0
        self.alerts_skipped = 0
        self.untracked = 0
        self.messages = 0
        self.sampling = 1.0  # share of the time the sensor topics are subscribed
        self.redelivered = 0  # retained messages sent again at a resubscription
        self._pending_alerts: deque[tuple[str, bytes]] = deque(maxlen=MAX_ALERTS_PER_TICK)
        self._lock = threading.Lock()
        self._clock = clock
        self._last_tick = clock()

    # --- the feed ---------------------------------------------------------------

    def ingest(self, topic: str, payload: bytes, retain: bool) -> None:
        """Note one message (cheap; may be called from another thread)."""
        with self._lock:
            self._ingest(topic, payload, retain, time.time(), self._clock())

    def ingest_batch(self, messages: Iterable[Any]) -> None:
        """Note a batch of :class:`~unsflow.message.Message` (one lock, one clock read)."""
        now, mono = time.time(), self._clock()
        with self._lock:
            add = self._ingest
            for m in messages:
                add(m.topic, m.payload, m.retain, now, mono)

    def _ingest(self, topic: str, payload: bytes, retain: bool, now: float,
                mono: float) -> None:
        self.messages += 1
        entry = self.topics.get(topic)
        if entry is None:
            if len(self.topics) >= self.max_topics:
                self.untracked += 1
                return
            alert = any(matches(f, topic) for f in self.alert_filters)
            entry = self.topics[topic] = _Topic(topic, alert, filled_at=mono)
        if retain and entry.count and self.sampling < 1.0 and payload == entry.last:
            self.redelivered += 1  # the broker sent its retained message again (resubscribed)
            return
        entry.count += 1
        entry.retained = retain
        entry.last = payload
        entry.last_at = now
        entry.changed = True
        if entry.alert:
            if len(self._pending_alerts) == self._pending_alerts.maxlen:
                self.alerts_skipped += 1
            self._pending_alerts.append((topic, payload))
            self.alerts_total += 1
            return
        tokens = min(float(MAX_PENDING),
                     entry.tokens + (mono - entry.filled_at) * self.points_per_second)
        entry.filled_at = mono
        if tokens >= 1.0 and len(entry.pending) < MAX_PENDING:
            tokens -= 1.0
            entry.pending.append(payload)
        entry.tokens = tokens

    # --- the event loop --------------------------------------------------------

    def tick(self) -> dict[str, Any]:
        """Parse what arrived since the last tick; return ``{"points", "new_series", "alerts",
        "topics"}`` (changed topics' names)."""
        now_mono = self._clock()
        elapsed = max(now_mono - self._last_tick, 1e-3)
        self._last_tick = now_mono
        now = time.time()
        with self._lock:
            work: list[tuple[_Topic, list[bytes]]] = []
            changed: list[str] = []
            for entry in self.topics.values():
                if entry.pending:
                    work.append((entry, entry.pending))
                    entry.pending = []
                delta = entry.count - entry.counted
                entry.counted = entry.count
                if self.sampling >= 1.0 or entry.alert:
                    entry.rate = 0.5 * entry.rate + 0.5 * (delta / elapsed) if entry.rate \
                        else delta / elapsed
                if entry.changed:
                    changed.append(entry.topic)
                    entry.changed = False
            alerts = list(self._pending_alerts)
            self._pending_alerts.clear()
        points: dict[str, list[list[float]]] = {}
        new_series: list[dict[str, Any]] = []
        for entry, payloads in work:
            for payload in payloads:
                reading = parse_reading(entry.topic, payload, now)
                if reading is None:
                    continue
                series = self._series(entry.topic, reading, new_series)
                point = (reading.ts, reading.value)
                series.points.append(point)
                points.setdefault(series.sid, []).append([point[0], point[1]])
        new_alerts = []
        for topic, payload in alerts:
            alert = parse_alert(topic, payload, now)
            if alert is not None:
                record = alert.to_json()
                self.alerts.appendleft(record)
                new_alerts.append(record)
        return {"points": points, "new_series": new_series, "alerts": new_alerts,
                "topics": changed}

    def _series(self, topic: str, reading: Reading, new: list[dict[str, Any]]) -> Series:
        sid = f"{reading.group}|{reading.machine}|{reading.sensor}"
        series = self.series.get(sid)
        if series is None:
            above, below = self.limits.get(reading.sensor, (None, None))
            series = self.series[sid] = Series(
                sid, reading.group, reading.machine, reading.sensor, reading.unit, reading.device,
                deque(maxlen=self.history), above, below, topic)
            new.append(series.meta())
        elif reading.unit and not series.unit:
            series.unit = reading.unit
        return series

    # --- snapshots for a page that just opened ----------------------------------

    def line_snapshot(self) -> dict[str, Any]:
        return {"series": [{**s.meta(), "points": [list(p) for p in s.points]}
                           for s in self.series.values()],
                "alerts": list(self.alerts), "alerts_total": self.alerts_total}

    def sample_start(self) -> dict[str, int]:
        """The message count of every topic, at the start of a subscribed window."""
        with self._lock:
            return {t: e.count for t, e in self.topics.items() if not e.alert}

    def sample_end(self, start: dict[str, int], seconds: float) -> float:
        """Set the topics' rates from a subscribed window; return the window's total rate."""
        total = 0
        with self._lock:
            for topic, entry in self.topics.items():
                if entry.alert:
                    continue
                delta = entry.count - start.get(topic, 0)
                total += delta
                entry.rate = delta / seconds if seconds > 0 else 0.0
        return total / seconds if seconds > 0 else 0.0

    def rate_of(self, topic_filter: str) -> float:
        """Messages per second (at the last tick) of the topics matching ``topic_filter``."""
        with self._lock:
            return sum(e.rate for e in self.topics.values() if matches(topic_filter, e.topic))

    def topic_rows(self, names: list[str] | None = None, text: str = "",
                   limit: int = 2000) -> list[dict[str, Any]]:
        """Explorer rows (all topics, or ``names``) whose topic contains ``text``."""
        rows = []
        needle = text.lower()
        with self._lock:
            entries = (self.topics[n] for n in names if n in self.topics) if names is not None \
                else iter(self.topics.values())
            for entry in entries:
                if needle and needle not in entry.topic.lower():
                    continue
                rows.append((entry.topic, entry.count, entry.rate, entry.retained,
                             entry.last[:PAYLOAD_PREVIEW], len(entry.last), entry.last_at,
                             entry.alert))
                if len(rows) >= limit:
                    break
        return [{"topic": t, "count": c, "rate": round(r, 2), "retained": ret,
                 "payload": last.decode("utf-8", "replace"), "size": size, "last": at,
                 "alert": alert}
                for t, c, r, ret, last, size, at, alert in rows]
