"""PacerSchedule (pure) and Pacer.run_tick (no loop needed)."""

from __future__ import annotations

import pytest
import structlog

from voiceline.core.pacer import Pacer, PacerSchedule


def test_first_tick_is_due_at_start_then_every_period() -> None:
    s = PacerSchedule(0.020)
    s.start(10.0)
    assert s.next_deadline == 10.0
    assert s.due(10.0) == 1
    assert s.next_deadline == pytest.approx(10.02)
    assert s.due(10.0) == 0
    assert s.due(10.0199) == 0
    assert s.due(10.0201) == 1
    assert s.next_deadline == pytest.approx(10.04)  # absolute grid, not "now + period"
    assert (s.ticks, s.skipped_ticks) == (2, 0)


def test_no_catch_up_burst_after_a_long_stall() -> None:
    s = PacerSchedule(0.020)
    s.start(0.0)
    assert s.due(0.0) == 1
    # The loop was blocked for a second: slots 0.02 .. 1.00 (50 of them) are all past.
    assert s.due(1.0) == 1
    assert s.skipped_ticks == 49
    assert s.next_deadline == pytest.approx(1.02)
    # Asking again at the same instant (or just after) must not release a burst.
    assert s.due(1.0) == 0
    assert s.due(1.019) == 0
    assert s.due(1.02) == 1
    assert (s.ticks, s.skipped_ticks) == (3, 49)
    assert s.max_lateness_s == pytest.approx(0.98)


def test_lateness_below_one_period_skips_nothing() -> None:
    s = PacerSchedule(0.020)
    s.start(0.0)
    s.due(0.0)
    assert s.due(0.035) == 1  # 15 ms late for the 0.02 slot
    assert s.skipped_ticks == 0
    assert s.last_lateness_s == pytest.approx(0.015)
    assert s.next_deadline == pytest.approx(0.04)


def test_grid_does_not_drift_over_a_long_run() -> None:
    s = PacerSchedule(0.020)
    s.start(0.0)
    fired = 0
    k = 0
    while k <= 360_000:  # two hours of 20 ms slots, each tick 0.3 ms late
        fired += s.due(k * 0.020 + 0.0003)
        k += 1
    assert fired == 360_001
    assert s.skipped_ticks == 0
    assert s.next_deadline == pytest.approx(360_001 * 0.020, abs=1e-6)


def test_exact_multiple_boundaries_are_robust_to_float_rounding() -> None:
    s = PacerSchedule(0.020)
    s.start(0.0)
    s.due(0.0)
    for k in range(1, 2000):
        assert s.due(k * 0.020) == 1, k
    assert s.skipped_ticks == 0


def test_due_before_start_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        PacerSchedule().due(0.0)
    with pytest.raises(ValueError):
        PacerSchedule(0.0)


def test_run_tick_calls_every_stream_and_isolates_failures() -> None:
    pacer = Pacer(clock=lambda: 0.0)
    calls: list[tuple[str, float]] = []

    def ok(name: str):
        return lambda now: calls.append((name, now))

    def broken(now: float) -> None:
        raise ZeroDivisionError("bad stream")

    pacer.register("a", ok("a"))
    pacer.register("b", broken)
    pacer.register("c", ok("c"))
    with structlog.testing.capture_logs() as logs:
        pacer.run_tick(1.0)
        pacer.run_tick(1.02)
    assert calls == [("a", 1.0), ("c", 1.0), ("a", 1.02), ("c", 1.02)]
    assert not pacer.is_registered("b")
    assert pacer.stats.tick_errors == 1 and pacer.stats.streams == 2
    (err,) = logs
    assert err["stream_id"] == "b" and err["log_level"] == "error" and err["exc_info"]


def test_a_failing_stream_is_reported_once_to_its_on_error_and_others_tick_in_the_same_tick() -> None:
    pacer = Pacer(clock=lambda: 0.0)
    calls: list[str] = []
    reported: list[BaseException] = []
    boom = OSError("transport closed")

    def broken(now: float) -> None:
        calls.append("b")
        raise boom

    pacer.register("a", lambda now: calls.append("a"))
    pacer.register("b", broken, on_error=reported.append)
    pacer.register("c", lambda now: calls.append("c"))
    with structlog.testing.capture_logs() as logs:
        pacer.run_tick(0.0)
        pacer.run_tick(0.02)
    assert calls == ["a", "b", "c", "a", "c"]
    assert reported == [boom]
    assert not pacer.is_registered("b") and pacer.stats.tick_errors == 1
    (err,) = logs
    assert err["stream_id"] == "b" and err["exc_info"]


