"""Sensor history from the data lake, ground truth, and windowed features for training.

The lake is what the ``s3`` target writes (Hive-partitioned Parquet, read back
with :func:`~unsflow.lake.open_lake_url`), on local disk or an
object store. Each row is one reading. Three row shapes are recognised
without options:

- the simulator's ``uns`` style: ``machine``, ``sensor``, ``value``, ``timestamp``;
- the Red Hat (MANUela) CSV style after ``parse``: ``machineId``, ``deviceId``,
  ``value``, ``epochMillis``; the sensor is the last level of ``_topic``
  (``iot-sensor/sw/vibration``);
- anything else with ``--value-field``, ``--time-field`` and ``--key-fields``.

A *window* is a key's ``size`` consecutive readings, oldest first, exactly as
the ``window`` processor emits them at run time; its label is the label of its
newest reading (the MANUela notebook's "episodes"). Times are epoch
milliseconds.

Ground truth is joined by (machine, sensor, time) from the simulator's JSON
lines (``anomalies`` gives the kind: spike, drift, stuck) or by (id, time)
from a CSV with ``ts,id,...,label`` columns, as the MANUela recording has; a
``label`` column in the lake itself is used as well.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from unsflow.errors import LakeError, TrainingDataError

__all__ = ["GroundTruth", "LakeSpec", "Readings", "Windows", "load_ground_truth",
           "read_lake", "split_by_time", "windows_of"]


@dataclass(frozen=True)
class LakeSpec:
    """Which columns of the lake hold the readings; None: recognise the row shape."""

    value_field: str | None = None
    time_field: str | None = None
    key_fields: tuple[str, ...] | None = None
    sensor: str | None = "vibration"  # keep only this sensor (None: all)


@dataclass
class Readings:
    """One key's readings sorted by time (duplicates of a time removed; the last wins)."""

    key: tuple[str, ...]
    machine: str
    device: str | None
    sensor: str | None
    times: np.ndarray  # int64 epoch ms
    values: np.ndarray  # float64
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
    kinds: list[tuple[str, ...]] = field(default_factory=list)


def _lake_table(url: str, options: dict[str, str]) -> Any:
    from unsflow.lake.reader import open_lake_url

    try:
        return open_lake_url(url, options).to_table()
    except LakeError as exc:
        raise TrainingDataError(str(exc)) from exc


def _millis(column: Sequence[Any], name: str) -> np.ndarray:
    out = np.empty(len(column), dtype=np.int64)
    for i, v in enumerate(column):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[i] = int(v)
        elif isinstance(v, str):
            try:
                out[i] = int(float(v))
            except ValueError:
                try:
                    out[i] = int(datetime.fromisoformat(v)
                                 .timestamp() * 1000)
                except ValueError:
                    raise TrainingDataError(f"time field {name!r}: {v!r} is neither epoch "
                                            "milliseconds nor ISO 8601") from None
        elif isinstance(v, datetime):
            out[i] = int(v.timestamp() * 1000)
        else:
            out[i] = -1
    return out


