"""When the cyclic garbage collector may stop the process.

CPython's full (generation 2) collection walks every tracked object. With a few
hundred calls in one process that is several hundred thousand objects and 40-120 ms
with the GIL held: every call's pacer tick in the process is late at once and the
callers hear a gap. Young collections (generations 0 and 1) stay short and keep
running as usual.

What a call leaves for the cyclic collector is small: measured over 300 bench
calls, about 7 objects per call ended up in cycles; everything else is freed by
reference counting the moment the call lets go of it. So full collections can wait
for a moment when they cost nobody anything:

* when the process has no call in progress (it is idle for the media plane), and
* at the latest ``max_interval_s`` after the last one, so a process that is never
  idle still bounds what waits (one gap every ``max_interval_s`` on a busy node,
  logged with its duration).

Young collections are short but not free: 0.4-1.5 ms at a few hundred calls per
process, a few times a second. Left to the allocation threshold, one fires wherever
the count happens to cross it, often in the middle of a pacer tick, between two
calls' frame writes. ``YoungCollectionPolicy`` runs it a little early instead, at
the end of a tick (the pacer's ``after_tick``), when the objects the next tick may
add could cross the threshold. The automatic trigger stays on as the safety net
(when no pacer ticks, or a burst beats the estimate).

``FullCollectionPolicy`` and ``YoungCollectionPolicy`` are the pure decisions (time
and counts passed in); ``GcKeeper`` applies them: ``install()`` turns automatic full
collections off (young ones stay on), ``calls_changed(active)`` is told the number
of calls in progress, ``poll()`` is called every few seconds by its owner and
``collect_young_if_due()`` after every pacer tick.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

import structlog

__all__ = ["FullCollectionPolicy", "GcKeeper", "YoungCollectionPolicy"]

log = structlog.get_logger("voiceline.gc")

# Generation 2 runs after this many generation-1 collections *and* only if the
# objects promoted since the last full collection exceed 25 % of the long-lived
# ones; a count no process reaches turns the automatic runs off.
_NEVER = 2**31 - 1


class FullCollectionPolicy:
    """Decides when a full collection is due. Pure: ``now`` is passed in (seconds)."""

    def __init__(self, max_interval_s: float, *, now: float) -> None:
        if not max_interval_s > 0:
            raise ValueError(f"max_interval_s must be positive, got {max_interval_s}")
        self.max_interval_s = max_interval_s
        self._last = now
        self._idle_since_last = False

    def collected(self, now: float) -> None:
        self._last = now
        self._idle_since_last = False

    def on_active_calls(self, active: int) -> str | None:
        """The reason to collect now, if the process just became idle."""
        if active == 0 and not self._idle_since_last:
            self._idle_since_last = True  # one collection per idle spell is enough
            return "idle"
        if active > 0:
            self._idle_since_last = False
        return None

    def overdue(self, now: float) -> str | None:
        """The reason to collect now, if the longest wait has passed."""
        if now - self._last >= self.max_interval_s:
            return "interval"
        return None


class YoungCollectionPolicy:
    """Decides, at the end of a tick, whether the young collection should run now.

    Pure: it is given the young generation's count (tracked objects allocated minus
    freed since the last young collection) and threshold. It estimates how much one
    tick adds (the largest recent growth, forgotten by 10 % a tick) and says "now"
    when ``headroom`` such ticks could reach the threshold.
    """

    def __init__(self, headroom: float = 2.0) -> None:
        if not headroom > 0:
            raise ValueError(f"headroom must be positive, got {headroom}")
        self.headroom = headroom
        self.expected_growth = 0.0
        self._last_count = 0

    def due(self, count: int, threshold: int) -> bool:
        # A count below the last one means a collection ran in between (the automatic
        # one): everything counted now arrived since.
        growth = count - self._last_count if count >= self._last_count else count
        self.expected_growth = max(float(growth), self.expected_growth * 0.9)
        self._last_count = count
        return count + self.headroom * self.expected_growth >= threshold

    def collected(self) -> None:
        self._last_count = 0


class GcKeeper:
    """Applies ``FullCollectionPolicy`` and ``YoungCollectionPolicy`` to this
    process's garbage collector."""

    def __init__(
        self, max_interval_s: float = 900.0, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self.policy = FullCollectionPolicy(max_interval_s, now=clock())
        self._saved_threshold: tuple[int, int, int] | None = None
        self.collections = 0
        self.last_pause_ms = 0.0
        self.young = YoungCollectionPolicy()
        self.young_collections = 0

    def install(self) -> None:
        """Collect everything now, move what exists (the whole start-up) out of the
        collector's reach, and stop automatic full collections."""
        gc.collect()
        gc.freeze()
        if self._saved_threshold is None:
            self._saved_threshold = gc.get_threshold()
            young, middle, _ = self._saved_threshold
            gc.set_threshold(young, middle, _NEVER)
        self.policy.collected(self._clock())

    def uninstall(self) -> None:
        """Restore the thresholds ``install`` changed (tests, embedding)."""
        if self._saved_threshold is not None:
            gc.set_threshold(*self._saved_threshold)
            self._saved_threshold = None

    def collect_young_if_due(self) -> None:
        """Run the young collection now if the next tick could trigger it (call at
        the end of a pacer tick). Only once installed, and never when the collector
        is off."""
        if self._saved_threshold is None or not gc.isenabled():
            return
        young_threshold, middle_threshold, _ = gc.get_threshold()
        young_count, middle_count, _ = gc.get_count()
        if young_threshold <= 0 or not self.young.due(young_count, young_threshold):
            return
        # The automatic trigger would take generation 1 along once its count is past
        # its threshold; do the same so generation 1 never waits for the trigger.
        gc.collect(1 if middle_count >= middle_threshold else 0)
        self.young.collected()
        self.young_collections += 1

    def calls_changed(self, active: int) -> None:
        reason = self.policy.on_active_calls(active)
        if reason is not None:
            self.collect(reason, active=active)

    def poll(self) -> None:
        reason = self.policy.overdue(self._clock())
        if reason is not None:
            self.collect(reason)

    def collect(self, reason: str, *, active: int | None = None) -> int:
        started = time.perf_counter()
        found = gc.collect()
        self.last_pause_ms = (time.perf_counter() - started) * 1000.0
        self.collections += 1
        self.policy.collected(self._clock())
        # At an idle moment it costs nobody anything: debug. On the interval it may
        # have been heard as a gap on every call of the process: say so.
        emit = log.debug if reason == "idle" else log.info
        emit(
            "gc_full_collection",
            reason=reason,
            pause_ms=round(self.last_pause_ms, 1),
            unreachable=found,
            active_calls=active,
        )
        return found