def test_an_on_error_that_raises_is_logged_and_the_tick_goes_on() -> None:
    pacer = Pacer(clock=lambda: 0.0)
    calls: list[str] = []

    def broken(now: float) -> None:
        raise ValueError("tick bug")

    def bad_handler(exc: BaseException) -> None:
        raise RuntimeError("handler bug")

    pacer.register("b", broken, on_error=bad_handler)
    pacer.register("c", lambda now: calls.append("c"))
    with structlog.testing.capture_logs() as logs:
        pacer.run_tick(0.0)
    assert calls == ["c"]
    assert [(r["event"], r["stream_id"], r["log_level"]) for r in logs] == [
        ("pacer tick failed, stream removed", "b", "error"),
        ("pacer on_error callback failed", "b", "error"),
    ]
    assert all(r["exc_info"] for r in logs)


def test_tick_fn_may_unregister_others_and_register_new_streams() -> None:
    pacer = Pacer(clock=lambda: 0.0)
    calls: list[str] = []

    def first(now: float) -> None:
        calls.append("first")
        pacer.unregister("second")
        if not pacer.is_registered("third"):
            pacer.register("third", lambda now: calls.append("third"))

    pacer.register("first", first)
    pacer.register("second", lambda now: calls.append("second"))
    pacer.run_tick(0.0)
    assert calls == ["first"]  # "second" removed mid-tick, "third" starts next tick
    pacer.run_tick(0.02)
    assert calls == ["first", "first", "third"]


def test_register_twice_is_an_error_and_unregister_is_tolerant() -> None:
    pacer = Pacer()
    pacer.register("x", lambda now: None)
    with pytest.raises(ValueError):
        pacer.register("x", lambda now: None)
    assert pacer.unregister("x") is True
    assert pacer.unregister("x") is False
    with pytest.raises(ValueError):
        Pacer(spin_s=0.5)


def test_a_tick_runs_every_tick_fn_then_every_write_then_every_sent_then_every_poll() -> None:
    # Every call's frame leaves at the same point of each tick only if no stream's
    # state machine, bookkeeping or inbound reading runs between two writes.
    pacer = Pacer(clock=lambda: 0.0)
    order: list[tuple[str, str]] = []
    for name in ("a", "b", "c"):
        pacer.register(
            name,
            lambda now, n=name: order.append(("tick", n)) or n.encode(),
            write_fn=lambda frame: order.append(("write", frame.decode())),
            sent_fn=lambda frame, now: order.append(("sent", frame.decode())),
            poll_fn=lambda n=name: order.append(("poll", n)),
        )
    pacer.run_tick(0.0)
    assert order == [(phase, n) for phase in ("tick", "write", "sent", "poll") for n in "abc"]


def test_a_stream_whose_poll_fails_is_removed_and_its_owner_told() -> None:
    pacer = Pacer(clock=lambda: 0.0)
    failures: list[BaseException] = []
    polled: list[str] = []
    bug = ValueError("inbound bug")

    def bad_poll() -> None:
        raise bug

    pacer.register("bad", lambda now: None, poll_fn=bad_poll, on_error=failures.append)
    pacer.register("good", lambda now: None, poll_fn=lambda: polled.append("good"))
    with structlog.testing.capture_logs():
        pacer.run_tick(0.0)
        pacer.run_tick(0.02)
    assert failures == [bug] and not pacer.is_registered("bad")
    assert polled == ["good", "good"]


def test_a_stream_whose_write_fails_is_removed_before_its_sent_and_others_go_on() -> None:
    pacer = Pacer(clock=lambda: 0.0)
    written: list[bytes] = []
    sent: list[bytes] = []
    failures: list[BaseException] = []
    broken = BrokenPipeError("peer gone")

    def write(frame: bytes) -> None:
        if frame == b"b":
            raise broken
        written.append(frame)

    for name in ("a", "b", "c"):
        pacer.register(name, lambda now, n=name: n.encode(), write_fn=write,
                       sent_fn=lambda frame, now: sent.append(frame), on_error=failures.append)
    with structlog.testing.capture_logs():
        pacer.run_tick(0.0)
        pacer.run_tick(0.02)
    assert written == [b"a", b"c", b"a", b"c"] and sent == written
    assert failures == [broken] and not pacer.is_registered("b")
    assert pacer.stats.tick_errors == 1


def test_a_tick_fn_returning_nothing_writes_nothing() -> None:
    pacer = Pacer(clock=lambda: 0.0)
    written: list[bytes] = []
    pacer.register("quiet", lambda now: None, write_fn=written.append)
    pacer.run_tick(0.0)
    assert written == []


