"""Provider faults on the real lab Asterisk: the faulty call ends (or goes on) with a
logged reason, a clean echo call beside it keeps its audio, and afterwards the engine
still runs, Asterisk holds nothing, /metrics has no per-call series and the history
has every call.

The Deepgram simulator injects the faults (docs/providers.md, ``--fault``):
``close-mid-turn``, ``malformed-json``, ``error``, ``no-welcome``; ``--pattern stall``
trickles a turn then stalls it (two file fallbacks). A closed port stands for a
provider that refuses the connection."""

from __future__ import annotations

import re

import labkit
import labload
import pytest
from conftest import (
    assert_calls_ended_cleanly,
    assert_paced,
    derived_config,
    free_port,
    history_url,
    log_epoch,
)

# A failed case must not leave channels or bridges behind for the next one.
pytestmark = pytest.mark.usefixtures("swept_asterisk")

QUESTION = "What time do you open tomorrow morning?"
ECHO_PHRASE = "Hello, this is a test of the voiceline echo path. One, two, three, four, five."
# The companion echo call uses its own SIPp ports so both calls run at once.
ECHO_SIP_PORT, ECHO_RTP_PORT = 5072, 6100
# A provider that never greets is given up after this long (deepgram connect_timeout_s).
CONNECT_TIMEOUT_S = 3.0


def _caller_audio(tmp_path, question_at_s: float, total_s: float, name: str = "caller"):
    """Silence, a spoken question at ``question_at_s``, silence up to ``total_s``."""
    lead = labkit.make_silence_ulaw(question_at_s, tmp_path / f"{name}-lead.ulaw").read_bytes()
    question = labkit.make_speech_ulaw(QUESTION, tmp_path / f"{name}-q.ulaw").read_bytes()
    tail_s = max(0.5, total_s - question_at_s - len(question) / 8000)
    tail = labkit.make_silence_ulaw(tail_s, tmp_path / f"{name}-tail.ulaw").read_bytes()
    path = tmp_path / f"{name}.ulaw"
    path.write_bytes(lead + question + tail)
    return path, len(path.read_bytes()) / 8000


def _heard_s(proc, call_id: str) -> float:
    """The longest caller utterance the provider heard: the simulator's user transcript
    says how long it was ("(caller spoke 2.3 s)")."""
    spoken = [float(m.group(1)) for t in proc.events("transcript", call_id=call_id) if t["role"] == "user"
              for m in [re.search(r"caller spoke ([0-9.]+) s", t["text"])] if m]
    return max(spoken, default=0.0)


def _question_s(tmp_path) -> float:
    return len(labkit.make_speech_ulaw(QUESTION, tmp_path / "question-only.ulaw").read_bytes()) / 8000


def _hung_up_by_asterisk(result) -> bool:
    """Asterisk sent the caller a BYE. SIPp logs "hangup: remote" when it comes while
    the call is up; one that arrives before the call is fully set up (a provider
    refused at once) aborts the scenario instead, so the SIP trace is what tells."""
    return result.hangup == "remote" or bool(
        re.search(r"message received \[\d+\] bytes :\s*\n\s*BYE sip:", result.sip_trace()))


def _call_ids(proc, provider: str) -> list[str]:
    return [e["call_id"] for e in proc.events("call_started") if e.get("provider") == provider]


def _assert_echo_clean(result, witness) -> None:
    assert result.ok, result.errors()
    received = result.received
    assert received.lost == 0
    assert received.packets >= 400, f"echo caller received only {received.packets} packets"
    to_caller = [p for p in labkit.read_rtp_packets(result.pcap) if p.dst_port == ECHO_RTP_PORT]
    assert_paced(to_caller, witness)
    lag_ms, peak = labkit.correlate_delay(result.sent.samples, received.samples)
    assert peak > 0.8, f"the echo call beside the fault lost its audio (correlation peak {peak:.2f})"


# fault -> (simulator args, call length s, the provider session survives the fault)
PROVIDER_FAULTS = {
    "close-mid-turn": (("--fault", "close-mid-turn"), 14.0, False),
    "malformed-json": (("--fault", "malformed-json"), 13.0, True),
    "error": (("--fault", "error"), 13.0, True),
    "no-welcome": (("--fault", "no-welcome"), 9.0, False),
    "refused": (None, 6.0, False),
}


