"""The real OpenAI Realtime client against the local simulator over loopback."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import numpy as np
import pytest

from voiceline.audio import g711
from voiceline.audio.formats import AudioFormat
from voiceline.config import OpenAIRealtimeProviderSettings, OpenAITurnDetection
from voiceline.providers.base import (
    AgentAudio,
    AgentAudioDone,
    AgentStartedSpeaking,
    ProviderClosed,
    ProviderError,
    ProviderEvent,
    Transcript,
    UserStartedSpeaking,
)
from voiceline.providers.openai_realtime import (
    OpenAIRealtimeError,
    OpenAIRealtimeSession,
)
from voiceline.sim.openai_sim import OpenAIRealtimeSimulator
from voiceline.sim.speech import synthesize

CALLER_TEXT = "Hello, I have a question about my last bill."
REPLY_TEXT = "Sure, I can help you with your bill. Could you please tell me your account number?"
LONG_REPLY = (
    "Thank you for calling. Let me read you the full list of options, one by one, "
    "so that you can choose the one that fits you best. Option one is billing."
)


def _speech(text: str, sample_rate: int) -> bytes:
    return synthesize(text, sample_rate=sample_rate)


def _rms(slin: bytes) -> float:
    x = np.frombuffer(slin, dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(x * x))) if len(x) else 0.0


def _assert_clean(errors: list[dict[str, Any]]) -> None:
    gc.collect()
    assert not errors, [e.get("message") or repr(e.get("exception")) for e in errors]


async def _sim(**kw: Any) -> OpenAIRealtimeSimulator:
    kw.setdefault("reply_text", REPLY_TEXT)
    sim = OpenAIRealtimeSimulator(**kw)
    await sim.start()
    return sim


def _config(sim: OpenAIRealtimeSimulator, **kw: Any) -> OpenAIRealtimeProviderSettings:
    kw.setdefault("api_key", "sk-sim")
    kw.setdefault("connect_timeout_s", 5.0)
    return OpenAIRealtimeProviderSettings(url=sim.url, **kw)


async def _collect(session: OpenAIRealtimeSession, until: type, timeout: float = 10.0) -> list[ProviderEvent]:
    events: list[ProviderEvent] = []

    async def run() -> None:
        async for event in session.events():
            events.append(event)
            if isinstance(event, until):
                return

    await asyncio.wait_for(run(), timeout)
    return events


async def _send_speech(session: OpenAIRealtimeSession, slin: bytes, fmt: AudioFormat) -> None:
    """Caller speech then 800 ms of silence, in 20 ms frames of the session's input format."""
    slin_in = slin + b"\x00\x00" * int(fmt.sample_rate * 0.8)
    wire = g711.slin_to_mulaw(slin_in) if fmt.encoding == "mulaw" else slin_in
    frame = fmt.bytes_for_ms(20)
    for i in range(0, len(wire), frame):
        await session.send_audio(wire[i : i + frame])
        if i % (frame * 25) == 0:
            await asyncio.sleep(0)


# ---- handshake ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["ga", "beta"])
async def test_handshake(shape: str, loop_errors: list[dict[str, Any]]) -> None:
    sim = await _sim()
    session = OpenAIRealtimeSession(_config(sim, api_shape=shape, voice="verse"))
    try:
        await session.start()
        conn = sim.connections[0]
        assert conn.shape == shape and conn.model == "gpt-realtime"
        update = next(e for e in conn.received if e["type"] == "session.update")["session"]
        if shape == "ga":
            assert update["type"] == "realtime"
            assert session.session_info["audio"]["input"]["format"] == {"type": "audio/pcmu"}
            assert session.session_info["audio"]["output"]["voice"] == "verse"
        else:
            assert session.session_info["input_audio_format"] == "g711_ulaw"
            assert session.session_info["voice"] == "verse"
        assert conn.session.input_format == conn.session.output_format == "g711_ulaw"
    finally:
        await session.close()
        await sim.stop()
    events = await _collect(session, ProviderClosed, timeout=2)
    assert events == [ProviderClosed(reason="call ended")]
    await session.close()  # idempotent
    _assert_clean(loop_errors)