def read_lake(url: str, spec: LakeSpec | None = None,
              options: dict[str, str] | None = None) -> tuple[list[Readings], dict[str, Any]]:
    """The lake's readings per key, and a description of what was read (for metadata)."""
    spec = spec or LakeSpec()
    table = _lake_table(url, dict(options or {}))
    cols = set(table.column_names)
    if spec.time_field or spec.key_fields or spec.value_field:
        value_f = spec.value_field or "value"
        time_f = spec.time_field or ("epochMillis" if "epochMillis" in cols else "timestamp")
        key_f = spec.key_fields or (("machineId", "deviceId") if "machineId" in cols
                                    else ("machine", "sensor"))
        style = "custom"
    elif {"machineId", "deviceId", "epochMillis"} <= cols:
        value_f, time_f, key_f, style = "value", "epochMillis", ("machineId", "deviceId"), "redhat"
    elif {"machine", "sensor", "timestamp"} <= cols:
        value_f, time_f, key_f, style = "value", "timestamp", ("machine", "sensor"), "uns"
    else:
        raise TrainingDataError(
            f"data lake {url}: cannot tell the row shape from its columns "
            f"{sorted(cols)}; give --value-field, --time-field and --key-fields")
    missing = [c for c in (value_f, time_f, *key_f) if c not in cols]
    if missing:
        raise TrainingDataError(f"data lake {url}: no column(s) {missing}; columns are "
                                f"{sorted(cols)}")
    data = table.to_pydict()
    n = table.num_rows
    topics = data.get("_topic", [None] * n)
    sensors = data["sensor"] if "sensor" in data else [
        t.rsplit("/", 1)[-1] if isinstance(t, str) else None for t in topics]
    times = _millis(data[time_f], time_f)
    lake_labels = data.get("label")
    groups: dict[tuple[str, ...], list[int]] = {}
    skipped = 0
    for i in range(n):
        v = data[value_f][i]
        if spec.sensor is not None and sensors[i] != spec.sensor:
            continue
        if isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                v = None
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not np.isfinite(v) \
                or times[i] < 0:
            skipped += 1
            continue
        key = tuple(str(data[k][i]) for k in key_f)
        if style == "redhat":
            key = (*key, str(sensors[i]))
        groups.setdefault(key, []).append(i)
    if not groups:
        raise TrainingDataError(f"data lake {url}: no readings"
                                + (f" of sensor {spec.sensor!r}" if spec.sensor else "")
                                + f" among {n} rows")
    out = []
    for key, rows in sorted(groups.items()):
        idx = np.array(rows)
        t = times[idx]
        vals = np.array([float(data[value_f][i]) for i in rows])
        order = np.argsort(t, kind="stable")
        t, vals, idx = t[order], vals[order], idx[order]
        keep = np.append(t[1:] != t[:-1], True)  # the last of equal times wins
        t, vals, idx = t[keep], vals[keep], idx[keep]
        r0 = rows[0]
        machine = str(data["machineId"][r0] if "machineId" in data else
                      data["machine"][r0] if "machine" in data else key[0])
        device = str(data["deviceId"][r0]) if "deviceId" in data else None
        sensor = sensors[r0]
        labels = np.zeros(len(t), np.int8)
        if lake_labels is not None:
            labels = np.array([int(float(lake_labels[i] or 0)) for i in idx], np.int8)
        out.append(Readings(key, machine, device, sensor, t, vals, labels,
                            [("labelled",) if x else () for x in labels]))
    info = {"lake": url, "style": style, "rows": n, "readings": int(sum(len(r.times) for r in out)),
            "skipped-rows": skipped, "value-field": value_f, "time-field": time_f,
            "key-fields": list(key_f), "sensor": spec.sensor, "keys": len(out)}
    return out, info


@dataclass
class GroundTruth:
    """Anomalous readings: (machine, sensor, ms) and (id, ms) -> anomaly kinds."""

    by_machine_sensor: dict[tuple[str, str, int], tuple[str, ...]] = field(default_factory=dict)
    by_id: dict[tuple[str, int], tuple[str, ...]] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.by_machine_sensor) + len(self.by_id)

    def apply(self, readings: Iterable[Readings]) -> int:
        """Label ``readings`` in place; returns how many readings were found anomalous."""
        found = 0
        for r in readings:
            for j, t in enumerate(r.times.tolist()):
                kinds = self.by_machine_sensor.get((r.machine, str(r.sensor), t)) \
                    or (self.by_id.get((r.device, t)) if r.device is not None else None) \
                    or self.by_id.get((r.machine, t))
                if kinds:
                    r.labels[j] = 1
                    r.kinds[j] = tuple(sorted(set(r.kinds[j]) | set(kinds)))
                    found += 1
        return found


