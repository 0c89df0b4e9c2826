"""bench/pacing_stalls.py: which late frame intervals of a pacing run a machine stall overlapped."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import pacing_stalls as ps  # noqa: E402


def test_an_interval_overlaps_a_stall_that_falls_anywhere_inside_its_longest_span() -> None:
    # Three intervals ending at 1.00, 2.00 and 3.00 s; the second was 15 ms late, so it
    # began at most 35 ms before its end.
    ends = np.array([1.0, 2.0, 3.0])
    errors = np.array([0.5, 15.0, 0.5])
    stalls = [(1.965, 1.970), (2.9900, 3.0005)]
    assert ps.overlaps_stall(ends, errors, stalls).tolist() == [False, True, True]
    # A stall that ended before the interval began, or started after it ended, does not count.
    assert ps.overlaps_stall(ends, errors, [(1.90, 1.96), (3.001, 3.01)]).tolist() == [False, False, False]
    assert ps.overlaps_stall(ends, errors, []).tolist() == [False, False, False]


def test_the_report_counts_late_intervals_in_stalls_and_the_p99_outside_them() -> None:
    ends = np.arange(1, 201) * 0.02 + 10.0  # 200 intervals, one per period
    errors = np.full(200, 0.2)
    errors[[50, 120]] = 18.0  # two late ones...
    stall_at = ends[50] - 0.010
    stalls = [(stall_at, stall_at + 0.012), (0.0, 0.5)]  # ...one inside a stall; one stall outside the window
    report = ps.stall_report(ends, errors, stalls, window=(10.0, 14.1))
    assert report["count"] == 1 and report["total_ms"] == pytest.approx(12.0)
    assert report["late_intervals"] == 2 and report["late_intervals_in_stall"] == 1
    assert 1 <= report["intervals_in_stall"] <= 2  # the late one, and perhaps the one after it
    # Over the intervals no stall touched, the one late interval left is above p99 of 198-199.
    assert report["p99_outside_stalls_ms"] == pytest.approx(0.2, abs=0.2)
    assert ps.stall_report(ends, errors, [], window=(10.0, 14.1))["late_intervals_in_stall"] == 0
