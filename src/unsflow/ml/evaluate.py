"""Scores of a detector on held-out windows: precision, recall, F1, detection delay.

- Window level: a window is positive when its newest reading is anomalous;
  precision, recall and F1 of the positive class.
- Event level: an *event* is a run of consecutive anomalous readings of one
  key (a spike is an event of one reading; a drift is one long event). Its
  detection delay is the number of readings (and seconds) from its first
  reading to the first window that ends inside the event and is predicted
  positive; an event without such a window is missed. Only events whose first
  reading ends a test window count (an event that started before the test
  period has no onset to measure from).
- Per kind (``spike``, ``drift``, ``stuck``, ``labelled``): window recall and
  event detection, so that drift, which a spike threshold cannot catch, is
  reported on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from unsflow.ml.features import Readings, Windows

__all__ = ["scores"]


def _prf(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    tp = int(np.sum((y == 1) & (p == 1)))
    fp = int(np.sum((y == 0) & (p == 1)))
    fn = int(np.sum((y == 1) & (p == 0)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
            "true-positives": tp, "false-positives": fp, "false-negatives": fn}


def _events(windows: Windows, readings: Sequence[Readings], predicted: np.ndarray,
            kind: str | None = None) -> list[dict[str, Any]]:
    """Events with an onset in ``windows``: delay in readings and seconds (None: missed).

    With ``kind``, an event is a run of readings of that kind, and only a
    positive window ending at a reading of that kind counts as its detection,
    except at a spike reading (a spike flagged during a drift does not detect
    the drift).
    """
    flagged: dict[tuple[int, int], int] = {}
    for k, pos, p in zip(windows.key.tolist(), windows.position.tolist(), predicted.tolist(),
                         strict=True):
        flagged[(k, pos)] = p
    events = []
    for k in sorted(set(windows.key.tolist())):
        r = readings[k]
        if kind is None:
            member = [lab == 1 for lab in r.labels.tolist()]
            counts = member
        else:
            member = [kind in ks for ks in r.kinds]
            # a positive at a spike reading says "spike", not "drift has been seen"
            counts = [kind in ks and (kind == "spike" or "spike" not in ks) for ks in r.kinds]
        pos, n = 0, len(member)
        while pos < n:
            if not member[pos]:
                pos += 1
                continue
            start = pos
            while pos < n and member[pos]:
                pos += 1
            if (k, start) not in flagged:
                continue  # onset outside the test windows
            hit = next((j for j in range(start, pos)
                        if counts[j] and flagged.get((k, j)) == 1), None)
            events.append({
                "length": pos - start,
                "delay-readings": None if hit is None else hit - start,
                "delay-seconds": None if hit is None else
                round(float(r.times[hit] - r.times[start]) / 1000, 3)})
    return events


def _delay_summary(events: list[dict[str, Any]]) -> dict[str, Any]:
    hits = [e for e in events if e["delay-readings"] is not None]
    out: dict[str, Any] = {"events": len(events), "events-detected": len(hits)}
    if hits:
        readings = np.array([e["delay-readings"] for e in hits], dtype=float)
        seconds = np.array([e["delay-seconds"] for e in hits], dtype=float)
        out.update({"mean-readings": round(float(readings.mean()), 3),
                    "median-readings": float(np.median(readings)),
                    "max-readings": int(readings.max()),
                    "mean-seconds": round(float(seconds.mean()), 3),
                    "median-seconds": round(float(np.median(seconds)), 3)})
    return out


def scores(windows: Windows, readings: Sequence[Readings],
           predicted: np.ndarray) -> dict[str, Any]:
    """Window and event scores of ``predicted`` (0/1 per window) against the windows' labels."""
    predicted = np.asarray(predicted).astype(np.int8)
    y = windows.y.astype(np.int8)
    out = _prf(y, predicted)
    out["windows"] = len(y)
    out["positive-windows"] = int(y.sum())
    events = _events(windows, readings, predicted)
    out["detection-delay"] = _delay_summary(events)
    kinds = sorted({k for ks in windows.kinds for k in ks})
    by_kind: dict[str, Any] = {}
    for kind in kinds:
        mask = np.array([kind in ks for ks in windows.kinds])
        tp = int(np.sum(predicted[mask] == 1))
        by_kind[kind] = {"windows": int(mask.sum()), "recall": round(tp / int(mask.sum()), 4),
                         "detection-delay": _delay_summary(
                             _events(windows, readings, predicted, kind))}
    out["by-kind"] = by_kind
    return out
