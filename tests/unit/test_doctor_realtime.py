"""`voiceline doctor` says whether the pacer will get its real-time window here."""

from __future__ import annotations

import os

import structlog

from voiceline.core.realtime import RealtimeWindow, SchedulerState
from voiceline.doctor import check_realtime


def test_off_in_the_config_is_reported_as_such() -> None:
    check = check_realtime(0)
    assert check.ok and "off" in check.detail and not check.required


def test_a_kernel_that_refuses_is_a_warning_with_the_fix() -> None:
    def refuse(state: SchedulerState) -> None:
        raise PermissionError(1, "Operation not permitted")

    state = SchedulerState(os.SCHED_OTHER, 0)
    with structlog.testing.capture_logs():
        check = check_realtime(5, window=RealtimeWindow(5, get_state=lambda: state, set_state=refuse))
    assert not check.ok and not check.required
    assert "refused" in check.detail and "LimitRTPRIO" in check.fix


def test_as_root_the_window_is_granted_and_left() -> None:
    assert os.geteuid() == 0, "this test needs root (the kernel refuses SCHED_FIFO otherwise)"
    check = check_realtime(5)
    assert check.ok and "SCHED_FIFO 5" in check.detail
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
