"""Tells a late packet the engine caused from a stall of the whole machine.

The lab runs on a small virtual machine whose vCPUs the host sometimes takes away
for 10-40 ms. While that happens nothing in the guest runs, whatever its real-time
priority: Asterisk, the engine and sipp all stop together, and the caller sees a
gap that no code of ours could have avoided. Measured here on 2026-11-25: a probe
at SCHED_RR 20 (above Asterisk) stalled 16.6 ms at the same instant as a 33.5 ms
gap in the caller's RTP.

The witness is a tiny process at the highest SCHED_FIFO priority that wakes every
2 ms and reports each wake-up that came more than 3 ms late. Nothing inside the
guest can delay it, so each report is a stall of the machine itself. A timing test
then fails only on the gaps that no stall explains (``judge``): a blocked event
loop, a pacer that bursts or a slow tick is still caught. A stall excuses at most
the stalled time inside the gap plus one slack of 5 ms, and never more than
``MAX_EXCUSED_MS`` in one gap; ``judge`` also counts how many gaps were excused, so
a run that leaned on the witness says so.

Run as a script it is the witness process: it prints ``<start> <end>`` (epoch
seconds) per stall, flushed, until it is terminated.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Self

WAKE_PERIOD_S = 0.002
STALL_THRESHOLD_S = 0.003
WITNESS_PRIORITY = 90  # SCHED_FIFO; the lab Asterisk runs at 10, the engine at 5
# Lateness a gap may have beyond the stalled time inside it: the engine's tick and
# Asterisk's forwarding run just after the machine resumes, not at the same instant.
DEFAULT_SLACK_MS = 5.0
# The most lateness a stall may excuse in one gap. The lab's host stalls measured
# 15-40 ms; a longer hole is heard by the caller whatever its cause, so it fails.
MAX_EXCUSED_MS = 50.0


@dataclasses.dataclass(frozen=True, slots=True)
class Stall:
    """The witness should have woken at ``start`` and woke at ``end`` (epoch s)."""

    start: float
    end: float

    @property
    def duration_ms(self) -> float:
        return (self.end - self.start) * 1000.0


@dataclasses.dataclass(frozen=True, slots=True)
class Gap:
    """Two consecutive packets further apart than the limit."""

    index: int  # of the later packet
    start: float
    end: float
    explained_by_ms: float  # lateness the machine's stalls inside the gap may excuse (capped)

    @property
    def delta_ms(self) -> float:
        return (self.end - self.start) * 1000.0


@dataclasses.dataclass(frozen=True, slots=True)
class PacingVerdict:
    """Every gap over the limit, split into the ones machine stalls excuse and the rest."""

    limit_ms: float
    excused: list[Gap]
    unexplained: list[Gap]
    stalls: int  # stalls the witness recorded during the run

    def describe(self) -> str:
        return (f"{len(self.excused)} gap(s) over {self.limit_ms:g} ms excused by machine stalls, "
                f"{len(self.unexplained)} unexplained ({self.stalls} stall(s) recorded)")


def gaps(
    arrivals: Sequence[float],
    stalls: Sequence[Stall],
    *,
    limit_ms: float = 25.0,
    max_excused_ms: float = MAX_EXCUSED_MS,
) -> list[Gap]:
    """Every inter-arrival gap over ``limit_ms``, with how much lateness stalls may excuse.

    A stall counts for the part of it inside the gap. Its reported start is moved one
    wake period earlier, because the witness notices a stall only at its next due
    wake-up; nothing else widens the gap (the slack is applied once, by the judge).
    What stalls excuse in one gap is capped at ``max_excused_ms``.
    """
    found = []
    for i in range(1, len(arrivals)):
        a, b = arrivals[i - 1], arrivals[i]
        if (b - a) * 1000.0 <= limit_ms:
            continue
        stalled = sum(max(0.0, min(b, s.end) - max(a, s.start - WAKE_PERIOD_S)) for s in stalls)
        found.append(Gap(index=i, start=a, end=b, explained_by_ms=min(stalled * 1000.0, max_excused_ms)))
    return found


def judge(
    arrivals: Sequence[float],
    stalls: Sequence[Stall],
    *,
    period_ms: float = 20.0,
    limit_ms: float = 25.0,
    slack_ms: float = DEFAULT_SLACK_MS,
    max_excused_ms: float = MAX_EXCUSED_MS,
) -> PacingVerdict:
    """A gap is excused when its lateness (gap minus one period) is at most what the
    stalls inside it excuse plus ``slack_ms``; every other gap over the limit is not."""
    excused, unexplained = [], []
    for g in gaps(arrivals, stalls, limit_ms=limit_ms, max_excused_ms=max_excused_ms):
        late_ms = g.delta_ms - period_ms
        (excused if late_ms <= g.explained_by_ms + slack_ms else unexplained).append(g)
    return PacingVerdict(limit_ms=limit_ms, excused=excused, unexplained=unexplained, stalls=len(stalls))


def unexplained_gaps(
    arrivals: Sequence[float],
    stalls: Sequence[Stall],
    *,
    period_ms: float = 20.0,
    limit_ms: float = 25.0,
    slack_ms: float = DEFAULT_SLACK_MS,
    max_excused_ms: float = MAX_EXCUSED_MS,
) -> list[Gap]:
    """The gaps over ``limit_ms`` that no machine stall excuses (see ``judge``)."""
    return judge(arrivals, stalls, period_ms=period_ms, limit_ms=limit_ms, slack_ms=slack_ms,
                 max_excused_ms=max_excused_ms).unexplained


class StallWitness:
    """The witness process, started on enter; ``stalls`` grows while it runs.

    Needs root (SCHED_FIFO); without it the witness refuses to start rather than
    run at a priority where its reports would mean nothing.
    """

    def __init__(self) -> None:
        self._stalls: list[Stall] = []
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> Self:
        self._proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        ready = self._proc.stdout.readline() if self._proc.stdout else ""
        if ready.strip() != "ready":
            self._proc.wait(5)
            err = self._proc.stderr.read() if self._proc.stderr else ""
            raise RuntimeError(f"stall witness did not start: {ready.strip() or err.strip()}")
        self._reader = threading.Thread(target=self._read, daemon=True, name="stall-witness")
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            start, end = (float(x) for x in line.split())
            with self._lock:
                self._stalls.append(Stall(start, end))

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def stalls(self) -> list[Stall]:
        with self._lock:
            return list(self._stalls)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(5)
        if self._reader is not None:
            self._reader.join(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _watch() -> None:
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(WITNESS_PRIORITY))
    print("ready", flush=True)
    due = time.monotonic() + WAKE_PERIOD_S
    while True:
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        now = time.monotonic()
        late = now - due
        if late > STALL_THRESHOLD_S:
            wall = time.time()
            print(f"{wall - late:.6f} {wall:.6f}", flush=True)
            due = now  # start the grid again after a stall instead of counting each slot
        due += WAKE_PERIOD_S


if __name__ == "__main__":
    try:
        _watch()
    except KeyboardInterrupt:
        pass
    except PermissionError as exc:
        print(f"needs root for SCHED_FIFO priority {WITNESS_PRIORITY}: {exc}", file=sys.stderr)
        sys.exit(2)
