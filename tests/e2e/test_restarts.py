"""The other side goes away mid-call: Asterisk restarted under a live call, and the
engine killed (SIGKILL) under a live call while Asterisk keeps running."""

from __future__ import annotations

import labkit
import labload
import pytest
from conftest import (
    assert_calls_ended_cleanly,
    assert_nothing_left_in_asterisk,
    history_url,
    http_get,
    wait_until,
)

# A failed case must not leave channels or bridges behind for the next one.
pytestmark = pytest.mark.usefixtures("swept_asterisk")

PHRASE = "Hello, this is a test of the voiceline echo path. One, two, three, four, five."


def _active_calls() -> int:
    import json

    status, body = http_get("/health")
    return json.loads(body)["active_calls"] if status == 200 else -1


def _echo_call(tmp_path, name: str):
    audio = labkit.make_speech_ulaw(PHRASE, tmp_path / f"{name}.ulaw", seconds=4)
    result = labkit.place_call("stasis", audio, 5.0, call_dir=tmp_path / name)
    assert result.ok, result.errors()
    lag_ms, peak = labkit.correlate_delay(result.sent.samples, result.received.samples)
    assert peak > 0.8, f"the call after the restart does not echo (peak {peak:.2f})"
    return result


def test_asterisk_restarted_under_a_live_call(asterisk, engine, tmp_path):
    proc = engine(mode="ari", provider="echo")
    audio = labkit.make_speech_ulaw(PHRASE, tmp_path / "long.ulaw", seconds=12)
    with labload.CallInBackground("stasis", audio, 12.0, capture=False, call_dir=tmp_path / "live") as live:
        first = proc.wait_for("call_started", timeout=10)[0]["call_id"]
        wait_until(lambda: _active_calls() == 1, 10, "the call to be live")

        asterisk.force_stop()
        ended = proc.wait_for("call_ended", call_id=first, timeout=15)[0]
        print(f"\ncall under the restart ended: {ended['reason']!r}")
        proc.wait_for("ari.events.disconnected", timeout=10)
        assert proc.proc.poll() is None, "engine exited when Asterisk went away"
        asterisk.start()
        proc.wait_for("ari.events.reconnected", timeout=30)
        live.result()  # SIPp's own outcome does not matter: its peer vanished

    _echo_call(tmp_path, "after")
    second = [e["call_id"] for e in proc.events("call_started") if e["call_id"] != first]
    assert len(second) == 1
    assert_calls_ended_cleanly(proc, asterisk, history_url(tmp_path), [first, *second])


def test_engine_killed_under_a_live_call_next_engine_cleans_up(asterisk, engine, tmp_path):
    old = engine(mode="ari", provider="echo")
    audio = labkit.make_speech_ulaw(PHRASE, tmp_path / "long.ulaw", seconds=20)
    with labload.CallInBackground("stasis", audio, 20.0, capture=False, call_dir=tmp_path / "live") as live:
        old.wait_for("call_started", timeout=10)
        wait_until(lambda: _active_calls() == 1, 10, "the call to be live")
        old.proc.kill()
        old.proc.wait(5)
        channels = asterisk.ari_get("channels")
        bridges = asterisk.ari_get("bridges")
        print(f"\nleft by the killed engine: {len(channels)} channel(s), {len(bridges)} bridge(s)")
        assert bridges, "test setup: the killed engine's bridge should still be there"

        new = engine(mode="ari", provider="echo")
        # The new engine finds what the old one left in its Stasis app and releases it:
        # the caller is hung up (well before its 20 s), the bridge destroyed.
        assert_nothing_left_in_asterisk(asterisk, timeout=10)
        result = live.result()
        assert result.hangup == "remote", "the orphaned caller was not hung up"
        assert result.duration_s < 18

    _echo_call(tmp_path, "after")
    [call_id] = [e["call_id"] for e in new.events("call_started")]
    assert_calls_ended_cleanly(new, asterisk, history_url(tmp_path), [call_id])
