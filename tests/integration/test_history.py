"""Call history on real SQLite files: writes, queries, an outage and its recovery."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog.testing

from voiceline.history_format import format_call, format_call_list
from voiceline.telemetry.history import CallHistory, HistoryStore

T0 = 1_712_345_678.0  # 2024-04-05T19:34:38Z


def call_record(call_id: str, started_at: float = T0, **extra) -> dict:
    record = {
        "call_id": call_id,
        "started_at": started_at,
        "ended_at": started_at + 42.5,
        "mode": "ari",
        "provider": "deepgram",
        "end_reason": "caller-hangup",
        "caller_id": "+4930123456",
        "metrics": {"streaming": {"turns": 3, "pauses": 1, "depth": {"min": 0, "p95": 9}}},
        "transcript": [{"role": "agent", "text": "Hello!"}, {"role": "user", "text": "Hi."}],
        "tuning_hint": "streaming.min_start_ms 120 -> 260: 1 pause(s)",
        "timeline": [[0, "turn_start", "turn1"], [120, "agent_on", None], [300, "depth", 6]],
    }
    record.update(extra)
    return record


async def eventually(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def fast_history(url: str, **kwargs) -> CallHistory:
    return CallHistory(url, retry_initial_s=0.01, retry_max_s=0.05, **kwargs)


# ---- writing and reading ---------------------------------------------------------------


async def test_records_are_written_and_read_back(tmp_path: Path):
    url = f"sqlite:///{tmp_path}/data/calls.db"  # the data/ directory does not exist yet
    history = fast_history(url)
    await history.start()
    history.record(call_record("c1", frames_in=1000, inbound_dropped=0))
    await history.stop(flush_timeout_s=5)
    assert (tmp_path / "data" / "calls.db").exists()

    row = HistoryStore(url).get_call("c1")
    assert row == {
        "call_id": "c1",
        "started_at": "2024-04-05T19:34:38+00:00",
        "ended_at": "2024-04-05T19:35:20.500000+00:00",
        "duration_s": 42.5,  # computed from start and end
        "mode": "ari",
        "provider": "deepgram",
        "end_reason": "caller-hangup",
        "caller_id": "+4930123456",
        # keys outside the columns (call_summary's counters) land in metrics
        "metrics": {"streaming": {"turns": 3, "pauses": 1, "depth": {"min": 0, "p95": 9}}, "frames_in": 1000,
                    "inbound_dropped": 0},
        "transcript": [{"role": "agent", "text": "Hello!"}, {"role": "user", "text": "Hi."}],
        "tuning_hint": "streaming.min_start_ms 120 -> 260: 1 pause(s)",
        "timeline": [[0, "turn_start", "turn1"], [120, "agent_on", None], [300, "depth", 6]],
    }
    assert history.status()["written"] == 1


async def test_list_is_newest_first_with_limit_and_offset(tmp_path: Path):
    url = f"sqlite:///{tmp_path}/calls.db"
    history = fast_history(url)
    await history.start()
    for i in range(5):
        history.record(call_record(f"c{i}", started_at=T0 + i * 60))
    await history.stop()
    store = HistoryStore(url)
    assert [r["call_id"] for r in store.list_calls(limit=3)] == ["c4", "c3", "c2"]
    assert [r["call_id"] for r in store.list_calls(limit=3, offset=3)] == ["c1", "c0"]
    assert "timeline" not in store.list_calls(limit=1)[0]  # the list leaves the bulky columns out
    assert store.get_call("missing") is None
    assert history.list_calls(limit=1)[0]["call_id"] == "c4"  # the same queries on the writer
    store.close()


async def test_same_call_recorded_twice_keeps_the_last_record(tmp_path: Path):
    url = f"sqlite:///{tmp_path}/calls.db"
    history = fast_history(url)
    await history.start()
    history.record(call_record("c1", end_reason="first"))
    history.record(call_record("c1", end_reason="second"))  # same batch
    await history.stop()
    history = fast_history(url)
    await history.start()
    history.record(call_record("c1", end_reason="third"))  # later batch
    await history.stop()
    store = HistoryStore(url)
    assert [r["end_reason"] for r in store.list_calls()] == ["third"]


async def test_records_given_before_start_are_written(tmp_path: Path):
    url = f"sqlite:///{tmp_path}/calls.db"
    history = fast_history(url)
    history.record(call_record("early"))
    await history.start()
    await history.stop()
    assert HistoryStore(url).get_call("early") is not None


async def test_record_needs_a_call_id(tmp_path: Path):
    history = fast_history(f"sqlite:///{tmp_path}/calls.db")
    with pytest.raises(ValueError, match="call_id"):
        history.record({"provider": "echo"})


async def test_unstorable_record_is_dropped_and_logged_without_blocking_others(tmp_path: Path):
    url = f"sqlite:///{tmp_path}/calls.db"
    history = fast_history(url)
    await history.start()
    with structlog.testing.capture_logs() as logs:
        history.record({**call_record("bad"), "started_at": "not a time"})
        history.record(call_record("good"))
        await history.stop()
    assert [r["call_id"] for r in HistoryStore(url).list_calls()] == ["good"]
    assert history.dropped == 1
    assert any(e["event"] == "call record cannot be stored, dropped" and e["call_id"] == "bad" for e in logs)


async def test_values_json_cannot_hold_are_stored_readably(tmp_path: Path):
    import numpy as np

    url = f"sqlite:///{tmp_path}/calls.db"
    history = fast_history(url)
    await history.start()
    history.record(call_record("c1", metrics={"p95": np.int64(7), "mean": float("nan"), "odd": {1, 2},
                                                       "arr": np.array([1, 2])}))
    await history.stop()
    metrics = HistoryStore(url).get_call("c1")["metrics"]
    assert metrics["p95"] == 7 and metrics["mean"] is None and sorted(metrics["odd"]) == [1, 2]
    assert metrics["arr"] == [1, 2]


# ---- outage ------------------------------------------------------------------------------


async def test_outage_buffers_records_and_writes_them_when_the_database_is_back(tmp_path: Path):
    blocker = tmp_path / "db"
    blocker.write_text("a file where the database directory should be")  # unwritable for SQLite
    url = f"sqlite:///{blocker}/calls.db"
    history = fast_history(url)
    await history.start()
    with structlog.testing.capture_logs() as logs:
        started = time.perf_counter()
        for i in range(3):
            history.record(call_record(f"c{i}", started_at=T0 + i))
        assert time.perf_counter() - started < 0.05  # record() never waits for the database
        await eventually(lambda: history.status()["failing"])
        status = history.status()
        assert status["pending"] == 3 and status["written"] == 0
        assert "FileExistsError" in status["last_error"] or "NotADirectoryError" in status["last_error"]

        blocker.unlink()  # the database becomes usable again
        await eventually(lambda: history.pending == 0)
    assert not history.status()["failing"]
    assert history.status()["written"] == 3
    events = [e["event"] for e in logs]
    assert events.count("call history database unavailable, buffering records") == 1  # not once per retry
    assert "call history database back, buffered records written" in events
    await history.stop()
    assert [r["call_id"] for r in HistoryStore(url).list_calls()] == ["c2", "c1", "c0"]


async def test_outage_buffer_is_bounded_and_drops_the_oldest(tmp_path: Path):
    blocker = tmp_path / "db"
    blocker.write_text("in the way")
    url = f"sqlite:///{blocker}/calls.db"
    history = fast_history(url, max_buffered=3)
    await history.start()
    history.record(call_record("c0"))
    await eventually(lambda: history.status()["failing"])
    with structlog.testing.capture_logs() as logs:
        for i in range(1, 5):
            history.record(call_record(f"c{i}", started_at=T0 + i))
    assert history.dropped == 2 and history.pending == 3
    assert [e["event"] for e in logs].count("call history buffer full, oldest record dropped") == 1
    blocker.unlink()
    await history.stop(flush_timeout_s=5)
    assert sorted(r["call_id"] for r in HistoryStore(url).list_calls()) == ["c2", "c3", "c4"]


async def test_database_file_deleted_under_the_writer_is_recreated_and_nothing_later_is_lost(tmp_path: Path):
    # The pooled SQLite connection still points at the deleted file: every write
    # failed with "attempt to write a readonly database" for the rest of the run, and
    # the records were lost at shutdown although the path was usable again.
    url = f"sqlite:///{tmp_path}/calls.db"
    history = fast_history(url)
    await history.start()
    history.record(call_record("c0"))
    await eventually(lambda: history.written == 1)
    (tmp_path / "calls.db").unlink()  # the file is removed (or replaced) under the running engine
    history.record(call_record("c1", started_at=T0 + 1))
    history.record(call_record("c2", started_at=T0 + 2))
    await eventually(lambda: history.written == 3)
    await history.stop(flush_timeout_s=5)
    assert [r["call_id"] for r in HistoryStore(url).list_calls()] == ["c2", "c1"]


async def test_record_with_an_impossible_time_is_dropped_alone_and_the_writer_goes_on(tmp_path: Path):
    # datetime.fromtimestamp(1e20) raises OverflowError, which the writer did not
    # expect: it crashed, losing the whole batch and every record after it.
    url = f"sqlite:///{tmp_path}/calls.db"
    history = fast_history(url)
    history.record(call_record("before"))
    history.record(call_record("bad", started_at=1e20))
    history.record(call_record("after", started_at=T0 + 1))
    with structlog.testing.capture_logs() as logs:
        await history.start()
        await eventually(lambda: history.pending == 0)
        history.record(call_record("later", started_at=T0 + 2))
        await eventually(lambda: history.written == 3)
    await history.stop(flush_timeout_s=5)
    assert sorted(r["call_id"] for r in HistoryStore(url).list_calls()) == ["after", "before", "later"]
    dropped = [e for e in logs if e["event"] == "call record cannot be stored, dropped"]
    assert [e["call_id"] for e in dropped] == ["bad"] and "out of range" in dropped[0]["error"]
    assert history.dropped == 1


async def test_unexpected_write_failure_keeps_the_batch_and_retries(tmp_path: Path):
    url = f"sqlite:///{tmp_path}/calls.db"
    history = fast_history(url)
    real_write = history.store.write
    failures = []

    def flaky_write(rows):
        if not failures:
            failures.append(len(rows))
            raise RuntimeError("driver bug")
        real_write(rows)

    history.store.write = flaky_write
    await history.start()
    with structlog.testing.capture_logs() as logs:
        history.record(call_record("c1"))
        history.record(call_record("c2", started_at=T0 + 1))
        await eventually(lambda: history.written == 2)
    await history.stop(flush_timeout_s=5)
    assert failures == [2]
    assert sorted(r["call_id"] for r in HistoryStore(url).list_calls()) == ["c1", "c2"]
    failed = [e for e in logs if e["event"] == "call history write failed unexpectedly, will retry"]
    assert len(failed) == 1 and failed[0]["exc_info"] is not None


async def test_stop_during_an_outage_retries_promptly_instead_of_sleeping_the_long_backoff(tmp_path: Path):
    blocker = tmp_path / "db"
    blocker.write_text("in the way")
    # Backoff already at its 30 s maximum when shutdown begins.
    history = CallHistory(f"sqlite:///{blocker}/calls.db", retry_initial_s=30.0, retry_max_s=30.0)
    await history.start()
    history.record(call_record("c1"))
    await eventually(lambda: history.status()["failing"])

    async def database_back_soon():
        await asyncio.sleep(0.3)
        blocker.unlink()

    back = asyncio.create_task(database_back_soon())
    started = time.perf_counter()
    await history.stop(flush_timeout_s=5)
    await back
    assert time.perf_counter() - started < 4
    assert [r["call_id"] for r in HistoryStore(f"sqlite:///{blocker}/calls.db").list_calls()] == ["c1"]


async def test_stop_gives_up_after_the_flush_timeout_and_says_so(tmp_path: Path):
    blocker = tmp_path / "db"
    blocker.write_text("in the way")
    history = fast_history(f"sqlite:///{blocker}/calls.db")
    await history.start()
    history.record(call_record("c1"))
    with structlog.testing.capture_logs() as logs:
        started = time.perf_counter()
        await history.stop(flush_timeout_s=0.2)
    assert time.perf_counter() - started < 2
    lost = [e for e in logs if e["event"] == "call history not flushed before shutdown, records lost"]
    assert lost and lost[0]["records"] == 1


async def test_bad_url_is_a_configuration_error():
    with pytest.raises(Exception, match="Could not parse"):
        CallHistory("not a url")
    history = CallHistory("nosuchdb://localhost/x")
    with pytest.raises(Exception, match="nosuchdb"):
        await history.start()


# ---- CLI formatting -------------------------------------------------------------------------


def test_format_call_list_is_a_table():
    rows = [
        {"call_id": "1712345678.42", "started_at": "2024-04-05T19:34:38+00:00", "duration_s": 42.5,
         "provider": "deepgram", "end_reason": "caller-hangup", "tuning_hint": "no change needed: 3 turn(s)"},
        {"call_id": "c2", "started_at": None, "duration_s": None, "provider": None, "end_reason": None,
         "tuning_hint": None},
    ]
    assert format_call_list(rows).splitlines() == [
        "CALL ID        STARTED (UTC)        DURATION  PROVIDER  OUTCOME        HINT",
        "1712345678.42  2024-04-05 19:34:38  42.5s     deepgram  caller-hangup  no change needed: 3 turn(s)",
        "c2             -                    -         -         -              -",
    ]
    assert format_call_list([]) == "no calls recorded"


def test_format_call_shows_the_whole_record():
    text = format_call({**call_record("c1"), "started_at": "2024-04-05T19:34:38+00:00", "duration_s": 42.5})
    lines = text.splitlines()
    assert lines[0] == "call c1"
    assert "  provider:    deepgram" in lines
    assert "  hint:        streaming.min_start_ms 120 -> 260: 1 pause(s)" in lines
    assert "  streaming.depth.p95: 9" in lines
    assert "  agent: Hello!" in lines
    assert lines[-1] == "timeline: 3 events (agent_on 1, depth 1, turn_start 1)"
