"""A real-time scheduling window around the pacer's timing-critical stretch.

At a few hundred calls per core, the pacer's tick is late not because the loop is
busy but because the kernel runs someone else when the tick's timer fires: a
provider client, the other worker, the simulator on a bench box. The fair
scheduler gives no thread a claim on a 1 ms deadline. A thread at a real-time
policy (``SCHED_FIFO``) preempts every normal thread the moment it is runnable.

Running the whole engine at real time would hand a core to its JSON, history and
logging too, starving whatever shares the machine (measured: gaps up to 60 ms on
the co-located clients). The window raises only the loop thread, only for the
last sleep-and-spin before a deadline and the burst of writes (about 1 ms of every
20 ms while calls play); the inbound reading, housekeeping and everything else on
the loop run at the thread's normal policy. The kernel's real-time throttling
(``sched_rt_runtime_us``) still caps what a bug could take.

Setting a real-time policy needs ``CAP_SYS_NICE`` (root, or systemd's
``AmbientCapabilities=CAP_SYS_NICE``, or an ``RLIMIT_RTPRIO`` at least the
priority). Without it the window turns itself off with one warning and the
pacer runs as before. A thread already at a real-time priority at least as high
(the engine started under ``chrt``) is left alone. The policy is set with
``SCHED_RESET_ON_FORK`` so nothing forked inside a window inherits it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import structlog

__all__ = ["RealtimeWindow", "SchedulerState", "current_state", "set_state"]

log = structlog.get_logger("voiceline.streaming")

_REALTIME_POLICIES = (os.SCHED_FIFO, os.SCHED_RR)


@dataclass(frozen=True, slots=True)
class SchedulerState:
    """A thread's scheduling policy (as ``sched_getscheduler`` reports it, flags
    included) and its static priority (0 for the normal policies)."""

    policy: int
    priority: int

    @property
    def realtime_priority(self) -> int:
        """The priority if the policy is a real-time one, else 0."""
        return self.priority if self.policy & ~os.SCHED_RESET_ON_FORK in _REALTIME_POLICIES else 0


def current_state() -> SchedulerState:
    """The calling thread's policy (pid 0 means the calling thread on Linux)."""
    return SchedulerState(os.sched_getscheduler(0), os.sched_getparam(0).sched_priority)


def set_state(state: SchedulerState) -> None:
    os.sched_setscheduler(0, state.policy, os.sched_param(state.priority))


class RealtimeWindow:
    """``enter()`` raises the calling thread to ``SCHED_FIFO`` at ``priority``;
    ``leave()`` puts back the policy it found. Both are idempotent, so an owner can
    call ``leave()`` once where the stretch normally ends and again in a
    ``finally``. ``get_state``/``set_state`` are injectable for tests."""

    def __init__(
        self,
        priority: int,
        *,
        get_state: Callable[[], SchedulerState] = current_state,
        set_state: Callable[[SchedulerState], None] = set_state,
    ) -> None:
        if not 1 <= priority <= 99:
            raise ValueError(f"real-time priority must be within 1..99, got {priority}")
        self.priority = priority
        self._get = get_state
        self._set = set_state
        self._home: SchedulerState | None = None  # what leave() restores; None outside
        self.enabled = True
        self.windows = 0  # windows actually entered (a counter for tests and stats)

    def enter(self) -> None:
        if not self.enabled or self._home is not None:
            return
        home = self._get()
        if home.realtime_priority >= self.priority:
            return  # already at least this urgent: nothing to raise, nothing to restore
        try:
            self._set(SchedulerState(os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, self.priority))
        except PermissionError as exc:
            self.enabled = False
            log.warning(
                "real-time pacing refused; pacing at normal priority",
                priority=self.priority,
                error=str(exc),
                hint="grant CAP_SYS_NICE (systemd: AmbientCapabilities=CAP_SYS_NICE) or "
                "LimitRTPRIO, or set streaming.realtime_priority: 0 to silence this",
            )
            return
        self._home = home
        self.windows += 1

    def leave(self) -> None:
        home, self._home = self._home, None
        if home is None:
            return
        try:
            self._set(home)
        except OSError:
            # Lowering one's own policy is always allowed, so this is a kernel or
            # sandbox oddity; stop raising rather than risk leaving the loop at real time.
            self.enabled = False
            log.exception("could not leave real-time pacing; window turned off", priority=self.priority)