async def test_greeting_is_requested_and_spoken(loop_errors: list[dict[str, Any]]) -> None:
    sim = await _sim()
    session = OpenAIRealtimeSession(_config(sim, greeting="Thanks for calling Acme, how can I help?"))
    try:
        await session.start()
        events = await _collect(session, AgentAudioDone)
        assert isinstance(events[0], AgentStartedSpeaking)
        assert sum(len(e.data) for e in events if isinstance(e, AgentAudio)) > 8000
        creates = sim.connections[0].response_creates
        assert len(creates) == 1
        assert "Thanks for calling Acme, how can I help?" in creates[0]["response"]["instructions"]
    finally:
        await session.close()
        await sim.stop()
    _assert_clean(loop_errors)


# ---- audio paths -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["ga", "beta"])
async def test_g711_ulaw_conversation(shape: str, loop_errors: list[dict[str, Any]]) -> None:
    sim = await _sim()
    session = OpenAIRealtimeSession(_config(sim, api_shape=shape))
    fmt = session.capabilities.input_format
    assert fmt == AudioFormat("mulaw", 8000) == session.capabilities.output_format
    try:
        await session.start()
        await _send_speech(session, _speech(CALLER_TEXT, 8000), fmt)
        events = await _collect(session, AgentAudioDone)
        events += await _collect(session, Transcript)  # assistant transcript follows the audio
    finally:
        await session.close()
        await sim.stop()

    kinds = [type(e) for e in events]
    assert kinds.index(UserStartedSpeaking) < kinds.index(AgentStartedSpeaking)
    assert kinds.count(AgentStartedSpeaking) == 1
    assert Transcript("user", sim.user_transcript) in events
    assert Transcript("assistant", REPLY_TEXT) in events
    agent = b"".join(e.data for e in events if isinstance(e, AgentAudio))
    expected = g711.slin_to_mulaw(await sim.speech(REPLY_TEXT, 8000))
    assert agent == expected  # μ-law at 8 kHz, byte for byte, nothing lost or reordered
    assert _rms(g711.mulaw_to_slin(agent)) > 500  # real speech, not silence
    assert sim.connections[0].audio_in_bytes >= len(_speech(CALLER_TEXT, 8000)) // 2
    _assert_clean(loop_errors)


async def test_pcm16_conversation_at_24k(loop_errors: list[dict[str, Any]]) -> None:
    sim = await _sim()
    session = OpenAIRealtimeSession(_config(sim, audio_format="pcm16"))
    fmt = session.capabilities.input_format
    assert fmt == AudioFormat("slin16", 24000) == session.capabilities.output_format
    try:
        await session.start()
        assert sim.connections[0].session.input_format == "pcm16"
        await _send_speech(session, _speech(CALLER_TEXT, 24000), fmt)
        events = await _collect(session, AgentAudioDone)
    finally:
        await session.close()
        await sim.stop()

    assert UserStartedSpeaking() in events
    agent = b"".join(e.data for e in events if isinstance(e, AgentAudio))
    assert len(agent) % 2 == 0 and _rms(agent) > 500
    # Byte rate: the same sentence synthesized independently at 8 kHz lasts as long as
    # what arrived when read as 16-bit samples at 24 kHz (so 6 bytes per 8 kHz sample).
    seconds_8k = len(_speech(REPLY_TEXT, 8000)) / 2 / 8000
    seconds_received = fmt.ms_for_bytes(len(agent)) / 1000
    assert seconds_received == pytest.approx(seconds_8k, rel=0.03)
    assert len(agent) == pytest.approx(len(_speech(REPLY_TEXT, 8000)) * 3, rel=0.03)
    _assert_clean(loop_errors)


