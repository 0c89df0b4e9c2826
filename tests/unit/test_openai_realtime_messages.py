"""OpenAI Realtime provider: wire messages and server-event mapping, no socket."""

from __future__ import annotations

import base64

import pytest

from voiceline.audio.formats import AudioFormat
from voiceline.config import OpenAIRealtimeProviderSettings, OpenAITurnDetection
from voiceline.providers.base import (
    AgentAudio,
    AgentAudioDone,
    AgentStartedSpeaking,
    CallContext,
    FunctionCallRequest,
    ProviderError,
    ProviderWarning,
    Transcript,
    UserStartedSpeaking,
)
from voiceline.providers.openai_realtime import (
    OpenAIRealtimeError,
    OpenAIRealtimeProvider,
    OpenAIRealtimeSession,
    RealtimeEventMapper,
    build_audio_append,
    build_greeting,
    build_headers,
    build_response_cancel,
    build_session_update,
    build_truncate,
    build_url,
    error_message,
)
from voiceline.sim.openai_sim import (
    SessionConfigError,
    SimSession,
    apply_session_update,
)

MULAW = AudioFormat("mulaw", 8000)


def cfg(**kw) -> OpenAIRealtimeProviderSettings:
    kw.setdefault("api_key", "sk-test")
    return OpenAIRealtimeProviderSettings(**kw)


# ---- session.update ---------------------------------------------------------------------


