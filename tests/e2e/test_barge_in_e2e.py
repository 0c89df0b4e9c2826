"""Barge-in on the real lab Asterisk: the caller talks over a long agent utterance.

Reaction time is measured on the caller's own leg (tshark): from the caller's speech
onset in the RTP it sends to the last agent frame with speech energy it receives."""

from __future__ import annotations

import statistics

import numpy as np

import labkit

CALLS = 10
SPEECH_AT_S = 2.0  # the greeting starts ~0.4 s after answer: the caller cuts in ~1.5 s into it
INTERRUPTION = "Sorry to interrupt, I need to change my booking please."


def _rms(payload: bytes) -> float:
    x = np.asarray(labkit.ulaw_decode(payload), dtype=float)
    return float(np.sqrt(np.mean(x * x))) if x.size else 0.0


def _reaction_ms(pcap) -> tuple[float, float]:
    """(caller onset -> last agent speech frame, agent speech time before the onset) in ms."""
    packets = labkit.read_rtp_packets(pcap)
    sent = [p for p in packets if p.src_port == labkit.SIPP_RTP_PORT]
    received = [p for p in packets if p.dst_port == labkit.SIPP_RTP_PORT]
    onset = next(p.time for p in sent if _rms(p.payload) > 500)
    loud = [p.time for p in received if _rms(p.payload) > 300]
    agent_start = loud[0]
    before = [t for t in loud if t <= onset + 1.0]
    # The agent's last speech frame of the interrupted turn: the last loud frame
    # before a gap of at least 400 ms that begins after the onset.
    last = onset
    for t, nxt in zip(before, before[1:] + [float("inf")]):
        if t >= onset and nxt - t >= 0.4:
            last = t
            break
        last = t
    return (last - onset) * 1000.0, (onset - agent_start) * 1000.0


def test_caller_interrupts_long_agent_turn(asterisk, engine, deepgram_sim, tmp_path):
    url = deepgram_sim("--pattern", "steady", "--speed", "1.2", "--long-answer-s", "10")
    proc = engine(mode="ari", provider="deepgram", DEEPGRAM_URL=url, DEEPGRAM_API_KEY="sim-key")
    lead = labkit.make_silence_ulaw(SPEECH_AT_S, tmp_path / "lead.ulaw").read_bytes()
    speech = labkit.make_speech_ulaw(INTERRUPTION, tmp_path / "speech.ulaw").read_bytes()
    tail = labkit.make_silence_ulaw(2.0, tmp_path / "tail.ulaw").read_bytes()
    audio = tmp_path / "caller.ulaw"
    audio.write_bytes(lead + speech + tail)
    duration = len(audio.read_bytes()) / 8000

    reactions, offsets = [], []
    for index in range(CALLS):
        result = labkit.place_call("stasis", audio, duration_s=duration, call_dir=tmp_path / f"call{index}")
        assert result.ok, result.errors()
        reaction, offset = _reaction_ms(result.pcap)
        reactions.append(reaction)
        offsets.append(offset)
        summaries = proc.wait_for("call_summary", count=index + 1, timeout=10)
        call_id = summaries[index]["call_id"]
        barge_ins = proc.events("barge_in", call_id=call_id)
        assert len(barge_ins) == 1, f"call {index}: {len(barge_ins)} barge-ins counted for one interruption"
        # After the trigger the provider heard the caller: it reported the user's turn.
        user_lines = [t for t in proc.events("transcript", call_id=call_id) if t["role"] == "user"]
        assert user_lines, f"call {index}: the provider never heard the caller after the barge-in"

    p95 = float(np.percentile(reactions, 95))
    print(f"\nbarge-in reaction on the caller leg over {CALLS} calls (ms): "
          f"p50={statistics.median(reactions):.0f} p95={p95:.0f} max={max(reactions):.0f}; "
          f"caller cut in {statistics.median(offsets):.0f} ms into the agent's speech (median)")
    assert min(offsets) > 1000, "the caller must interrupt an utterance already under way"
    assert p95 <= 300.0
