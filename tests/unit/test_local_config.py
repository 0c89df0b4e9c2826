"""Local agent settings (the one pydantic model the agent reads), availability and capabilities."""

from __future__ import annotations

import pytest

from voiceline.audio.formats import AudioFormat
from voiceline.config import (
    DEFAULT_GREETING,
    DEFAULT_RULES,
    DEFAULT_SCRIPT_PHRASES,
    ConfigError,
    LocalLLMSettings,
    LocalProviderSettings,
    LocalScriptRule,
    LocalSTTSettings,
    LocalTTSSettings,
    parse_settings,
)
from voiceline.providers.base import CallContext
from voiceline.providers.local import LocalAgentProvider


def local_settings(data: dict) -> LocalProviderSettings:
    return parse_settings({"providers": {"local": data}}, env={})[0].providers.local


def test_defaults() -> None:
    c = LocalProviderSettings()
    assert (c.sample_rate, c.vad_aggressiveness, c.end_of_utterance_ms, c.min_utterance_ms) == (8000, 2, 600, 250)
    assert c.greeting == DEFAULT_GREETING
    assert c.llm.kind == "scripted" and list(c.llm.rules) == list(DEFAULT_RULES)
    assert (c.tts.voice, c.tts.speed, c.tts.espeak_binary) == ("en-us", 165, "espeak-ng")
    # The default script comes with the phrase model of its questions.
    assert c.stt.model is None and c.stt.phrases == list(DEFAULT_SCRIPT_PHRASES) and c.stt.grammar is None


def test_default_rules_are_copies_per_settings_object() -> None:
    first, second = LocalProviderSettings(), LocalProviderSettings()
    first.llm.rules[0].match.append("brunch")
    assert "brunch" not in second.llm.rules[0].match
    assert "brunch" not in DEFAULT_RULES[0].match


def test_yaml_builds_nested_settings() -> None:
    c = local_settings({
        "sample_rate": 16000,
        "greeting": None,
        "llm": {
            "kind": "openai_compatible",
            "base_url": "http://127.0.0.1:8080/v1",
            "model": "qwen2.5:0.5b",
            "rules": [{"match": ["hello"], "reply": "Hi."}],
        },
        "tts": {"voice": "en-gb", "speed": 150},
        "stt": {"phrases": ["hello there"]},
    })
    assert c.sample_rate == 16000 and c.greeting is None
    assert c.llm == LocalLLMSettings(
        kind="openai_compatible",
        base_url="http://127.0.0.1:8080/v1",
        model="qwen2.5:0.5b",
        rules=[LocalScriptRule(match=["hello"], reply="Hi.")],
    )
    assert c.tts == LocalTTSSettings(voice="en-gb", speed=150)
    assert c.stt == LocalSTTSettings(phrases=["hello there"])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"colour": "blue"}, "providers.local.colour: unknown key"),
        ({"llm": {"temprature": 1}}, "providers.local.llm.temprature: unknown key"),
        ({"llm": {"rules": [{"match": ["x"], "reply": "y", "when": 1}]}}, r"providers.local.llm.rules\[0\].when: unknown key"),
        ({"sample_rate": 11025}, "providers.local.sample_rate"),
        ({"vad_aggressiveness": 5}, "providers.local.vad_aggressiveness"),
        ({"end_of_utterance_ms": 10}, "providers.local.end_of_utterance_ms"),
        ({"max_utterance_ms": 200}, r"providers.local: max_utterance_ms \(200\) must be at least min_utterance_ms"),
        ({"apology": "  "}, "providers.local.apology: must not be empty"),
        ({"llm": {"kind": "openai_compatible"}}, "providers.local.llm: model is required"),
        ({"llm": {"kind": "openai_compatible", "model": "m", "base_url": "localhost:11434"}},
         "providers.local.llm: base_url must be an http"),
        ({"llm": {"kind": "magic"}}, "providers.local.llm.kind"),
        ({"llm": {"rules": [{"match": [], "reply": "y"}]}}, r"providers.local.llm.rules\[0\].match"),
        ({"tts": "espeak"}, "providers.local.tts"),
    ],
)
def test_invalid_settings_name_the_key(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        local_settings(data)


def test_broken_rule_pattern_is_refused_when_the_provider_is_built() -> None:
    settings = LocalProviderSettings(llm=LocalLLMSettings(rules=[LocalScriptRule(match=["re:("], reply="y")]))
    with pytest.raises(ValueError, match=r"^llm.rules\[0\].match\[0\]: 're:\(' is not a valid entry"):
        LocalAgentProvider(settings)


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
    provider = LocalAgentProvider(LocalProviderSettings(tts=LocalTTSSettings(espeak_binary="no-such-espeak")))
    ok, reason = provider.availability()
    assert not ok
    assert "apt-get install espeak-ng" in reason and "no-such-espeak" in reason


def test_openai_compatible_availability_says_reachability_is_not_checked() -> None:
    settings = LocalProviderSettings(llm=LocalLLMSettings(kind="openai_compatible", model="llama3.2"))
    ok, reason = LocalAgentProvider(settings).availability()
    assert ok
    assert "reachability is not checked" in reason and "http://127.0.0.1:11434/v1" in reason
