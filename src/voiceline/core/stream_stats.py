"""Per-call streaming telemetry: counters and a bounded queue-depth histogram."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["DepthHistogram", "StreamStats"]


class DepthHistogram:
    """Running histogram of queue depths in whole frames: O(distinct depths) memory,
    bounded by the buffer capacity, independent of call length."""

    __slots__ = ("_counts", "_total", "count", "max", "min")

    def __init__(self) -> None:
        self._counts: dict[int, int] = {}
        self.count = 0
        self._total = 0
        self.min: int | None = None
        self.max: int | None = None

    def add(self, depth: int) -> None:
        self._counts[depth] = self._counts.get(depth, 0) + 1
        self.count += 1
        self._total += depth
        if self.min is None or depth < self.min:
            self.min = depth
        if self.max is None or depth > self.max:
            self.max = depth

    @property
    def mean(self) -> float | None:
        return self._total / self.count if self.count else None

    def percentile(self, p: float) -> int | None:
        """Nearest-rank percentile (0 < p <= 100)."""
        if not self.count:
            return None
        rank = max(1, math.ceil(p / 100 * self.count))
        seen = 0
        for depth in sorted(self._counts):
            seen += self._counts[depth]
            if seen >= rank:
                return depth
        return self.max

    def summary(self) -> dict[str, float | int | None]:
        return {
            "samples": self.count,
            "min": self.min,
            "mean": self.mean,
            "p95": self.percentile(95),
            "max": self.max,
        }


@dataclass
class StreamStats:
    """Per-call telemetry.

    ``restarts`` counts a second ``StreamingStarted`` for the same turn; it is 0 by
    construction and exists so a regression would show (``stream_starts`` counts
    the first one per turn). ``depth`` samples the whole frames queued once per tick
    while a turn plays with the provider still sending (PLAYING/PAUSED): that is the
    cushion against provider jitter; a drained burst would only skew it.
    ``first_frame_latency_ms`` has one entry per turn that played.
    """

    frames_sent: int = 0
    silence_frames: int = 0
    silence_frames_inserted: int = 0
    pauses: int = 0
    restarts: int = 0
    stream_starts: int = 0
    fallbacks: int = 0
    late_chunks_dropped: int = 0
    overflow_frames_dropped: int = 0
    flushed_frames: int = 0
    turns: int = 0
    first_frame_latency_ms: list[float] = field(default_factory=list)
    depth: DepthHistogram = field(default_factory=DepthHistogram)

    def as_dict(self) -> dict[str, object]:
        d: dict[str, object] = {
            name: getattr(self, name)
            for name in self.__dataclass_fields__
            if name != "depth"
        }
        d["first_frame_latency_ms"] = list(self.first_frame_latency_ms)
        d["depth"] = self.depth.summary()
        return d
