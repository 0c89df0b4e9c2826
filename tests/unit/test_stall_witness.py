"""The lab's rule for which caller-side gaps a machine stall excuses (lab/stallwitness.py)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "lab"))

from stallwitness import Stall, gaps, unexplained_gaps


def _paced(n: int, t0: float = 1000.0, late: dict[int, float] | None = None) -> list[float]:
    """Arrival times of n packets 20 ms apart; ``late`` shifts packet i (and all after it)."""
    shift, out = 0.0, []
    for i in range(n):
        shift += (late or {}).get(i, 0.0)
        out.append(t0 + i * 0.020 + shift)
    return out


def test_steady_stream_has_no_gaps():
    assert gaps(_paced(100), []) == []


def test_gap_with_no_stall_is_unexplained():
    arrivals = _paced(100, late={50: 0.018})
    found = unexplained_gaps(arrivals, [])
    assert [g.index for g in found] == [50]
    assert round(found[0].delta_ms) == 38


def test_gap_inside_a_machine_stall_is_explained():
    arrivals = _paced(100, late={50: 0.018})
    a, b = arrivals[49], arrivals[50]
    stall = Stall(start=a + 0.004, end=b - 0.002)  # the machine stood still for 32 ms of it
    assert unexplained_gaps(arrivals, [stall]) == []
    assert gaps(arrivals, [stall])[0].explained_by_ms > 30


def test_short_stall_does_not_excuse_a_longer_gap():
    arrivals = _paced(100, late={50: 0.040})  # 60 ms gap: 40 ms late
    a = arrivals[49]
    stall = Stall(start=a + 0.010, end=a + 0.020)  # only 10 ms of it
    found = unexplained_gaps(arrivals, [stall])
    assert [g.index for g in found] == [50]


def test_stall_elsewhere_does_not_excuse_a_gap():
    arrivals = _paced(100, late={50: 0.018})
    far = Stall(start=arrivals[10], end=arrivals[10] + 0.030)
    assert [g.index for g in unexplained_gaps(arrivals, [far])] == [50]


def test_stall_just_before_the_gap_counts_within_slack():
    arrivals = _paced(100, late={50: 0.012})  # 32 ms gap, 12 ms late
    a = arrivals[49]
    stall = Stall(start=a - 0.010, end=a + 0.003)  # began before the earlier packet left
    assert unexplained_gaps(arrivals, [stall]) == []


def test_burst_after_a_gap_is_judged_by_the_gap_only():
    arrivals = _paced(10)
    arrivals[5] += 0.015  # 35 ms then 5 ms: a late packet, not a lost slot
    assert [g.index for g in unexplained_gaps(arrivals, [])] == [5]
