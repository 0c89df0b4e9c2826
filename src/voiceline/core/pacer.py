"""The one real-time clock that paces every call's outbound audio.

Asterisk keeps no jitter buffer on what we send, and a mixing bridge drops
anything queued beyond ~80 ms, so frames must leave at real time, one per 20 ms,
with no bursts. A single timer ticks for every call (O(active streams) per tick)
instead of one sleeping task per call, which would drift independently and
multiply timer wake-ups.

``PacerSchedule`` is the pure part: an absolute deadline grid ``t0 + k * period``
that never drifts, and that never catches up. If the loop wakes more than one
period late, the missed slots are skipped and counted; sending them as a burst
would overflow the bridge and be heard as a glitch anyway.

``Pacer`` is the asyncio shell. Two things decide how evenly frames leave:

* When the tick starts. The pacer is a plain ``loop.call_at`` callback (no task:
  a task wakes one loop iteration after its timer, behind a second batch of I/O
  callbacks) armed ``spin_s`` before the deadline, because the selector's timeout
  has millisecond granularity; the callback then busy-waits the rest without
  yielding. A yield-spin (``await asyncio.sleep(0)``) would run every ready I/O
  callback on each turn and overshoot the deadline by as much as they take.
* What runs before a stream's write inside the tick. A tick has four phases:
  every stream's ``tick_fn(now)`` (the playout state machine; may return a
  frame), every returned frame's ``write_fn(frame)`` back to back, every
  ``sent_fn(frame, now)`` (bookkeeping that reads what was sent), and last every
  stream's ``poll_fn()``: its inbound side reads and handles what the caller sent
  since the last tick, in one read per call instead of one loop callback per
  frame. The writes are a uniform burst in a fixed order, so each call's frames
  are spaced by the period however much the work around them varies. Reading
  after the writes costs a barge-in at most one period: what the caller said
  before this tick's writes decides the next tick's frame. Reading before them
  would put every call's inbound work, and the caller side's own burstiness (a
  late frame, then two), in front of the writes.

A failing ``tick_fn``, ``write_fn``, ``sent_fn`` or ``poll_fn`` is logged (with its traceback)
under its stream id, counted in ``tick_errors`` and removed, and its
``on_error(exc)`` is called once so the stream's owner can end what depended on it
(a call with no outbound audio is of no use to the caller); the other streams keep
ticking in the same tick.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from voiceline.core.log_levels import is_debug
from voiceline.core.realtime import RealtimeWindow

__all__ = ["ErrorFn", "Pacer", "first_deadline", "PacerSchedule", "PacerStats", "PollFn", "SentFn", "TickFn", "WriteFn"]

log = structlog.get_logger("voiceline.streaming")

# time.sleep wakes up to ~60 us late here (the kernel's default timer slack is
# 50 us); the pacer sleeps to this much before the deadline and spins the rest.
_SLEEP_SLACK_S = 0.0001

PollFn = Callable[[], None]
TickFn = Callable[[float], "bytes | None"]
WriteFn = Callable[[bytes], None]
SentFn = Callable[[bytes, float], None]
ErrorFn = Callable[[BaseException], None]


class PacerSchedule:
    """Pure absolute-deadline schedule with no catch-up (all times in seconds).

    Deadlines are ``t0 + k * period`` computed from the slot index, so the grid
    never drifts however long the call. ``start(now)`` puts the first deadline at
    ``now``. ``due(now)`` returns 1 when a tick is due (0 otherwise) and moves
    ``next_deadline`` to the first grid point after ``now``. Grid slots that were
    entirely missed (the loop woke a period or more late) are added to
    ``skipped_ticks`` instead of being returned, so ``due`` never asks for a burst.
    """

    __slots__ = (
        "_slot",
        "_t0",
        "last_lateness_s",
        "max_lateness_s",
        "period_s",
        "skipped_ticks",
        "ticks",
    )

    # Slack on the slot index so k * period landing a rounding error above `now`
    # still counts as reached (1e-9 of a period = 20 fs at 20 ms).
    _SLOT_EPS = 1e-9

    def __init__(self, period_s: float = 0.020) -> None:
        if not period_s > 0:
            raise ValueError(f"period_s must be positive, got {period_s}")
        self.period_s = period_s
        self._t0: float | None = None
        self._slot = 0
        self.ticks = 0
        self.skipped_ticks = 0
        self.last_lateness_s = 0.0
        self.max_lateness_s = 0.0

    @property
    def started(self) -> bool:
        return self._t0 is not None

    @property
    def next_deadline(self) -> float | None:
        if self._t0 is None:
            return None
        return self._t0 + self._slot * self.period_s

    def start(self, now: float) -> None:
        self._t0 = now
        self._slot = 0

    def due(self, now: float) -> int:
        t0 = self._t0
        if t0 is None:
            raise RuntimeError("PacerSchedule.due() before start()")
        deadline = t0 + self._slot * self.period_s
        if now < deadline:
            return 0
        # Latest grid slot already reached; everything between is skipped.
        latest = max(self._slot, int((now - t0) / self.period_s + self._SLOT_EPS))
        self.skipped_ticks += latest - self._slot
        self._slot = latest + 1
        self.ticks += 1
        late = now - deadline
        self.last_lateness_s = late
        self.max_lateness_s = max(self.max_lateness_s, late)
        return 1


def first_deadline(now: float, period_s: float, phase: float | None) -> float:
    """Where a pacer's grid starts: ``now``, or with a ``phase`` (a fraction of the
    period) the first grid point at that phase of the clock itself. The loop clock is
    the system's monotonic clock, shared by every process, so pacers in two processes
    given phases 0 and 0.5 tick half a period apart: their bursts take turns on the
    cores instead of competing for them."""
    if phase is None:
        return now
    offset = phase * period_s
    return offset + math.ceil((now - offset) / period_s) * period_s


@dataclass(frozen=True, slots=True)
class PacerStats:
    ticks: int
    late_ticks: int
    max_lateness_ms: float
    skipped_ticks: int
    streams: int
    tick_errors: int
    realtime: str  # the real-time window: "off" (none configured), "on", or "refused" by the kernel


class _Entry:
    """One registered stream; its identity tells a stream replaced mid-tick from the
    one the tick started with."""

    __slots__ = ("on_error", "poll_fn", "sent_fn", "tick_fn", "write_fn")

    def __init__(
        self,
        tick_fn: TickFn,
        write_fn: WriteFn | None,
        sent_fn: SentFn | None,
        on_error: ErrorFn | None,
        poll_fn: PollFn | None,
    ) -> None:
        self.poll_fn = poll_fn
        self.tick_fn = tick_fn
        self.write_fn = write_fn
        self.sent_fn = sent_fn
        self.on_error = on_error


class Pacer:
    """One timer ticking every registered stream each ``period_s``.

    ``clock`` is a monotonic seconds clock; it defaults to the running loop's
    ``loop.time`` (resolved in ``start``) and must advance at the same rate as the
    loop's clock because the pacer arms loop timers. ``spin_s`` is how long before a
    deadline the timer fires; the rest is slept and spun away without yielding
    (only while streams are registered). A tick is counted as late when it lands more than
    ``late_threshold_s`` after its deadline. ``after_tick()``, if given, runs at the
    end of every tick, when the next deadline is furthest away: the place for
    process housekeeping that must not land between two writes (young garbage
    collections, see ``GcKeeper.collect_young_if_due``). ``realtime``, if given, is
    entered before the last sleep-and-spin and left after the writes, before the
    polls (see ``voiceline.core.realtime``); only while streams are registered.
    """

    def __init__(
        self,
        period_s: float = 0.020,
        *,
        clock: Callable[[], float] | None = None,
        spin_s: float = 0.001,
        late_threshold_s: float = 0.002,
        logging_level: str = "INFO",
        phase: float | None = None,
        after_tick: Callable[[], None] | None = None,
        realtime: RealtimeWindow | None = None,
    ) -> None:
        if spin_s < 0 or spin_s >= period_s:
            raise ValueError(f"spin_s must be in [0, period_s), got {spin_s}")
        if phase is not None and not 0.0 <= phase < 1.0:
            raise ValueError(f"phase must be in [0, 1), got {phase}")
        self._phase = phase
        self._after_tick = after_tick
        self._realtime = realtime
        self._schedule = PacerSchedule(period_s)
        self._clock = clock
        self._spin_s = spin_s
        self._late_threshold_s = late_threshold_s
        self._debug = is_debug(logging_level)
        self._streams: dict[str, _Entry] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._late_ticks = 0
        self._tick_errors = 0

    # ---- registration -----------------------------------------------------------

    @property
    def period_s(self) -> float:
        return self._schedule.period_s

    def now(self) -> float:
        """The pacer's clock (the injected one, else the running loop's time)."""
        if self._clock is not None:
            return self._clock()
        return asyncio.get_running_loop().time()

    def register(
        self,
        stream_id: str,
        tick_fn: TickFn,
        *,
        on_error: ErrorFn | None = None,
        write_fn: WriteFn | None = None,
        sent_fn: SentFn | None = None,
        poll_fn: PollFn | None = None,
    ) -> None:
        """Tick ``tick_fn(now)`` every period until ``unregister``.

        ``poll_fn()``, if given, runs last in every tick, after every stream's write:
        the stream's inbound side reads what arrived; what it decides (a barge-in)
        applies to the next tick's frame.

        When ``tick_fn`` returns a frame and ``write_fn`` is given, the frame goes to
        ``write_fn(frame)`` after every stream's ``tick_fn`` ran, then to
        ``sent_fn(frame, now)`` after every stream's write. If any of them raises, the
        stream is removed and ``on_error(exc)`` is called once (from inside the
        tick, so it must not block).
        """
        if stream_id in self._streams:
            raise ValueError(f"stream {stream_id!r} is already registered")
        self._streams[stream_id] = _Entry(tick_fn, write_fn, sent_fn, on_error, poll_fn)
        if self._debug:
            log.debug(
                "pacer stream registered",
                stream_id=stream_id,
                streams=len(self._streams),
            )

    def unregister(self, stream_id: str) -> bool:
        """Remove a stream; False if it was not registered (e.g. removed after an error)."""
        removed = self._streams.pop(stream_id, None) is not None
        if removed and self._debug:
            log.debug(
                "pacer stream unregistered",
                stream_id=stream_id,
                streams=len(self._streams),
            )
        return removed

    def is_registered(self, stream_id: str) -> bool:
        return stream_id in self._streams

    @property
    def stats(self) -> PacerStats:
        s = self._schedule
        return PacerStats(
            ticks=s.ticks,
            late_ticks=self._late_ticks,
            max_lateness_ms=s.max_lateness_s * 1000.0,
            skipped_ticks=s.skipped_ticks,
            streams=len(self._streams),
            tick_errors=self._tick_errors,
            realtime="off" if self._realtime is None else "on" if self._realtime.enabled else "refused",
        )

    # ---- lifecycle --------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._timer is not None

    def start(self) -> None:
        """Start ticking on the running loop (idempotent while running)."""
        if self.running:
            return
        loop = asyncio.get_running_loop()
        if self._clock is None:
            self._clock = loop.time
        self._schedule.start(first_deadline(self._clock(), self.period_s, self._phase))
        self._arm(loop)

    async def stop(self) -> None:
        """Stop ticking (idempotent). Async so an owner can await it like other stops."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    # ---- the timer --------------------------------------------------------------

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        deadline = self._schedule.next_deadline
        assert deadline is not None  # started
        # Loop timers run on loop.time(); an injected clock runs at the same rate,
        # so translate the deadline by the clocks' current offset.
        assert self._clock is not None
        offset = loop.time() - self._clock()
        spin = self._spin_s if self._streams else 0.0
        self._timer = loop.call_at(deadline - spin + offset, self._on_timer, loop)

    def _on_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        clock = self._clock
        assert clock is not None
        schedule = self._schedule
        deadline = schedule.next_deadline
        assert deadline is not None
        window = self._realtime if self._streams else None
        try:
            # Wait out the last stretch without yielding: yielding would let every
            # ready I/O callback run first. Only while some stream will hear the tick.
            # Waited on the loop's clock, so an injected clock that stands still
            # cannot hang it. At real time (the window) the kernel wakes the loop
            # thread on time instead of behind another process's time slice.
            if window is not None:
                window.enter()
            if self._streams:
                # Read the pacer's clock before the loop's: with the loop's own clock
                # the offset is then >= 0, so the spin cannot end a hair before the
                # deadline and find no tick due (a wasted firing re-armed behind I/O).
                clock_now = clock()
                until = deadline + (loop.time() - clock_now)
                rest = until - loop.time() - _SLEEP_SLACK_S
                if rest > 0:
                    time.sleep(rest)  # blocks the loop as a busy-wait would, without the CPU
                while loop.time() < until:
                    pass
            now = clock()
            if schedule.due(now):
                if schedule.last_lateness_s > self._late_threshold_s:
                    self._late_ticks += 1
                self.run_tick(now)
        except Exception:
            # run_tick isolates the streams; anything reaching here is a pacer bug.
            # Log it and keep ticking: stopping the timer would silence every call.
            log.exception("pacer tick crashed")
        finally:
            if window is not None:
                window.leave()  # normally already left in run_tick; idempotent
            if self._timer is not None:  # not stopped from inside the tick
                self._arm(loop)

    def run_tick(self, now: float) -> None:
        """Tick every registered stream once (the timer's body; public so a test or a
        simulator can drive the pacer with a fake clock)."""
        self._play(now)
        if self._realtime is not None:
            self._realtime.leave()
        self._poll_all()
        if self._after_tick is not None:
            try:
                self._after_tick()
            except Exception:
                # Housekeeping, not a stream: no stream to remove, the ticks go on.
                self._tick_errors += 1
                log.exception("pacer after_tick failed")

    def _poll_all(self) -> None:
        streams = self._streams
        for stream_id, entry in list(streams.items()):
            poll_fn = entry.poll_fn
            if poll_fn is None or streams.get(stream_id) is not entry:
                continue
            try:
                poll_fn()
            except Exception as exc:
                self._fail(stream_id, entry, exc)

    def _play(self, now: float) -> None:
        streams = self._streams
        staged: list[tuple[str, _Entry, bytes]] = []
        for stream_id, entry in list(streams.items()):
            if streams.get(stream_id) is not entry:
                continue  # removed (or replaced) by an earlier tick_fn in this tick
            try:
                frame = entry.tick_fn(now)
            except Exception as exc:
                self._fail(stream_id, entry, exc)
                continue
            if frame is not None and entry.write_fn is not None:
                staged.append((stream_id, entry, frame))
        if not staged:
            return
        written: list[tuple[str, _Entry, bytes]] = []
        for item in staged:
            stream_id, entry, frame = item
            if streams.get(stream_id) is not entry:
                continue
            try:
                entry.write_fn(frame)  # type: ignore[misc]  # staged only with a write_fn
            except Exception as exc:
                self._fail(stream_id, entry, exc)
                continue
            written.append(item)
        for stream_id, entry, frame in written:
            sent_fn = entry.sent_fn
            if sent_fn is None or streams.get(stream_id) is not entry:
                continue
            try:
                sent_fn(frame, now)
            except Exception as exc:
                self._fail(stream_id, entry, exc)

    def _fail(self, stream_id: str, entry: _Entry, exc: Exception) -> None:
        self._tick_errors += 1
        if self._streams.get(stream_id) is entry:
            del self._streams[stream_id]
        log.error("pacer tick failed, stream removed", stream_id=stream_id, exc_info=exc)
        on_error = entry.on_error
        if on_error is None:
            return
        try:
            on_error(exc)
        except Exception:
            # The owner's handler is broken; the other streams must still tick.
            log.exception("pacer on_error callback failed", stream_id=stream_id)
