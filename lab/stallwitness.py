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
then fails only on the gaps that no stall explains (``unexplained_gaps``): a
blocked event loop, a pacer that bursts or a slow tick is still caught.

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
    explained_by_ms: float  # stalled time of the machine inside the gap

    @property
    def delta_ms(self) -> float:
        return (self.end - self.start) * 1000.0


def gaps(
    arrivals: Sequence[float],
    stalls: Sequence[Stall],
    *,
    limit_ms: float = 25.0,
    slack_ms: float = 5.0,
) -> list[Gap]:
    """Every inter-arrival gap over ``limit_ms``, with how much machine stall lies in it.

    A stall counts when it overlaps the gap widened by ``slack_ms`` on both sides:
    the witness sees a stall up to one wake period after it began, and the packet
    that should have ended the gap may have been due just before the stall.
    """
    slack = slack_ms / 1000.0
    found = []
    for i in range(1, len(arrivals)):
        a, b = arrivals[i - 1], arrivals[i]
        if (b - a) * 1000.0 <= limit_ms:
            continue
        stalled = sum(
            max(0.0, min(b + slack, s.end) - max(a - slack, s.start)) for s in stalls
        )
        found.append(Gap(index=i, start=a, end=b, explained_by_ms=stalled * 1000.0))
    return found


def unexplained_gaps(
    arrivals: Sequence[float],
    stalls: Sequence[Stall],
    *,
    period_ms: float = 20.0,
    limit_ms: float = 25.0,
    slack_ms: float = 5.0,
) -> list[Gap]:
    """Gaps over ``limit_ms`` whose lateness (gap minus one period) is more than the
    machine stalled inside them, plus ``slack_ms``."""
    return [
        g
        for g in gaps(arrivals, stalls, limit_ms=limit_ms, slack_ms=slack_ms)
        if g.delta_ms - period_ms > g.explained_by_ms + slack_ms
    ]


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