def load_ground_truth(paths: Iterable[str]) -> GroundTruth:
    """Simulator JSON lines (``.jsonl``/``.json``) or a CSV with ts, id and label columns."""
    truth = GroundTruth()
    for path in paths:
        truth.sources.append(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise TrainingDataError(f"ground truth {path}: {exc}") from exc
        first = text.lstrip()[:1]
        if first in ("{", ""):
            for n, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    e = orjson.loads(line)
                    if e.get("value") is None:
                        continue  # a dropout: no reading to label
                    truth.by_machine_sensor[(str(e["machine"]), str(e["sensor"]),
                                             int(e["timestamp"]))] = tuple(e["anomalies"])
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                    raise TrainingDataError(f"ground truth {path} line {n}: expected the "
                                            f"simulator's JSON object ({exc})") from None
            continue
        rows = csv.DictReader(text.splitlines())
        names = {c.strip() for c in rows.fieldnames or ()}
        time_col = next((c for c in ("ts", "timestamp", "epochMillis") if c in names), None)
        id_col = next((c for c in ("id", "deviceId", "machine", "machineId") if c in names), None)
        if time_col is None or id_col is None or "label" not in names:
            raise TrainingDataError(f"ground truth {path}: a CSV needs a time column (ts), an "
                                    f"id column (id) and label; found {sorted(names)}")
        for n, row in enumerate(rows, 2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
            try:
                if int(float(row["label"])):
                    truth.by_id[(row[id_col], int(float(row[time_col])))] = ("labelled",)
            except ValueError:
                raise TrainingDataError(f"ground truth {path} line {n}: label and "
                                        f"{time_col} must be numbers") from None
    return truth


@dataclass
class Windows:
    """Windows of ``size`` readings (rows of ``x``, oldest first) with what they came from."""

    x: np.ndarray  # [n, size] float32
    y: np.ndarray  # [n] int8: label of the newest reading
    times: np.ndarray  # [n] int64: time of the newest reading
    first_times: np.ndarray  # [n] int64: time of the oldest reading
    key: np.ndarray  # [n] int: index of the key in the readings list
    position: np.ndarray  # [n] int: index of the newest reading in its key's readings
    kinds: list[tuple[str, ...]]

    def __len__(self) -> int:
        return len(self.y)

    def take(self, mask: np.ndarray) -> Windows:
        idx = np.flatnonzero(mask)
        return Windows(self.x[idx], self.y[idx], self.times[idx], self.first_times[idx],
                       self.key[idx], self.position[idx], [self.kinds[i] for i in idx])


def windows_of(readings: Sequence[Readings], size: int) -> Windows:
    """Every full window of every key, as the ``window`` processor would emit them."""
    xs, ys, ts, fs, ks, ps, kinds = [], [], [], [], [], [], []
    for k, r in enumerate(readings):
        n = len(r.values)
        if n < size:
            continue
        view = np.lib.stride_tricks.sliding_window_view(r.values, size)
        xs.append(view)
        ys.append(r.labels[size - 1:])
        ts.append(r.times[size - 1:])
        fs.append(r.times[:n - size + 1])
        ks.append(np.full(n - size + 1, k))
        ps.append(np.arange(size - 1, n))
        kinds.extend(r.kinds[size - 1:])
    if not xs:
        raise TrainingDataError(f"no key has {size} readings: no window to learn from")
    return Windows(np.concatenate(xs).astype(np.float32), np.concatenate(ys),
                   np.concatenate(ts), np.concatenate(fs), np.concatenate(ks),
                   np.concatenate(ps), kinds)


def split_by_time(windows: Windows, readings: Sequence[Readings],
                  train_fraction: float) -> tuple[Windows, Windows, int]:
    """Train on windows that end before the cut, test on windows that start at or after it.

    The cut is the time below which ``train_fraction`` of all readings lie. A
    window that spans the cut is in neither set, so no reading of the test
    period is seen in training.
    """
    if not 0 < train_fraction < 1:
        raise ValueError("train fraction must be between 0 and 1")
    all_times = np.concatenate([r.times for r in readings])
    cut = int(np.quantile(all_times, train_fraction))
    train = windows.take(windows.times < cut)
    test = windows.take(windows.first_times >= cut)
    return train, test, cut