def test_a_phase_puts_the_grid_at_that_fraction_of_the_period_on_the_shared_clock() -> None:
    from voiceline.core.pacer import first_deadline

    assert first_deadline(1.013, 0.020, None) == 1.013  # no phase: start now
    assert first_deadline(1.013, 0.020, 0.0) == pytest.approx(1.020)
    assert first_deadline(1.013, 0.020, 0.5) == pytest.approx(1.030)
    assert first_deadline(1.030, 0.020, 0.5) == pytest.approx(1.030)  # already on the grid
    # Two processes starting at different moments land half a period apart.
    a, b = first_deadline(5.0001, 0.020, 0.0), first_deadline(7.3337, 0.020, 0.5)
    assert ((b - a) / 0.020) % 1.0 == pytest.approx(0.5)
    with pytest.raises(ValueError, match="phase"):
        Pacer(phase=1.0)


def test_after_tick_runs_once_after_every_poll_and_a_failure_there_is_logged_and_counted() -> None:
    order: list[str] = []
    calls = [0]

    def after() -> None:
        calls[0] += 1
        order.append("after")
        if calls[0] == 1:
            raise RuntimeError("housekeeping bug")

    pacer = Pacer(clock=lambda: 0.0, after_tick=after)
    pacer.register("a", lambda now: b"a", write_fn=lambda f: order.append("write"),
                   poll_fn=lambda: order.append("poll"))
    with structlog.testing.capture_logs() as logs:
        pacer.run_tick(0.0)
        pacer.run_tick(0.02)
    assert order == ["write", "poll", "after"] * 2
    assert pacer.is_registered("a") and pacer.stats.tick_errors == 1
    assert [r["event"] for r in logs] == ["pacer after_tick failed"]


class RecordingWindow:
    """Idempotent like RealtimeWindow: records a leave only from inside a window."""

    enabled = True

    def __init__(self, order: list[str]) -> None:
        self.order = order
        self.inside = False

    def enter(self) -> None:
        if not self.inside:
            self.inside = True
            self.order.append("enter")

    def leave(self) -> None:
        if self.inside:
            self.inside = False
            self.order.append("leave")


def test_the_realtime_window_covers_the_ticks_and_writes_and_closes_before_the_polls() -> None:
    # The writes are what must leave on time; the inbound side's reading, history and
    # housekeeping run at the normal priority so they never hold a core at real time.
    order: list[str] = []
    window = RecordingWindow(order)
    pacer = Pacer(clock=lambda: 0.0, realtime=window, after_tick=lambda: order.append("after"))
    pacer.register("a", lambda now: order.append("tick") or b"a",
                   write_fn=lambda f: order.append("write"), poll_fn=lambda: order.append("poll"))
    window.enter()  # as the timer does before the spin
    pacer.run_tick(0.0)
    assert order == ["enter", "tick", "write", "leave", "poll", "after"]


async def test_the_timer_enters_the_window_before_the_spin_and_leaves_it_even_when_the_tick_crashes() -> None:
    import asyncio

    order: list[str] = []
    pacer = Pacer(realtime=RecordingWindow(order))
    pacer.register("a", lambda now: b"a", write_fn=lambda f: order.append("write"))
    crashes = [0]
    real_run_tick = pacer.run_tick

    def run_tick(now: float) -> None:
        if not crashes[0]:
            crashes[0] += 1
            order.append("crash")
            raise RuntimeError("pacer bug")
        real_run_tick(now)

    pacer.run_tick = run_tick  # type: ignore[method-assign]
    with structlog.testing.capture_logs() as logs:
        pacer.start()
        await asyncio.sleep(0.05)
        await pacer.stop()
    assert order[:6] == ["enter", "crash", "leave", "enter", "write", "leave"], (order, pacer.stats)
    assert "pacer tick crashed" in [r["event"] for r in logs]


async def test_no_stream_no_window() -> None:
    import asyncio

    order: list[str] = []
    pacer = Pacer(realtime=RecordingWindow(order))
    pacer.start()
    await asyncio.sleep(0.05)
    await pacer.stop()
    assert order == []


async def test_every_timer_firing_while_streams_play_lands_a_tick() -> None:
    # The spin must end at or after the deadline as the pacer's clock reads it: a
    # firing that wakes a hair early finds no tick due and re-arms for the same
    # deadline, and that second timer runs behind every ready I/O callback.
    import asyncio

    pacer = Pacer()
    pacer.register("a", lambda now: b"a", write_fn=lambda f: None)
    firings = [0]
    on_timer = pacer._on_timer

    def counted(loop: asyncio.AbstractEventLoop) -> None:
        firings[0] += 1
        on_timer(loop)

    pacer._on_timer = counted  # type: ignore[method-assign]
    pacer.start()
    await asyncio.sleep(0.3)
    await pacer.stop()
    assert pacer.stats.ticks >= 10
    assert firings[0] == pacer.stats.ticks
