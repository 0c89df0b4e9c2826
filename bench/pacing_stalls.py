"""Which late frames of a pacing run fell into a stall of the whole machine.

On a shared virtual machine the host sometimes takes the vCPUs away for 10-40 ms;
nothing in the guest runs then, the engine included. ``lab/stallwitness.py`` (a
SCHED_FIFO 90 process waking every 2 ms) reports those stalls. This module lays
them over the frame intervals a pacing run measured and says how many of the late
intervals a stall overlapped, and what the send p99 is over the intervals no stall
touched.

That second number is a diagnosis, not the goal row: the targets are judged on
every interval (``timing_agent``). Beside it, it tells a tail the host caused from
one the engine caused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

PERIOD_S = 0.020
LATE_MS = 5.0  # the report's own threshold for "an interval over 5 ms"


def stalls_in_window(stalls: Sequence[tuple[float, float]], start: float, end: float) -> list[tuple[float, float]]:
    """The stalls (``(start, end)`` on the intervals' clock) overlapping ``[start, end]``, sorted."""
    return sorted((a, b) for a, b in stalls if b > start and a < end)


def overlaps_stall(ends: np.ndarray, errors_ms: np.ndarray, stalls: Sequence[tuple[float, float]]) -> np.ndarray:
    """For each interval (it ended at ``ends[i]``, its error was ``errors_ms[i]``), whether
    a stall overlapped it. An interval is taken to span one period plus its error
    before its end: the longest it can have been. ``stalls`` must be sorted and
    must not overlap each other (the witness's are)."""
    if not len(stalls) or not ends.size:
        return np.zeros(ends.shape, dtype=bool)
    starts = np.array([a for a, _ in stalls])
    stall_ends = np.array([b for _, b in stalls])
    begins = ends - PERIOD_S - errors_ms / 1000.0
    # the last stall starting before the interval's end; it overlaps if it ends after the interval began
    idx = np.searchsorted(starts, ends, side="left") - 1
    found = idx >= 0
    result = np.zeros(ends.shape, dtype=bool)
    result[found] = stall_ends[idx[found]] > begins[found]
    return result


def stall_report(
    ends: np.ndarray, errors_ms: np.ndarray, stalls: Sequence[tuple[float, float]], window: tuple[float, float]
) -> dict[str, Any]:
    """The machine stalls of the window and what they overlapped (see the module docstring)."""
    inside = stalls_in_window(stalls, *window)
    hit = overlaps_stall(ends, errors_ms, inside)
    late = errors_ms > LATE_MS
    clean = errors_ms[~hit]
    durations = [(b - a) * 1000.0 for a, b in inside]
    return {
        "available": True,
        "count": len(inside),
        "total_ms": round(sum(durations), 1),
        "max_ms": round(max(durations), 1) if durations else 0.0,
        "intervals": int(errors_ms.size),
        "intervals_in_stall": int(hit.sum()),
        "late_intervals": int(late.sum()),
        "late_intervals_in_stall": int((late & hit).sum()),
        "p99_outside_stalls_ms": round(float(np.percentile(clean, 99)), 2) if clean.size else None,
    }