def test_ga_session_update_g711() -> None:
    msg = build_session_update(cfg(voice="marin", instructions="Be brief."))
    assert msg["type"] == "session.update"
    s = msg["session"]
    assert s["type"] == "realtime"
    assert s["output_modalities"] == ["audio"]
    assert s["instructions"] == "Be brief."
    assert s["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert s["audio"]["output"]["format"] == {"type": "audio/pcmu"}
    assert s["audio"]["output"]["voice"] == "marin"
    assert s["audio"]["input"]["turn_detection"] == {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 500,
        "create_response": True,
        "interrupt_response": True,
    }
    assert s["audio"]["input"]["transcription"] == {"model": "whisper-1"}
    # none of the beta flat keys leak into the GA shape
    for key in ("voice", "input_audio_format", "output_audio_format", "modalities", "turn_detection"):
        assert key not in s


def test_ga_session_update_pcm16_is_24k() -> None:
    s = build_session_update(cfg(audio_format="pcm16"))["session"]
    assert s["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert s["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}


def test_beta_session_update() -> None:
    s = build_session_update(cfg(api_shape="beta", voice="verse"))["session"]
    assert s["input_audio_format"] == "g711_ulaw"
    assert s["output_audio_format"] == "g711_ulaw"
    assert s["voice"] == "verse"
    assert s["modalities"] == ["audio", "text"]
    assert s["turn_detection"]["type"] == "server_vad"
    assert s["input_audio_transcription"] == {"model": "whisper-1"}
    assert "type" not in s and "audio" not in s and "output_modalities" not in s
    assert build_session_update(cfg(api_shape="beta", audio_format="pcm16"))["session"]["input_audio_format"] == "pcm16"


def test_turn_detection_off_and_no_transcription() -> None:
    ga = build_session_update(cfg(turn_detection=None, transcription_model=None))["session"]
    assert ga["audio"]["input"]["turn_detection"] is None
    assert "transcription" not in ga["audio"]["input"]
    beta = build_session_update(cfg(api_shape="beta", turn_detection=None, transcription_model=None))["session"]
    assert beta["turn_detection"] is None
    assert "input_audio_transcription" not in beta


def test_tools_are_passed() -> None:
    tool = {"type": "function", "name": "hangup", "description": "End the call", "parameters": {"type": "object"}}
    for shape in ("ga", "beta"):
        s = build_session_update(cfg(api_shape=shape, tools=[tool]))["session"]
        assert s["tools"] == [tool] and s["tool_choice"] == "auto"


@pytest.mark.parametrize("shape", ["ga", "beta"])
@pytest.mark.parametrize("audio_format", ["g711_ulaw", "pcm16", "g711_alaw"])
def test_session_update_passes_simulator_schema(shape: str, audio_format: str) -> None:
    msg = build_session_update(cfg(api_shape=shape, audio_format=audio_format))
    sess = apply_session_update(shape, SimSession(), msg["session"])
    assert sess.input_format == audio_format and sess.output_format == audio_format


def test_simulator_schema_rejects_beta_keys_on_ga() -> None:
    beta = build_session_update(cfg(api_shape="beta"))["session"]
    with pytest.raises(SessionConfigError, match=r"Unknown parameter: 'session\.modalities'"):
        apply_session_update("ga", SimSession(), beta)
    with pytest.raises(SessionConfigError, match="session.audio.input.format.type"):
        apply_session_update("ga", SimSession(), {"type": "realtime", "audio": {"input": {"format": {"type": "g711_ulaw"}}}})
    with pytest.raises(SessionConfigError, match="session.type"):
        apply_session_update("ga", SimSession(), {"instructions": "x"})


def test_turn_detection_from_mapping() -> None:
    c = cfg(turn_detection={"silence_duration_ms": 800, "threshold": 0.6})
    assert isinstance(c.turn_detection, OpenAITurnDetection)
    s = build_session_update(c)["session"]
    assert s["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 800
    assert s["audio"]["input"]["turn_detection"]["prefix_padding_ms"] == 300


def test_defaults_are_the_config_models() -> None:
    session = build_session_update(cfg())["session"]
    assert session["instructions"] == OpenAIRealtimeProviderSettings.model_fields["instructions"].default
    assert session["audio"]["output"]["voice"] == OpenAIRealtimeProviderSettings.model_fields["voice"].default


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="audio_format"):
        cfg(audio_format="opus")
    with pytest.raises(ValueError, match="api_shape"):
        cfg(api_shape="v2")


# ---- headers, url, other client events ----------------------------------------------------


def test_headers_per_shape() -> None:
    assert build_headers(cfg()) == {"Authorization": "Bearer sk-test"}
    assert build_headers(cfg(api_shape="beta")) == {
        "Authorization": "Bearer sk-test",
        "OpenAI-Beta": "realtime=v1",
    }
    with pytest.raises(OpenAIRealtimeError):
        build_headers(OpenAIRealtimeProviderSettings())


def test_url_has_model() -> None:
    assert build_url(cfg()) == "wss://api.openai.com/v1/realtime?model=gpt-realtime"
    assert build_url(cfg(url="ws://h:1/v1/realtime?x=1", model="m")) == "ws://h:1/v1/realtime?x=1&model=m"


def test_simple_builders() -> None:
    assert build_truncate("item_1", 1234.9) == {
        "type": "conversation.item.truncate",
        "item_id": "item_1",
        "content_index": 0,
        "audio_end_ms": 1234,
    }
    assert build_response_cancel() == {"type": "response.cancel"}
    assert build_response_cancel("resp_1") == {"type": "response.cancel", "response_id": "resp_1"}
    append = build_audio_append(b"\x01\x02\xff")
    assert append == {"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\x01\x02\xff").decode()}
    greet = build_greeting("Hello, thanks for calling.")
    assert greet["type"] == "response.create"
    assert "Hello, thanks for calling." in greet["response"]["instructions"]


def test_capabilities_and_availability() -> None:
    s = OpenAIRealtimeSession(cfg())
    assert s.capabilities.input_format == MULAW == s.capabilities.output_format
    assert s.capabilities.detects_turns and s.capabilities.interruptible
    p = OpenAIRealtimeSession(cfg(audio_format="pcm16"))
    assert p.capabilities.output_format == AudioFormat("slin16", 24000)
    assert not OpenAIRealtimeSession(cfg(turn_detection=None)).capabilities.detects_turns
    provider = OpenAIRealtimeProvider(OpenAIRealtimeProviderSettings())
    assert provider.name == "openai_realtime"
    ok, reason = provider.availability()
    assert not ok and "OPENAI_API_KEY" in reason
    assert OpenAIRealtimeProvider(cfg()).availability()[0]
    assert isinstance(OpenAIRealtimeProvider(cfg()).create_session(CallContext("c1")), OpenAIRealtimeSession)


