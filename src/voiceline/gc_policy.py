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

``FullCollectionPolicy`` is the pure decision (time injected); ``GcKeeper`` applies
it: ``install()`` turns automatic full collections off (young ones stay on),
``calls_changed(active)`` is told the number of calls in progress, and ``poll()`` is
called every few seconds by its owner.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

import structlog

__all__ = ["FullCollectionPolicy", "GcKeeper"]

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


class GcKeeper:
    """Applies ``FullCollectionPolicy`` to this process's garbage collector."""

    def __init__(
        self, max_interval_s: float = 900.0, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self.policy = FullCollectionPolicy(max_interval_s, now=clock())
        self._saved_threshold: tuple[int, int, int] | None = None
        self.collections = 0
        self.last_pause_ms = 0.0

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