# ---- barge-in ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("played_ms", [180, 60_000], ids=["played", "clamped"])
async def test_interrupt_during_response(played_ms: int, loop_errors: list[dict[str, Any]]) -> None:
    sim = await _sim(reply_text=LONG_REPLY, delta_interval_s=0.05)
    session = OpenAIRealtimeSession(_config(sim, greeting="Welcome."))
    consumed = 0
    try:
        await session.start()
        async for event in session.events():
            if isinstance(event, AgentAudio):
                consumed += len(event.data)
                if session.mapper.audio_ms_received >= 400:
                    break
        received_ms = session.mapper.audio_ms_received
        item_id = session.mapper.audio_item_id
        response_id = session.mapper.response_id
        await session.interrupt(played_ms)

        conn = sim.connections[0]
        for _ in range(200):
            if conn.responses_done:
                break
            await asyncio.sleep(0.01)
        assert conn.responses_done and conn.responses_done[0]["status"] == "cancelled"
        assert conn.responses_done[0]["status_details"]["reason"] == "client_cancelled"
        for _ in range(100):
            if conn.truncates:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # let late deltas and replies arrive
        while not session._events.empty():
            event = session._events.get_nowait()
            assert not isinstance(event, (ProviderError, AgentStartedSpeaking)), event
            if isinstance(event, AgentAudio):
                consumed += len(event.data)
    finally:
        await session.close()
        await sim.stop()

    assert sim.cancels == [{"response_id": response_id, "active": True}]
    expected_end = int(min(played_ms, received_ms))
    assert sim.truncates == [
        {"item_id": item_id, "content_index": 0, "audio_end_ms": expected_end, "accepted": True}
    ]
    if played_ms > received_ms:
        assert expected_end < played_ms  # really clamped
    # nothing of the cancelled response was handed on after the barge-in
    assert consumed == AudioFormat("mulaw", 8000).bytes_for_ms(received_ms)
    assert not any(e["code"] for e in conn.errors_sent)
    _assert_clean(loop_errors)


async def test_interrupt_after_audio_fully_sent_only_truncates(loop_errors: list[dict[str, Any]]) -> None:
    sim = await _sim()
    session = OpenAIRealtimeSession(_config(sim, greeting="Welcome."))
    try:
        await session.start()
        await _collect(session, AgentAudioDone)
        await asyncio.sleep(0.1)  # response.done arrives after the audio
        assert not session.mapper.response_in_progress
        await session.interrupt(700)
        for _ in range(100):
            if sim.truncates:
                break
            await asyncio.sleep(0.01)
    finally:
        await session.close()
        await sim.stop()
    assert sim.cancels == []
    assert [t["audio_end_ms"] for t in sim.truncates] == [700]
    assert sim.truncates[0]["accepted"]
    _assert_clean(loop_errors)


async def test_caller_barge_in_with_server_vad(loop_errors: list[dict[str, Any]]) -> None:
    """Server VAD cancels the response itself; the engine's interrupt must not error."""
    sim = await _sim(reply_text=LONG_REPLY, delta_interval_s=0.05)
    session = OpenAIRealtimeSession(_config(sim, greeting="Welcome."))
    fmt = session.capabilities.input_format
    errors: list[ProviderEvent] = []
    try:
        await session.start()
        async for event in session.events():
            if isinstance(event, AgentAudio) and session.mapper.audio_ms_received >= 300:
                break
        speech = asyncio.create_task(_send_speech(session, _speech("Wait, stop please.", 8000), fmt))
        async for event in session.events():
            if isinstance(event, ProviderError):
                errors.append(event)
            if isinstance(event, UserStartedSpeaking):
                break
        await session.interrupt(250)  # what the engine does on UserStartedSpeaking
        await speech
        events = await _collect(session, Transcript)  # the caller's turn is transcribed
        await asyncio.sleep(0.2)
        errors += [e for e in events if isinstance(e, ProviderError)]
    finally:
        await session.close()
        await sim.stop()
    conn = sim.connections[0]
    assert conn.responses_done[0]["status"] == "cancelled"
    assert conn.responses_done[0]["status_details"]["reason"] == "turn_detected"
    # the client's own cancel either raced the server's (benign error, not surfaced) or
    # was not sent because response.done had already arrived
    assert all(err["code"] == "response_cancel_not_active" for err in conn.errors_sent)
    assert sim.truncates and sim.truncates[0]["audio_end_ms"] == 250 and sim.truncates[0]["accepted"]
    assert not errors
    _assert_clean(loop_errors)


