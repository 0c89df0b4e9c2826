"""DeepgramEventMapper: Deepgram Voice Agent v1 server messages -> typed events, no socket."""

from __future__ import annotations

import json
from typing import Any

import pytest

from voiceline.providers.base import (
    AgentAudio,
    AgentAudioDone,
    AgentStartedSpeaking,
    AgentThinking,
    FunctionCallRequest,
    ProviderError,
    ProviderWarning,
    Transcript,
    UserStartedSpeaking,
)
from voiceline.providers.deepgram_events import (
    MALFORMED_JSON,
    DeepgramEventMapper,
    SessionRejected,
    SettingsApplied,
    Welcome,
)


class RecordingLog:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def _record(self, level: str) -> Any:
        return lambda msg, **kw: self.lines.append((level, msg, kw))

    def __getattr__(self, level: str) -> Any:
        return self._record(level)


def applied_mapper(logger: Any = None) -> DeepgramEventMapper:
    mapper = DeepgramEventMapper(logger)
    assert mapper.handle({"type": "SettingsApplied"}) == [SettingsApplied()]
    return mapper


def text(mapper: DeepgramEventMapper, message: dict[str, Any]) -> list[Any]:
    return mapper.handle_text(json.dumps(message))


def test_handshake_markers() -> None:
    mapper = DeepgramEventMapper()
    assert text(mapper, {"type": "Welcome", "request_id": "r-1"}) == [Welcome("r-1")]
    assert text(mapper, {"type": "Welcome"}) == [Welcome("")]
    assert not mapper.settings_applied
    assert text(mapper, {"type": "SettingsApplied"}) == [SettingsApplied()]
    assert mapper.settings_applied


def test_conversation_messages() -> None:
    mapper = applied_mapper()
    assert text(mapper, {"type": "ConversationText", "role": "user", "content": "hi"}) == [Transcript("user", "hi")]
    assert text(mapper, {"type": "UserStartedSpeaking"}) == [UserStartedSpeaking()]
    assert text(mapper, {"type": "AgentThinking", "content": "hmm"}) == [AgentThinking("hmm")]
    assert text(mapper, {"type": "AgentStartedSpeaking", "total_latency": 0.5, "tts_latency": 0.1, "ttt_latency": 0.4}) == [
        AgentStartedSpeaking(total_latency_ms=500.0, tts_latency_ms=100.0, ttt_latency_ms=400.0)
    ]
    assert text(mapper, {"type": "AgentAudioDone"}) == [AgentAudioDone()]
    assert mapper.handle_binary(b"\x01\x02") == [AgentAudio(b"\x01\x02")]
    assert mapper.handle_binary(b"") == []


def test_latencies_that_are_not_numbers_are_none() -> None:
    mapper = applied_mapper()
    (event,) = text(mapper, {"type": "AgentStartedSpeaking", "total_latency": "0.5", "tts_latency": True})
    assert event == AgentStartedSpeaking()
    (event,) = mapper.handle_text('{"type": "AgentStartedSpeaking", "total_latency": NaN}')
    assert event.total_latency_ms is None


@pytest.mark.parametrize("kind", ["History", "LatencyReport", "FunctionCallResponse", "SomethingNew", None])
def test_unknown_and_undocumented_types_are_ignored(kind: str | None) -> None:
    mapper = applied_mapper()
    assert text(mapper, {"type": kind, "anything": [1, 2]}) == []


def test_update_confirmations_produce_no_events() -> None:
    mapper = applied_mapper()
    for kind in ("PromptUpdated", "SpeakUpdated", "ThinkUpdated", "ListenUpdated"):
        assert text(mapper, {"type": kind}) == []


def test_error_after_settings_is_a_non_fatal_provider_error() -> None:
    mapper = applied_mapper()
    assert text(mapper, {"type": "Error", "description": "think failed", "code": "E1"}) == [
        ProviderError("think failed", code="E1", fatal=False)
    ]
    # The real service also sends `message` and no code.
    assert text(mapper, {"type": "Error", "message": "function failed"}) == [
        ProviderError("function failed", code=None, fatal=False)
    ]
    assert mapper.last_error == "function failed"
    # Neither: the whole message is the text, so nothing is lost.
    (err,) = text(mapper, {"type": "Error", "code": 42})
    assert err.code == "42" and '"code": 42' in err.message


def test_error_before_settings_applied_rejects_the_session() -> None:
    mapper = DeepgramEventMapper()
    text(mapper, {"type": "Welcome", "request_id": "r"})
    assert text(mapper, {"type": "Error", "message": "bad think model", "code": "INVALID_SETTINGS"}) == [
        SessionRejected("bad think model", "INVALID_SETTINGS")
    ]


def test_warning_and_injection_refused() -> None:
    mapper = applied_mapper()
    assert text(mapper, {"type": "Warning", "description": "slow", "code": "W1"}) == [ProviderWarning("slow", code="W1")]
    assert text(mapper, {"type": "Warning", "message": "slow too"}) == [ProviderWarning("slow too", code=None)]
    assert text(mapper, {"type": "InjectionRefused", "message": "busy"}) == [
        ProviderWarning("InjectionRefused: busy", code="InjectionRefused")
    ]


def test_function_call_requests() -> None:
    mapper = applied_mapper()
    events = text(
        mapper,
        {
            "type": "FunctionCallRequest",
            "functions": [
                {"id": "c1", "name": "lookup", "arguments": '{"order": 42}', "client_side": True},
                {"id": "c2", "name": "server_fn", "arguments": "", "client_side": False},
                {"id": "c3", "name": "broken", "arguments": "{not json"},
                {"id": "c4", "name": "listy", "arguments": "[1, 2]"},
                {"id": "c5", "name": "dict", "arguments": {"a": 1}},
                "not a function",
            ],
        },
    )
    assert events == [
        FunctionCallRequest("c1", "lookup", {"order": 42}, client_side=True),
        FunctionCallRequest("c2", "server_fn", {}, client_side=False),
        FunctionCallRequest("c3", "broken", {"_raw": "{not json"}, client_side=True),
        FunctionCallRequest("c4", "listy", {"_value": [1, 2]}, client_side=True),
        FunctionCallRequest("c5", "dict", {"a": 1}, client_side=True),
    ]
    assert text(mapper, {"type": "FunctionCallRequest"}) == []


def test_malformed_text_is_a_warning_logged_once_with_the_reason() -> None:
    logger = RecordingLog()
    mapper = applied_mapper(logger)
    truncated = '{"type": "AgentAudioD'
    (first,) = mapper.handle_text(truncated)
    assert isinstance(first, ProviderWarning) and first.code == MALFORMED_JSON
    assert "not JSON" in first.message
    (second,) = mapper.handle_text("[1, 2]")
    assert second.code == MALFORMED_JSON and "list" in second.message
    (third,) = mapper.handle_text('"just a string"')
    assert third.code == MALFORMED_JSON
    assert mapper.malformed_messages == 3
    warnings = [line for line in logger.lines if line[0] == "warning"]
    assert len(warnings) == 1
    _, message, fields = warnings[0]
    assert "malformed" in message
    assert "not JSON" in fields["reason"] and fields["text"] == truncated
    # Nothing about the turn came out of it: no AgentAudioDone was invented.
    assert not any(isinstance(e, AgentAudioDone) for e in (first, second, third))