@pytest.mark.parametrize("fault", list(PROVIDER_FAULTS))
def test_provider_fault_stays_inside_its_call(asterisk, engine, deepgram_sim, stall_witness, tmp_path, fault):
    sim_args, call_s, survives = PROVIDER_FAULTS[fault]
    if sim_args is None:
        url = f"ws://127.0.0.1:{free_port()}/v1/agent/converse"  # nothing listens there
    else:
        url = deepgram_sim("--pattern", "steady", "--speed", "1.2", *sim_args)
    config = derived_config(tmp_path, {
        "connect_timeout_s: 10.0\n    settings_timeout_s: 10.0":
            f"connect_timeout_s: {CONNECT_TIMEOUT_S}\n    settings_timeout_s: {CONNECT_TIMEOUT_S}",
    })
    # Default provider echo (the companion call); the faulty call asks for deepgram.
    proc = engine(mode="ari", provider="echo", config=config, DEEPGRAM_URL=url, DEEPGRAM_API_KEY="sim-key")

    faulty_audio, faulty_s = _caller_audio(tmp_path, question_at_s=4.0, total_s=call_s)
    echo_audio = labkit.make_speech_ulaw(ECHO_PHRASE, tmp_path / "echo.ulaw", seconds=8)
    with labload.CallInBackground("ai-deepgram", faulty_audio, faulty_s, capture=False,
                                 call_dir=tmp_path / "faulty") as faulty:
        echo = labkit.place_call("stasis", echo_audio, 9.0, sip_port=ECHO_SIP_PORT, rtp_port=ECHO_RTP_PORT,
                                 call_dir=tmp_path / "echo")
        faulty_result = faulty.result()

    _assert_echo_clean(echo, stall_witness)
    [faulty_id] = _call_ids(proc, "deepgram")
    [echo_id] = _call_ids(proc, "echo")
    reasons = assert_calls_ended_cleanly(proc, asterisk, history_url(tmp_path), [faulty_id, echo_id])
    print(f"\n{fault}: faulty call ended: {reasons[faulty_id]!r} (caller hangup: {faulty_result.hangup})")

    if survives:
        # The session goes on: the caller's question after the fault is heard, all of it
        # (not only the part left after some timer finally reopened capture).
        heard, question = _heard_s(proc, faulty_id), _question_s(tmp_path)
        print(f"{fault}: the provider heard {heard:.1f} s of the {question:.1f} s question")
        assert heard >= 0.6 * question, f"{fault}: the provider heard {heard:.1f} s of a {question:.1f} s question"
        assert faulty_result.hangup == "local", "the call should last until the caller hangs up"
        # The greeting had played out before the caller spoke: that is a new turn of
        # the caller's, not an interruption (a turn left open by a lost AgentAudioDone
        # must not turn it into a barge-in).
        barge_ins = proc.events("barge_in", call_id=faulty_id)
        assert not barge_ins, f"{fault}: the caller's question after the greeting counted as a barge-in: {barge_ins}"
        if fault == "error":
            errors = proc.events("provider_error", call_id=faulty_id)
            assert errors and not errors[0]["fatal"], f"the provider's Error was not logged as non-fatal: {errors}"
        else:
            warnings = proc.events("provider_warning", call_id=faulty_id)
            assert warnings, "the malformed message was not logged"
    else:
        # The engine ends the call itself, says why, and hangs the caller up.
        assert _hung_up_by_asterisk(faulty_result), "the engine did not hang up the caller"
        assert "provider" in reasons[faulty_id], f"end reason does not name the provider: {reasons[faulty_id]!r}"
        if fault in ("no-welcome", "refused"):
            failed = proc.events("provider_start_failed", call_id=faulty_id)
            assert failed, "no provider_start_failed logged"
    summary = proc.wait_for("call_summary", call_id=faulty_id)[0]
    assert summary["end_reason"] == reasons[faulty_id]


def test_stalled_turn_played_from_file_then_caller_is_heard(asterisk, engine, deepgram_sim, tmp_path):
    """Trickle then stall: the first fallback finds nothing queued, the second plays the
    rest of the turn from file. Afterwards the caller must be heard again (capture was
    left off after two fallbacks)."""
    url = deepgram_sim("--pattern", "stall", "--stall-s", "6", "--long-answer-s", "8", "--speed", "1.2")
    proc = engine(mode="ari", provider="deepgram", DEEPGRAM_URL=url, DEEPGRAM_API_KEY="sim-key")
    # The rest of the turn plays from file until ~21 s into the call; the caller speaks after.
    question_at_s = 23.0
    audio, total_s = _caller_audio(tmp_path, question_at_s=question_at_s, total_s=31.0)
    with labload.CallInBackground("stasis", audio, total_s, capture=False, call_dir=tmp_path / "call") as call:
        started = proc.wait_for("call_started", timeout=10)[0]
        call_id = started["call_id"]
        answered_at = log_epoch(started)
        result = call.result()
    assert result.ok, result.errors()

    ended = proc.wait_for("STREAMING ENDED", call_id=call_id)[0]
    assert ended["reason"] == "fallback"
    played = proc.wait_for("fallback_playback_started", call_id=call_id, timeout=5)
    fallback_end = max(log_epoch(p) + p["audio_ms"] / 1000 for p in played)
    question_onset = answered_at + question_at_s
    assert fallback_end < question_onset, "test setup: the caller must speak after the file playback ended"
    user = [t for t in proc.events("transcript", call_id=call_id) if t["role"] == "user"]
    assert user, "the provider never heard the caller after the file fallback"
    assert log_epoch(user[0]) > question_onset
    heard, question = _heard_s(proc, call_id), _question_s(tmp_path)
    assert heard >= 0.6 * question, f"the provider heard {heard:.1f} s of a {question:.1f} s question"
    assert_calls_ended_cleanly(proc, asterisk, history_url(tmp_path), [call_id])