def test_error_message() -> None:
    ev = {"type": "error", "error": {"type": "invalid_request_error", "code": "unknown_parameter",
                                     "message": "Unknown parameter: 'session.foo'.", "param": "session.foo"}}
    assert error_message(ev) == ("Unknown parameter: 'session.foo'.", "unknown_parameter")
    ev2 = {"type": "error", "error": {"message": "Bad value", "param": "session.x", "code": None}}
    assert error_message(ev2) == ("Bad value (param: session.x)", None)


# ---- server events -> typed events ----------------------------------------------------------


def delta(kind: str, data: bytes, resp: str = "resp_1", item: str = "item_1") -> dict:
    return {"type": kind, "response_id": resp, "item_id": item, "output_index": 0, "content_index": 0,
            "delta": base64.b64encode(data).decode()}


@pytest.mark.parametrize(
    "names",
    [
        ("response.output_audio.delta", "response.output_audio.done", "response.output_audio_transcript.done"),
        ("response.audio.delta", "response.audio.done", "response.audio_transcript.done"),
    ],
    ids=["ga", "beta"],
)
def test_agent_turn_mapping(names: tuple[str, str, str]) -> None:
    delta_name, done_name, transcript_name = names
    m = RealtimeEventMapper(MULAW)
    assert m.handle({"type": "response.created", "response": {"id": "resp_1", "status": "in_progress"}}) == []
    assert m.response_in_progress and m.response_id == "resp_1"
    assert m.handle(delta(delta_name, b"\x01" * 80)) == [AgentStartedSpeaking(), AgentAudio(b"\x01" * 80)]
    assert m.handle(delta(delta_name, b"\x02" * 160)) == [AgentAudio(b"\x02" * 160)]
    assert m.audio_item_id == "item_1" and m.audio_ms_received == 30.0
    assert m.handle({"type": done_name, "response_id": "resp_1", "item_id": "item_1"}) == [AgentAudioDone()]
    assert m.handle({"type": transcript_name, "transcript": "Hi there."}) == [Transcript("assistant", "Hi there.")]
    assert m.handle({"type": "response.done", "response": {"id": "resp_1", "status": "completed"}}) == []
    assert not m.response_in_progress


def test_user_events() -> None:
    m = RealtimeEventMapper(MULAW)
    assert m.handle({"type": "input_audio_buffer.speech_started", "audio_start_ms": 10, "item_id": "i"}) == [
        UserStartedSpeaking()
    ]
    assert m.handle({"type": "conversation.item.input_audio_transcription.completed", "item_id": "i",
                     "content_index": 0, "transcript": "hello"}) == [Transcript("user", "hello")]
    assert m.handle({"type": "input_audio_buffer.speech_stopped"}) == []
    assert m.handle({"type": "rate_limits.updated", "rate_limits": []}) == []
    assert m.handle({"type": "something.new"}) == []


def test_response_done_closes_open_audio_turn() -> None:
    m = RealtimeEventMapper(MULAW)
    m.handle({"type": "response.created", "response": {"id": "r"}})
    m.handle(delta("response.output_audio.delta", b"\x00" * 8, resp="r"))
    assert m.handle({"type": "response.done", "response": {"id": "r", "status": "incomplete"}}) == [AgentAudioDone()]


def test_failed_response_warns() -> None:
    m = RealtimeEventMapper(MULAW)
    out = m.handle({"type": "response.done", "response": {"id": "r", "status": "failed", "status_details": {
        "type": "failed", "error": {"code": "server_error", "message": "boom"}}}})
    assert out == [ProviderWarning("OpenAI response failed: boom", "server_error")]


def test_function_call_mapping() -> None:
    m = RealtimeEventMapper(MULAW)
    # beta done events carry no name: it comes from output_item.added
    m.handle({"type": "response.output_item.added", "response_id": "r", "output_index": 0,
              "item": {"id": "fc_1", "type": "function_call", "call_id": "call_1", "name": "lookup_order"}})
    out = m.handle({"type": "response.function_call_arguments.done", "response_id": "r", "item_id": "fc_1",
                    "call_id": "call_1", "arguments": '{"order": "42"}'})
    assert out == [FunctionCallRequest(call_id="call_1", name="lookup_order", arguments={"order": "42"})]
    out = m.handle({"type": "response.function_call_arguments.done", "call_id": "call_2", "name": "hangup",
                    "arguments": "not json"})
    assert out == [FunctionCallRequest(call_id="call_2", name="hangup", arguments={"_raw": "not json"})]