# ---- failures ----------------------------------------------------------------------------------------


async def test_bad_session_update_raises_naming_problem(loop_errors: list[dict[str, Any]]) -> None:
    sim = await _sim()
    # Out of range for the config model too; built unchecked to see the service's own check.
    bad_vad = OpenAITurnDetection.model_construct(**{**OpenAITurnDetection().model_dump(), "threshold": 1.5})
    session = OpenAIRealtimeSession(_config(sim, turn_detection=bad_vad))
    try:
        with pytest.raises(OpenAIRealtimeError, match=r"session\.audio\.input\.turn_detection\.threshold"):
            await session.start()
        # beta-shaped session.update against a GA-only service
        sim.force_shape = "ga"
        beta = OpenAIRealtimeSession(_config(sim, api_shape="beta"))
        with pytest.raises(OpenAIRealtimeError, match=r"Unknown parameter: 'session\.modalities'"):
            await beta.start()
        events = await _collect(beta, ProviderClosed, timeout=1)
        assert events[-1].error
        await beta.close()
    finally:
        await session.close()
        await sim.stop()
    _assert_clean(loop_errors)


async def test_auth_failures(loop_errors: list[dict[str, Any]]) -> None:
    sim = await _sim(api_key="sk-right")
    try:
        with pytest.raises(OpenAIRealtimeError, match="HTTP 401"):
            await OpenAIRealtimeSession(_config(sim, api_key="sk-wrong")).start()
        assert sim.rejected[-1]["code"] == "invalid_api_key"
        with pytest.raises(OpenAIRealtimeError, match="API key"):
            await OpenAIRealtimeSession(OpenAIRealtimeProviderSettings(url=sim.url)).start()
    finally:
        await sim.stop()
    _assert_clean(loop_errors)


async def test_connect_refused(loop_errors: list[dict[str, Any]]) -> None:
    sim = await _sim()
    url = sim.url
    await sim.stop()
    with pytest.raises(OpenAIRealtimeError, match="cannot connect"):
        await OpenAIRealtimeSession(OpenAIRealtimeProviderSettings(url=url, api_key="k", connect_timeout_s=2)).start()
    _assert_clean(loop_errors)


@pytest.mark.parametrize("mode", ["close", "abort"])
async def test_server_closes_mid_call(mode: str, loop_errors: list[dict[str, Any]]) -> None:
    sim = await _sim(reply_text=LONG_REPLY, delta_interval_s=0.05, close_after_s=0.5, close_mode=mode)
    session = OpenAIRealtimeSession(_config(sim, greeting="Welcome."))
    try:
        await session.start()
        events = await _collect(session, ProviderClosed, timeout=5)
        # the engine keeps talking to a dead session: must not raise
        await session.send_audio(b"\xff" * 160)
        await session.interrupt(100)
        await session.close()
    finally:
        await session.close()
        await sim.stop()
    assert any(isinstance(e, AgentAudio) for e in events)  # it really was mid-call
    fatal = [e for e in events if isinstance(e, ProviderError)]
    assert len(fatal) == 1 and fatal[0].fatal
    assert events[-1] == ProviderClosed(reason=fatal[0].message, error=True)
    assert events.index(fatal[0]) == len(events) - 2
    _assert_clean(loop_errors)
