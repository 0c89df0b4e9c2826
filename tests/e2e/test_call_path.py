"""Real SIP calls (sipp) through the real lab Asterisk 22 to the engine, echo provider.

What the caller receives is captured with tshark and compared with what it sent."""

from __future__ import annotations

import time

import labkit
import pytest
from conftest import assert_paced, asterisk_bridges, asterisk_channels

PHRASE = "Hello, this is a test of the voiceline echo path. One, two, three, four, five."
ECHO_DELAY_MS = 500  # providers.echo.delay_ms in config/ai-agent.yaml


def _wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _to_caller(result) -> list:
    return [p for p in labkit.read_rtp_packets(result.pcap) if p.dst_port == labkit.SIPP_RTP_PORT]


def _echo_call(exten: str, tmp_path):
    audio = labkit.make_speech_ulaw(PHRASE, tmp_path / "phrase.ulaw", seconds=5)
    result = labkit.place_call(exten, audio, duration_s=6.5)
    assert result.ok, f"sipp failed: {result.errors()}"
    return result


def _assert_echoed(result, witness) -> None:
    sent, received = result.sent, result.received
    assert sent.packets >= 240
    # The engine paces 20 ms frames continuously; nothing lost on the way to the caller.
    assert received.packets >= 290, f"caller received only {received.packets} RTP packets"
    assert received.lost == 0
    # Timing as the caller hears it; a gap is allowed only where the whole machine
    # stood still (lab/stallwitness.py), never where the engine was late.
    assert_paced(_to_caller(result), witness)
    lag_ms, peak = labkit.correlate_delay(sent.samples, received.samples)
    # The caller hears itself: same audio, shifted by the echo delay plus the start buffer.
    assert peak > 0.8, f"received audio does not match what was sent (peak {peak:.2f})"
    assert ECHO_DELAY_MS <= lag_ms <= ECHO_DELAY_MS + 400, f"echo came back after {lag_ms} ms"


@pytest.mark.parametrize("mode,exten", [("ari", "stasis"), ("audiosocket", "audiosocket")])
def test_echo_call_returns_audio_and_cleans_up(asterisk, engine, stall_witness, tmp_path, mode, exten):
    proc = engine(mode=mode, provider="echo")
    result = _echo_call(exten, tmp_path)
    _assert_echoed(result, stall_witness)

    ended = proc.wait_for("call_ended")
    summary = proc.wait_for("call_summary")[0]
    assert summary["provider"] == "echo" and summary["mode"] == mode
    assert summary["frames_in"] >= 240 and summary["frames_to_provider"] >= 240
    assert summary["codec"]["wire"] == "slin16@8000"
    assert len(proc.events("STREAMING STARTED")) == 1
    assert ended[0]["call_id"] == summary["call_id"]
    # Nothing left behind on the Asterisk side either.
    _wait_until(lambda: asterisk_channels(asterisk) == 0, 5, "Asterisk channels to go")
    assert asterisk_bridges(asterisk) == []


def test_engine_survives_asterisk_restart(asterisk, engine, stall_witness, tmp_path):
    proc = engine(mode="ari", provider="echo")
    asterisk.force_stop()
    proc.wait_for("ari.events.disconnected", timeout=10)
    asterisk.start()
    proc.wait_for("ari.events.reconnected", timeout=20)
    assert proc.proc.poll() is None, "engine exited when Asterisk went away"
    result = _echo_call("stasis", tmp_path)
    _assert_echoed(result, stall_witness)
    proc.wait_for("call_summary")
