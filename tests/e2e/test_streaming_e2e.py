"""The streaming transport on the real lab Asterisk: what the caller receives, measured by tshark."""

from __future__ import annotations

import labkit
import numpy as np
from conftest import assert_paced


def _speech_windows(samples, threshold=300.0, window_ms=20):
    x = np.asarray(samples, dtype=float)
    n = 8 * window_ms
    rms = np.array([np.sqrt(np.mean(np.square(x[i:i + n]))) for i in range(0, len(x) - n + 1, n)])
    return rms > threshold


def test_long_bursty_agent_turn_reaches_caller_clean(asterisk, engine, deepgram_sim, stall_witness, tmp_path):
    """A ≥10 s agent utterance delivered in bursts faster than real time."""
    url = deepgram_sim("--pattern", "burst", "--long-answer-s", "12")
    proc = engine(mode="ari", provider="deepgram", DEEPGRAM_URL=url, DEEPGRAM_API_KEY="sim-key")
    silence = labkit.make_silence_ulaw(15, tmp_path / "quiet.ulaw")
    result = labkit.place_call("stasis", silence, duration_s=15)
    assert result.ok, result.errors()

    rx = result.received
    speaking = _speech_windows(rx.samples)
    first, last = int(np.argmax(speaking)), len(speaking) - int(np.argmax(speaking[::-1])) - 1
    assert (last - first) * 0.02 >= 10.0, "agent audio shorter than 10 s"
    # Timing is judged over the agent's utterance (first to last packet carrying its
    # speech): the packets around the BYE belong to Asterisk's hangup, not the stream.
    packets = [p for p in labkit.read_rtp_packets(result.pcap) if p.dst_port == labkit.SIPP_RTP_PORT]
    during = labkit.rtp_stats(packets[first:last + 1])
    print(f"\ncaller leg: packets={rx.packets} lost={rx.lost} max_delta={rx.max_delta_ms:.2f} ms "
          f"(during the utterance {during.max_delta_ms:.2f} ms) mean_jitter={during.mean_jitter_ms:.3f} ms "
          f"(tshark, whole call {rx.tshark_mean_jitter_ms} ms)")
    assert rx.lost == 0
    assert during.lost == 0
    assert_paced(packets[first:last + 1], stall_witness)
    assert during.mean_jitter_ms <= 1.0

    ended = proc.wait_for("STREAMING ENDED")
    started = proc.events("STREAMING STARTED")
    turn_ids = [e["turn_id"] for e in started]
    assert len(turn_ids) == len(set(turn_ids)) == 1, f"one STREAMING STARTED per turn, got {turn_ids}"
    assert ended[0]["pauses"] == 0 and ended[0]["reason"] == "completed"


def test_provider_stall_finishes_turn_through_file_playback(asterisk, engine, deepgram_sim, tmp_path):
    url = deepgram_sim("--pattern", "stall", "--stall-s", "6", "--long-answer-s", "8", "--speed", "1.2")
    proc = engine(mode="ari", provider="deepgram", DEEPGRAM_URL=url, DEEPGRAM_API_KEY="sim-key")
    silence = labkit.make_silence_ulaw(24, tmp_path / "quiet.ulaw")
    result = labkit.place_call("stasis", silence, duration_s=24)
    assert result.ok, result.errors()

    ended = proc.wait_for("STREAMING ENDED")[0]
    assert ended["reason"] == "fallback"
    played = proc.wait_for("fallback_playback_started", timeout=10)
    assert played[0]["playback_id"].startswith("voiceline-")
    assert played[0]["audio_ms"] > 1000
    # The rest of the turn (handed over once the provider finished it) reached the
    # caller through Asterisk's own playback, well after the streamed part stopped.
    rx = result.received
    speaking = _speech_windows(rx.samples)
    late_speech_s = speaking[int(13 / 0.02):].sum() * 0.02
    assert late_speech_s > 2.0, f"only {late_speech_s:.2f} s of agent speech after the stall"
    assert proc.wait_for("call_ended")
    assert rx.lost == 0
