"""Local agent configuration, availability and capabilities (no audio)."""

from __future__ import annotations

import pytest

from voiceline.audio.formats import AudioFormat
from voiceline.providers.base import CallContext
from voiceline.providers.local import (
    DEFAULT_GREETING,
    DEFAULT_RULES,
    LLMConfig,
    LocalAgentConfig,
    LocalAgentProvider,
    ScriptRule,
    STTConfig,
    TTSConfig,
)


def test_defaults() -> None:
    c = LocalAgentConfig()
    assert (
        c.sample_rate,
        c.vad_aggressiveness,
        c.end_of_utterance_ms,
        c.min_utterance_ms,
    ) == (
        8000,
        2,
        600,
        250,
    )
    assert c.greeting == DEFAULT_GREETING
    assert c.llm.kind == "scripted" and list(c.llm.rules) == list(DEFAULT_RULES)
    assert (c.tts.voice, c.tts.speed, c.tts.espeak_binary) == (
        "en-us",
        165,
        "espeak-ng",
    )
    assert c.stt.model is None and c.stt.phrases is None and c.stt.grammar is None
    c.validate()


def test_from_dict_builds_nested_config() -> None:
    c = LocalAgentConfig.from_dict(
        {
            "sample_rate": 16000,
            "greeting": None,
            "llm": {
                "kind": "openai_compatible",
                "base_url": "http://127.0.0.1:8080/v1",
                "model": "qwen2.5:0.5b",
                "api_key": None,
                "rules": [{"match": ["hello"], "reply": "Hi."}],
            },
            "tts": {"voice": "en-gb", "speed": 150},
            "stt": {"phrases": ["hello there"]},
        }
    )
    assert c.sample_rate == 16000 and c.greeting is None
    assert c.llm == LLMConfig(
        kind="openai_compatible",
        base_url="http://127.0.0.1:8080/v1",
        model="qwen2.5:0.5b",
        rules=[ScriptRule(match=["hello"], reply="Hi.")],
    )
    assert c.tts == TTSConfig(voice="en-gb", speed=150)
    assert c.stt == STTConfig(phrases=["hello there"])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"colour": "blue"}, "unknown key local.colour"),
        ({"llm": {"temprature": 1}}, "unknown key local.llm.temprature"),
        (
            {"llm": {"rules": [{"match": ["x"], "reply": "y", "when": 1}]}},
            r"local.llm.rules\[0\].when",
        ),
        ({"sample_rate": 11025}, "sample_rate"),
        ({"vad_aggressiveness": 5}, "vad_aggressiveness"),
        ({"end_of_utterance_ms": 10}, "end_of_utterance_ms"),
        ({"llm": {"kind": "openai_compatible"}}, "llm.model is required"),
        (
            {
                "llm": {
                    "kind": "openai_compatible",
                    "model": "m",
                    "base_url": "localhost:11434",
                }
            },
            "base_url",
        ),
        ({"llm": {"kind": "magic"}}, "llm.kind"),
        (
            {"llm": {"rules": [{"match": ["re:("], "reply": "y"}]}},
            r"llm.rules\[0\].match\[0\]",
        ),
    ],
)
def test_invalid_config_names_the_key(data: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LocalAgentConfig.from_dict(data)


def test_from_dict_needs_mappings() -> None:
    with pytest.raises(TypeError, match="local.tts must be a mapping"):
        LocalAgentConfig.from_dict({"tts": "espeak"})


def test_provider_availability_and_capabilities() -> None:
    provider = LocalAgentProvider()
    assert provider.name == "local"
    ok, reason = provider.availability()
    assert ok, reason
    assert "espeak-ng" in reason and "scripted" in reason
    session = provider.create_session(CallContext(call_id="caps"))
    caps = session.capabilities
    assert caps.input_format == caps.output_format == AudioFormat("slin16", 8000)
    assert caps.detects_turns and caps.interruptible


def test_missing_espeak_is_reported_with_the_fix() -> None:
    provider = LocalAgentProvider(
        LocalAgentConfig(tts=TTSConfig(espeak_binary="no-such-espeak"))
    )
    ok, reason = provider.availability()
    assert not ok
    assert "apt-get install espeak-ng" in reason and "no-such-espeak" in reason


def test_openai_compatible_availability_says_reachability_is_not_checked() -> None:
    config = LocalAgentConfig(llm=LLMConfig(kind="openai_compatible", model="llama3.2"))
    ok, reason = LocalAgentProvider(config).availability()
    assert ok
    assert (
        "reachability is not checked" in reason
        and "http://127.0.0.1:11434/v1" in reason
    )
