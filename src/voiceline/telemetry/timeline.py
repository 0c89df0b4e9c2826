"""The call timeline: its format and a cheap recorder for it (no drawing here,
so the 20 ms path never imports the PNG/HTML renderer).

Timeline format (stored as JSON in the call history's ``timeline`` column)
-------------------------------------------------------------------------
A list of ``[t_ms, kind, value]`` events in time order, ``t_ms`` an int of
milliseconds since the call started:

==================  ===============================================================
kind                value
==================  ===============================================================
``depth``           whole frames queued for the caller (sampled, ≥ 200 ms apart)
``caller_energy``   caller audio level in dBFS, -96.0 .. 0.0 (sampled, ≥ 100 ms apart)
``agent_on``        turn id — agent audio started reaching the caller
``agent_off``       turn id — agent audio stopped (turn ended, flushed or fell back)
``pause``           depth (frames) when the stream paused
``resume``          pause length in ms
``fallback``        turn id handed to file playback
``barge_in``        ms of agent audio played before the caller cut in, or None
``turn_start``      turn id
``turn_end``        end reason ("completed", "barge-in", "fallback", "call-ended")
``soft_pause``      None: likely caller speech paused the agent (soft barge-in)
``soft_resume``     None: the speech was not confirmed; the agent played on
==================  ===============================================================
"""

from __future__ import annotations

import math
from typing import Any

import structlog

log = structlog.get_logger("voiceline.timeline")

DEPTH_INTERVAL_MS = 200
ENERGY_INTERVAL_MS = 100
SILENCE_DBFS = -96.0  # below the 16-bit noise floor: what digital silence is drawn as
_FULL_SCALE = 32768.0
TIMELINE_KINDS = frozenset(
    {"depth", "caller_energy", "agent_on", "agent_off", "pause", "resume", "fallback", "barge_in",
     "turn_start", "turn_end", "soft_pause", "soft_resume"}
)
_SAMPLE_KINDS = ("depth", "caller_energy")


def rms_to_dbfs(rms: float) -> float:
    """RMS of 16-bit samples as dBFS, one decimal, floored at ``SILENCE_DBFS``."""
    if rms <= 0:
        return SILENCE_DBFS
    return round(max(20.0 * math.log10(rms / _FULL_SCALE), SILENCE_DBFS), 1)


class TimelineRecorder:
    """Collects one call's timeline; every method takes the current time in seconds.

    Per-frame calls are cheap: a sample closer than its interval to the previous
    one of its kind is ignored after one comparison. The list stays within
    ``max_events``: when full, every other sample is thinned out and the sample
    intervals doubled, so a long call keeps its whole span at a coarser resolution
    and its discrete events (pauses, barge-ins ...). Only if nothing is left to thin
    are new events dropped and counted in ``dropped``.
    """

    def __init__(self, start_s: float, max_events: int = 5000) -> None:
        if max_events < 2:
            raise ValueError(f"max_events must be at least 2, got {max_events}")
        self._start_s = start_s
        self._max_events = max_events
        self._events: list[tuple[int, str, Any]] = []
        self._interval_ms = {"depth": DEPTH_INTERVAL_MS, "caller_energy": ENERGY_INTERVAL_MS}
        self._next_sample_ms = {"depth": 0, "caller_energy": 0}
        self.dropped = 0

    @property
    def events(self) -> list[list[Any]]:
        """The timeline so far (a copy, safe to store while recording continues)."""
        return [list(event) for event in self._events]

    def add(self, kind: str, value: Any = None, *, now_s: float) -> None:
        if kind not in TIMELINE_KINDS:
            raise ValueError(f"unknown timeline kind {kind!r}")
        self._append(self._t_ms(now_s), kind, value)

    def depth_sample(self, depth: int, *, now_s: float) -> None:
        t_ms = self._due("depth", now_s)
        if t_ms is not None:
            self._take_sample("depth", t_ms, depth)

    def energy_sample(self, rms: float, *, now_s: float) -> None:
        """``rms`` of 16-bit caller samples; stored as dBFS."""
        t_ms = self._due("caller_energy", now_s)
        if t_ms is not None:  # the log10 only for samples that are kept
            self._take_sample("caller_energy", t_ms, rms_to_dbfs(rms))

    def _due(self, kind: str, now_s: float) -> int | None:
        t_ms = self._t_ms(now_s)
        return t_ms if t_ms >= self._next_sample_ms[kind] else None

    def _take_sample(self, kind: str, t_ms: int, value: Any) -> None:
        self._next_sample_ms[kind] = t_ms + self._interval_ms[kind]
        self._append(t_ms, kind, value)

    def _t_ms(self, now_s: float) -> int:
        return max(0, round((now_s - self._start_s) * 1000.0))

    def _append(self, t_ms: int, kind: str, value: Any) -> None:
        if len(self._events) >= self._max_events and not self._thin_samples():
            self.dropped += 1
            if self.dropped == 1:
                log.warning("timeline full of discrete events, dropping new ones",
                            max_events=self._max_events)
            return
        # Tuples of plain values are not tracked by the cyclic GC; lists are, and 200
        # calls x thousands of events made full collections stall every call (~100 ms).
        self._events.append((t_ms, kind, value))

    def _thin_samples(self) -> bool:
        """Drop every other sample of each kind; True if anything was dropped."""
        seen = dict.fromkeys(_SAMPLE_KINDS, 0)
        kept: list[tuple[int, str, Any]] = []
        for event in self._events:
            kind = event[1]
            if kind in seen:
                seen[kind] += 1
                if seen[kind] % 2 == 0:
                    continue
            kept.append(event)
        if len(kept) == len(self._events):
            return False
        self._events = kept
        for kind in _SAMPLE_KINDS:
            self._interval_ms[kind] *= 2
        return True