def test_errors() -> None:
    m = RealtimeEventMapper(MULAW)
    out = m.handle({"type": "error", "error": {"type": "invalid_request_error", "code": "invalid_value",
                                               "message": "Invalid value"}})
    assert out == [ProviderError(message="Invalid value", code="invalid_value", fatal=False)]
    # cancelling a response that already ended is an expected race, not an error
    assert m.handle({"type": "error", "error": {"code": "response_cancel_not_active",
                                                "message": "no active response"}}) == []
    bad = m.handle({"type": "response.output_audio.delta", "response_id": "r", "item_id": "i", "delta": "@@@"})
    assert len(bad) == 1 and isinstance(bad[0], ProviderWarning)


# ---- barge-in -------------------------------------------------------------------------------------


def streaming_mapper(nbytes: int = 4000) -> RealtimeEventMapper:
    m = RealtimeEventMapper(MULAW)
    m.handle({"type": "response.created", "response": {"id": "resp_1"}})
    m.handle(delta("response.output_audio.delta", b"\x55" * nbytes))  # 500 ms at 8 kHz μ-law
    return m


def test_interrupt_during_response_cancels_and_truncates_at_played() -> None:
    m = streaming_mapper()
    assert m.interrupt(120.7) == [
        {"type": "response.cancel", "response_id": "resp_1"},
        {"type": "conversation.item.truncate", "item_id": "item_1", "content_index": 0, "audio_end_ms": 120},
    ]
    assert not m.response_in_progress
    # a second barge-in has nothing left to do
    assert m.interrupt(300) == []


def test_interrupt_clamps_to_audio_received() -> None:
    m = streaming_mapper()
    msgs = m.interrupt(10_000)
    assert msgs[-1]["audio_end_ms"] == 500
    assert streaming_mapper().interrupt(-5)[-1]["audio_end_ms"] == 0


def test_interrupt_without_played_ms_only_cancels() -> None:
    assert streaming_mapper().interrupt(None) == [{"type": "response.cancel", "response_id": "resp_1"}]


def test_interrupt_after_response_done_only_truncates() -> None:
    m = streaming_mapper()
    m.handle({"type": "response.output_audio.done", "response_id": "resp_1", "item_id": "item_1"})
    m.handle({"type": "response.done", "response": {"id": "resp_1", "status": "completed"}})
    assert m.interrupt(250) == [
        {"type": "conversation.item.truncate", "item_id": "item_1", "content_index": 0, "audio_end_ms": 250}
    ]


def test_interrupt_with_nothing_playing() -> None:
    assert RealtimeEventMapper(MULAW).interrupt(100) == []


def test_late_audio_of_interrupted_response_is_dropped() -> None:
    m = streaming_mapper()
    m.interrupt(100)
    assert m.handle(delta("response.output_audio.delta", b"\x01" * 160)) == []
    assert m.handle({"type": "response.output_audio.done", "response_id": "resp_1"}) == []
    assert m.handle({"type": "response.done", "response": {"id": "resp_1", "status": "cancelled"}}) == []
    # the next response is heard normally
    m.handle({"type": "response.created", "response": {"id": "resp_2"}})
    out = m.handle(delta("response.output_audio.delta", b"\x02" * 160, resp="resp_2", item="item_2"))
    assert out == [AgentStartedSpeaking(), AgentAudio(b"\x02" * 160)]
    assert m.audio_item_id == "item_2" and m.audio_ms_received == 20.0


def test_a_tool_named_like_an_enabled_action_is_refused() -> None:
    from voiceline.providers.openai_realtime_messages import build_tools

    cfg = OpenAIRealtimeProviderSettings(
        api_key="k",
        tools=[{"type": "function", "name": "hangup"}, {"type": "function", "name": "lookup"}],
        actions={"hangup": {"enabled": True}},
    )
    with pytest.raises(ValueError, match=r"\['hangup'\] declared twice"):
        build_tools(cfg)
