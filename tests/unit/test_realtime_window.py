"""RealtimeWindow: the pacer's timing-critical stretch at a real-time priority.

The window raises the loop thread to SCHED_FIFO, puts back exactly what was there
before, never lowers a thread that is already more urgent, and on a machine that
refuses real-time scheduling turns itself off with one warning instead of failing
the tick.
"""

from __future__ import annotations

import os

import pytest
import structlog

from voiceline.core.realtime import RealtimeWindow, SchedulerState

FIFO = os.SCHED_FIFO
OTHER = os.SCHED_OTHER


class FakeScheduler:
    def __init__(self, state: SchedulerState, *, deny: bool = False) -> None:
        self.state = state
        self.deny = deny
        self.sets: list[SchedulerState] = []

    def get(self) -> SchedulerState:
        return self.state

    def set(self, state: SchedulerState) -> None:
        if self.deny:
            raise PermissionError(1, "Operation not permitted")
        self.sets.append(state)
        self.state = state


def window(fake: FakeScheduler, priority: int = 5) -> RealtimeWindow:
    return RealtimeWindow(priority, get_state=fake.get, set_state=fake.set)


def test_enter_raises_the_thread_to_fifo_and_leave_puts_back_what_was_there() -> None:
    fake = FakeScheduler(SchedulerState(OTHER, 0))
    w = window(fake, 7)
    w.enter()
    assert fake.state.policy & ~os.SCHED_RESET_ON_FORK == FIFO and fake.state.priority == 7
    # A child forked inside the window must not inherit the real-time policy.
    assert fake.state.policy & os.SCHED_RESET_ON_FORK
    w.leave()
    assert fake.state == SchedulerState(OTHER, 0)
    assert w.windows == 1


def test_enter_and_leave_are_idempotent() -> None:
    fake = FakeScheduler(SchedulerState(OTHER, 0))
    w = window(fake)
    w.leave()  # never entered: nothing to put back
    assert fake.sets == []
    w.enter()
    w.enter()
    w.leave()
    w.leave()
    assert len(fake.sets) == 2 and fake.state == SchedulerState(OTHER, 0)


@pytest.mark.parametrize("policy", [os.SCHED_FIFO, os.SCHED_RR])
def test_a_thread_already_at_that_real_time_priority_or_above_is_left_alone(policy: int) -> None:
    # e.g. the whole engine run under `chrt -r 10`: the window must not lower it.
    fake = FakeScheduler(SchedulerState(policy, 10))
    w = window(fake, 5)
    w.enter()
    w.leave()
    assert fake.sets == [] and fake.state == SchedulerState(policy, 10)


def test_a_lower_real_time_priority_is_raised_and_restored() -> None:
    fake = FakeScheduler(SchedulerState(os.SCHED_RR, 2))
    w = window(fake, 5)
    w.enter()
    assert fake.state.priority == 5
    w.leave()
    assert fake.state == SchedulerState(os.SCHED_RR, 2)


def test_refused_real_time_scheduling_turns_the_window_off_with_one_warning() -> None:
    fake = FakeScheduler(SchedulerState(OTHER, 0), deny=True)
    w = window(fake)
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            w.enter()
            w.leave()
    assert w.enabled is False and w.windows == 0
    warnings = [r for r in logs if r["log_level"] == "warning"]
    assert len(warnings) == 1
    assert "CAP_SYS_NICE" in warnings[0]["hint"]
    assert fake.state == SchedulerState(OTHER, 0)


def test_a_failing_restore_is_logged_and_turns_the_window_off() -> None:
    fake = FakeScheduler(SchedulerState(OTHER, 0))
    w = window(fake)
    w.enter()
    fake.deny = True
    with structlog.testing.capture_logs() as logs:
        w.leave()
        w.enter()
    assert w.enabled is False
    assert [r["log_level"] for r in logs] == ["error"]


@pytest.mark.parametrize("priority", [0, 100, -1])
def test_priority_outside_1_to_99_is_an_error(priority: int) -> None:
    with pytest.raises(ValueError, match="priority"):
        RealtimeWindow(priority)


def test_the_real_scheduler_either_grants_fifo_for_the_window_or_refuses_cleanly() -> None:
    # As root (CI, the lab) the kernel grants it; unprivileged, the window turns off.
    before = os.sched_getscheduler(0), os.sched_getparam(0).sched_priority
    w = RealtimeWindow(3)
    with structlog.testing.capture_logs():
        w.enter()
        inside = os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK, os.sched_getparam(0).sched_priority
        w.leave()
    after = os.sched_getscheduler(0), os.sched_getparam(0).sched_priority
    assert after == before
    if before[0] in (os.SCHED_FIFO, os.SCHED_RR) and before[1] >= 3:
        assert inside == before
    elif w.enabled:
        assert inside == (os.SCHED_FIFO, 3)
    else:
        assert os.geteuid() != 0, "root was refused real-time scheduling"
        assert inside == before



def test_an_unprivileged_engine_is_refused_once_and_paces_at_normal_priority() -> None:
    # The engine as a plain user with no CAP_SYS_NICE and RLIMIT_RTPRIO 0 (the default):
    # the real kernel refuses, the window turns off, nothing is left raised.
    import subprocess
    import sys

    assert os.geteuid() == 0, "this test needs root to drop to an unprivileged user"
    code = """
import os, resource, structlog
assert resource.getrlimit(resource.RLIMIT_RTPRIO)[0] == 0
os.setgroups([]); os.setgid(65534); os.setuid(65534)
from voiceline.core.realtime import RealtimeWindow
w = RealtimeWindow(5)
with structlog.testing.capture_logs() as logs:
    for _ in range(3):
        w.enter()
        inside = os.sched_getscheduler(0)
        w.leave()
print(inside == os.SCHED_OTHER, os.sched_getscheduler(0) == os.SCHED_OTHER, w.enabled,
      [r["log_level"] for r in logs])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True True False ['warning']"
