"""Agents that act on the call, on the real lab Asterisk: the model's function calls go
through the engine's one function-call path to Asterisk (transfer, hangup) or to an HTTP
service, and the caller hears the result."""

from __future__ import annotations

import numpy as np

import labkit
from conftest import assert_nothing_left_in_asterisk, derived_config, history_rows, history_url, wait_until
from voiceline.sim.sim_intents import TRANSFER_LINE

TRANSFER_ACTION = (
    "        enabled: false\n        description: null      # null: the built-in text\n        targets: []"
)
OPERATOR = (
    "        enabled: true\n        description: null\n"
    "        targets: [{name: operator, context: voiceline, extension: operator}]"
)


def _caller_audio(tmp_path, text: str, at_s: float, total_s: float):
    lead = labkit.make_silence_ulaw(at_s, tmp_path / "lead.ulaw").read_bytes()
    words = labkit.make_speech_ulaw(text, tmp_path / "words.ulaw").read_bytes()
    tail = labkit.make_silence_ulaw(total_s - at_s - len(words) / 8000, tmp_path / "tail.ulaw").read_bytes()
    path = tmp_path / "caller.ulaw"
    path.write_bytes(lead + words + tail)
    return path


def _tone_seconds(samples, freq: float = 440.0, rate: int = 8000) -> float:
    """Seconds of received audio (100 ms windows) dominated by a tone at ``freq``."""
    x = np.asarray(samples, dtype=float)
    n = rate // 10
    hits = 0
    for i in range(0, len(x) - n, n):
        window = x[i:i + n]
        if np.sqrt(np.mean(window ** 2)) < 300:
            continue
        spectrum = np.abs(np.fft.rfft(window * np.hanning(n)))
        peak = np.fft.rfftfreq(n, 1 / rate)[int(np.argmax(spectrum))]
        hits += abs(peak - freq) <= 20
    return hits / 10


def test_deepgram_caller_asks_for_the_operator_and_lands_on_the_lab_extension(
        swept_asterisk, engine, deepgram_sim, tmp_path):
    # The simulator has no speech recognition: what it "hears" is its transcript.
    url = deepgram_sim("--speed", "1.5") + "?transcript=Please+connect+me+to+an+operator"
    config = derived_config(tmp_path, {TRANSFER_ACTION: OPERATOR})
    proc = engine(mode="ari", provider="deepgram", config=config, DEEPGRAM_URL=url, DEEPGRAM_API_KEY="sim-key")
    audio = _caller_audio(tmp_path, "Please connect me to an operator.", at_s=3.0, total_s=18.0)
    result = labkit.place_call("stasis", audio, duration_s=18.0)
    assert result.ok, result.errors()

    call_id = proc.wait_for("call_started")[0]["call_id"]
    said = [t["text"] for t in proc.events("transcript", call_id=call_id, role="assistant")]
    assert TRANSFER_LINE in said, said
    function_call = proc.wait_for("function_call", function="transfer")[0]
    assert function_call["ok"] and function_call["delivered"]
    proc.wait_for("call_transferred", call_id=call_id)
    ended = proc.wait_for("call_ended", call_id=call_id)[0]
    assert ended["reason"] == "transferred to voiceline,operator,1"

    # The caller heard the agent's line, then the operator extension (its 440 Hz tone),
    # and the operator extension (not the engine) hung up.
    assert _tone_seconds(result.received.samples) >= 2.0
    assert result.hangup == "remote"
    # The engine's leg (externalMedia channel, bridge) is gone; so is the caller by now.
    assert_nothing_left_in_asterisk(swept_asterisk)
    url = history_url(tmp_path)
    record = wait_until(lambda: history_rows(url).get(call_id), 15, "the call's history record")
    assert record["end_reason"].startswith("transferred")
