"""Stopping and storage faults with calls on the line: SIGTERM drains live calls, and
a history database that becomes unavailable loses no record."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time

import labkit
import labload
import pytest
from conftest import (
    assert_calls_ended_cleanly,
    assert_nothing_left_in_asterisk,
    history_rows,
    history_url,
    http_get,
    wait_until,
)

# A failed case must not leave channels or bridges behind for the next one.
pytestmark = pytest.mark.usefixtures("swept_asterisk")

LIVE_CALLS = 5
CALL_S = 9.0


def _health() -> dict:
    status, body = http_get("/health")
    return json.loads(body) if status == 200 else {}


def test_sigterm_drains_live_calls_then_exits_zero(asterisk, engine, tmp_path):
    proc = engine(mode="ari", provider="echo")
    audio = labkit.make_speech_ulaw("Draining calls one by one, please hold the line.", tmp_path / "a.ulaw",
                                    seconds=CALL_S - 1)
    outcome: dict = {}
    load = threading.Thread(target=lambda: outcome.setdefault("r", labload.place_call_load(
        "stasis", audio, CALL_S, calls=LIVE_CALLS, rate=LIVE_CALLS, limit=LIVE_CALLS, call_dir=tmp_path / "load")))
    load.start()
    try:
        wait_until(lambda: _health().get("active_calls") == LIVE_CALLS, 15, f"{LIVE_CALLS} live calls")
        signalled_at = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)

        # Draining: not ready for new calls, the live ones go on.
        ready = wait_until(lambda: http_get("/ready")[0] == 503 and http_get("/ready"), 3, "/ready to turn 503")
        print(f"\n/ready while draining: {ready[0]} {ready[1][:200]}")
        time.sleep(1.0)
        assert proc.proc.poll() is None, "the engine exited instead of draining its calls"
        assert _health().get("active_calls") == LIVE_CALLS, "live calls were cut while draining"
    finally:
        load.join(CALL_S + 60)
    result = outcome["r"]
    assert result.ok, f"SIPp: {result.successful}/{result.calls} ok, {result.failed} failed: {result.errors()}"
    # Every caller hung up by themselves: nobody was cut off by the shutdown.
    assert result.hangups == {"local": LIVE_CALLS, "remote": 0}, result.hangups
    code = proc.proc.wait(30)
    drained_s = time.monotonic() - signalled_at
    print(f"engine exited {code} {drained_s:.1f} s after SIGTERM")
    assert code == 0
    ended = proc.events("call_ended")
    assert len(ended) == LIVE_CALLS
    assert all("shutting down" not in e["reason"] for e in ended), [e["reason"] for e in ended]
    rows = history_rows(history_url(tmp_path))
    assert {e["call_id"] for e in ended} <= set(rows), "a drained call has no history record"
    assert_nothing_left_in_asterisk(asterisk)


def test_history_database_unavailable_then_back_loses_no_record(asterisk, engine, tmp_path):
    """The database's directory turns read-only (a read-only remount, as root can
    still not write through it) while calls go on, then writable again."""
    data = tmp_path / "history"
    data.mkdir()
    url = f"sqlite:///{data}/calls.db"
    proc = engine(mode="ari", provider="echo", VOICELINE_HISTORY_URL=url)
    audio = labkit.make_speech_ulaw("One short call for the history.", tmp_path / "a.ulaw", seconds=2)

    def call(name: str) -> str:
        before = {e["call_id"] for e in proc.events("call_summary")}
        result = labkit.place_call("stasis", audio, 2.5, capture=False, call_dir=tmp_path / name)
        assert result.ok, result.errors()
        summaries = proc.wait_for("call_summary", count=len(before) + 1)
        return next(e["call_id"] for e in summaries if e["call_id"] not in before)

    first = call("c1")
    wait_until(lambda: _health().get("history", {}).get("written") == 1, 10, "the first record to be written")
    subprocess.run(["mount", "--bind", str(data), str(data)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(data)], check=True)
        during = [call("c2"), call("c3")]
        status = wait_until(lambda: (h := _health().get("history", {})).get("failing") and h, 10,
                            "/health to report the history failing")
        print(f"\nhistory during the outage: {status}")
        assert status["pending"] == 2 and status["written"] == 1
    finally:
        subprocess.run(["umount", str(data)], check=True)
    wait_until(lambda: _health().get("history", {}).get("written") == 3, 40, "the buffered records to be written")
    last = call("c4")
    assert_calls_ended_cleanly(proc, asterisk, url, [first, *during, last])
    assert _health()["history"]["dropped"] == 0
    assert proc.events("call history database unavailable, buffering records")
    assert proc.events("call history database back, buffered records written")
