"""Providers on the real lab Asterisk: the Deepgram client against the Deepgram
protocol simulator, and per-call provider choice through the AI_PROVIDER variable."""

from __future__ import annotations

import numpy as np

import labkit

QUESTION = "What time do you open tomorrow morning?"


def _energy_windows(samples, window_ms=100):
    x = np.asarray(samples, dtype=float)
    n = 8 * window_ms
    return np.array([np.sqrt(np.mean(np.square(x[i:i + n]))) for i in range(0, len(x) - n, n)])


def _caller_audio(tmp_path, question_at_s: float, total_s: float):
    """Silence while the greeting plays, then a spoken question, then silence for the answer."""
    silence = labkit.make_silence_ulaw(question_at_s, tmp_path / "lead.ulaw").read_bytes()
    question = labkit.make_speech_ulaw(QUESTION, tmp_path / "q.ulaw").read_bytes()
    tail_s = total_s - question_at_s - len(question) / 8000
    tail = labkit.make_silence_ulaw(tail_s, tmp_path / "tail.ulaw").read_bytes()
    path = tmp_path / "caller.ulaw"
    path.write_bytes(silence + question + tail)
    return path, question_at_s + len(question) / 8000


def test_deepgram_agent_greets_and_answers_via_ai_provider_variable(asterisk, engine, deepgram_sim, tmp_path):
    url = deepgram_sim("--pattern", "jitter", "--speed", "1.2")
    # The default provider stays `echo`: the call asks for deepgram through AI_PROVIDER.
    proc = engine(mode="ari", provider="echo", DEEPGRAM_URL=url, DEEPGRAM_API_KEY="sim-key")
    audio, question_end_s = _caller_audio(tmp_path, question_at_s=4.0, total_s=12.0)
    result = labkit.place_call("ai-deepgram", audio, duration_s=12.5)
    assert result.ok, result.errors()

    started = proc.wait_for("call_started")[0]
    assert started["provider"] == "deepgram"
    transcripts = proc.wait_for("transcript", count=3, timeout=5)
    roles = [t["role"] for t in transcripts]
    assert roles[:1] == ["assistant"], f"greeting transcript first, got {roles}"
    assert "user" in roles and roles.count("assistant") >= 2

    received = result.received
    assert received.lost == 0
    energy = _energy_windows(received.samples)
    speaking = energy > 300
    greeting = speaking[: int(3.5 * 10)]
    answer = speaking[int(question_end_s * 10):]
    assert greeting.sum() >= 8, "caller did not hear the greeting"
    assert answer.sum() >= 8, "caller did not hear an answer after the question"
    summary = proc.wait_for("call_summary")[0]
    assert summary["provider"] == "deepgram"
    assert summary["codec"]["provider_input"] == "mulaw@8000"
    assert summary["transcript_lines"] >= 3


def test_unknown_provider_variable_falls_back_to_default(asterisk, engine, tmp_path):
    proc = engine(mode="ari", provider="echo")
    audio = labkit.make_speech_ulaw("Testing the fallback provider.", tmp_path / "p.ulaw", seconds=3)
    result = labkit.place_call("ai-nosuchagent", audio, duration_s=3.5)
    assert result.ok, result.errors()
    fallback = proc.wait_for("provider_fallback")[0]
    assert "nosuchagent" in fallback["reason"] and fallback["using"] == "echo"
    assert proc.wait_for("call_started")[0]["provider"] == "echo"
    lag_ms, peak = labkit.correlate_delay(result.sent.samples, result.received.samples)
    assert peak > 0.8  # the call still works, on the default provider


def test_local_agent_greets_and_answers_a_spoken_question(asterisk, engine, tmp_path):
    """The offline agent: pocketsphinx + scripted replies + espeak-ng, no network."""
    proc = engine(mode="ari", provider="local")
    audio, question_end_s = _caller_audio(tmp_path, question_at_s=5.0, total_s=13.0)
    result = labkit.place_call("stasis", audio, duration_s=13.5)
    assert result.ok, result.errors()

    transcripts = proc.wait_for("transcript", count=3, timeout=5)
    roles = [t["role"] for t in transcripts]
    assert roles[0] == "assistant" and "user" in roles
    user_at = roles.index("user")
    assert "assistant" in roles[user_at + 1:], f"no answer after the caller's question: {roles}"

    received = result.received
    assert received.lost == 0
    speaking = _energy_windows(received.samples) > 300
    assert speaking[: int(4.5 * 10)].sum() >= 15, "caller did not hear the greeting"
    assert speaking[int(question_end_s * 10):].sum() >= 10, "caller did not hear an answer"
    summary = proc.wait_for("call_summary")[0]
    assert summary["provider"] == "local" and summary["transcript_lines"] >= 3
