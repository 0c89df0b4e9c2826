"""When full garbage collections may run (voiceline.gc_policy)."""

from __future__ import annotations

import gc

import pytest
import structlog

from voiceline.gc_policy import FullCollectionPolicy, GcKeeper


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
