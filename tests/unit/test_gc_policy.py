"""When full garbage collections may run (voiceline.gc_policy)."""

from __future__ import annotations

import gc

import pytest
import structlog

from voiceline.core.pacer import Pacer
from voiceline.gc_policy import FullCollectionPolicy, GcKeeper, YoungCollectionPolicy


def test_a_full_collection_is_due_once_per_idle_spell() -> None:
    policy = FullCollectionPolicy(900.0, now=0.0)
    assert policy.on_active_calls(3) is None
    assert policy.on_active_calls(0) == "idle"
    assert policy.on_active_calls(0) is None  # still the same idle spell
    assert policy.on_active_calls(1) is None
    assert policy.on_active_calls(0) == "idle"


def test_a_never_idle_process_still_collects_after_the_longest_wait() -> None:
    policy = FullCollectionPolicy(900.0, now=100.0)
    assert policy.overdue(999.9) is None
    assert policy.overdue(1000.0) == "interval"
    policy.collected(1000.0)
    assert policy.overdue(1899.0) is None


def test_the_longest_wait_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_interval_s"):
        FullCollectionPolicy(0.0, now=0.0)


def test_install_stops_automatic_full_collections_and_uninstall_restores_them() -> None:
    before = gc.get_threshold()
    now = [0.0]
    keeper = GcKeeper(60.0, clock=lambda: now[0])
    try:
        keeper.install()
        young, middle, full = gc.get_threshold()
        assert (young, middle) == before[:2] and full > 10**9
    finally:
        keeper.uninstall()
        gc.unfreeze()
    assert gc.get_threshold() == before


def test_the_keeper_collects_when_idle_and_when_overdue_and_says_why() -> None:
    now = [0.0]
    keeper = GcKeeper(60.0, clock=lambda: now[0])
    with structlog.testing.capture_logs() as logs:
        keeper.calls_changed(2)
        keeper.poll()
        assert keeper.collections == 0
        keeper.calls_changed(0)
        now[0] = 59.0
        keeper.poll()  # the idle collection reset the wait
        now[0] = 60.0
        keeper.poll()
    assert keeper.collections == 2
    assert [(r["reason"], r["log_level"]) for r in logs] == [("idle", "debug"), ("interval", "info")]
    assert all(r["event"] == "gc_full_collection" and r["pause_ms"] >= 0 for r in logs)


def test_a_young_collection_is_due_when_the_next_tick_could_reach_the_threshold() -> None:
    policy = YoungCollectionPolicy(headroom=2.0)
    # 100 new objects per tick, threshold 700: at 400 the next two ticks' worth still
    # fits (400 + 2 * 100 < 700), at 500 it does not.
    assert [policy.due(count, 700) for count in (100, 200, 300, 400)] == [False] * 4
    assert policy.due(500, 700) is True
    policy.collected()
    assert policy.due(100, 700) is False


def test_the_young_policy_remembers_a_burst_and_forgets_it_slowly() -> None:
    policy = YoungCollectionPolicy(headroom=2.0)
    assert policy.due(100, 700) is False
    assert policy.due(400, 700) is True  # a burst of 300: two more would overflow
    policy.collected()
    assert policy.due(50, 700) is False
    assert 250 < policy.expected_growth < 300  # the burst is still expected, a bit less
    # A count below the last one means a collection ran in between: all of it is new.
    policy = YoungCollectionPolicy(headroom=2.0)
    policy.due(100, 2000)
    policy.due(95, 2000)
    assert policy.expected_growth == 95


def test_young_collections_run_after_the_tick_not_inside_it() -> None:
    # Surviving allocations in the tick (buffers, futures, records) used to reach the
    # young threshold inside the tick about three times a second per process, and the
    # 0.4-1.5 ms collection then landed between two calls' writes.
    keeper = GcKeeper(60.0, clock=lambda: 0.0)
    pacer = Pacer(clock=lambda: 0.0, after_tick=keeper.collect_young_if_due)
    kept: list[dict[str, int]] = []
    in_tick = [False]
    starts: list[tuple[int, bool]] = []

    def tick(now: float) -> bytes:
        in_tick[0] = True
        kept.extend({"n": i} for i in range(120))
        return b"frame"

    def poll() -> None:
        kept.extend({"n": i} for i in range(30))
        in_tick[0] = False

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info["generation"] < 2:
            starts.append((info["generation"], in_tick[0]))

    pacer.register("call", tick, write_fn=lambda frame: None, poll_fn=poll)
    keeper.install()
    gc.callbacks.append(on_gc)
    try:
        for k in range(200):
            pacer.run_tick(k * 0.02)
    finally:
        gc.callbacks.remove(on_gc)
        keeper.uninstall()
        gc.unfreeze()
    assert starts, "the test allocates enough to need young collections"
    assert [s for s in starts if s[1]] == []
    assert keeper.young_collections == len(starts)


def test_young_collections_wait_for_install() -> None:
    keeper = GcKeeper(60.0, clock=lambda: 0.0)
    keeper.young.due(10**6, 700)  # anything would be due
    keeper.collect_young_if_due()
    assert keeper.young_collections == 0
