"""``build_settings`` checked against Deepgram's own SDK types for the v1 Settings message.

The SDK models are permissive (``extra="allow"``, open string unions), so a typo would
still parse. Each check therefore validates in pydantic strict mode (no "8000" for an
int, no 8000.0 either), walks the parsed tree to make sure no key landed in
``model_extra`` (an unknown field), and requires that dumping the model gives back
exactly the dict we built (nothing coerced, nothing dropped).
"""

from __future__ import annotations

import json
import typing
from typing import Any

import pydantic
import pytest
from deepgram.agent.v1.types import AgentV1Settings
from deepgram.agent.v1.types.agent_v1settings_audio_input_encoding import (
    AgentV1SettingsAudioInputEncoding,
)
from deepgram.agent.v1.types.agent_v1settings_audio_output_container import (
    AgentV1SettingsAudioOutputContainer,
)
from deepgram.agent.v1.types.agent_v1settings_audio_output_encoding import (
    AgentV1SettingsAudioOutputEncoding,
)
from deepgram.types.deepgram_model import DeepgramModel
from deepgram.types.open_ai_think_provider_model import OpenAiThinkProviderModel

from voiceline.audio.formats import AudioFormat
from voiceline.config import DeepgramProviderSettings
from voiceline.providers.base import CallContext
from voiceline.providers.deepgram import (
    DeepgramProvider,
    DeepgramSession,
    build_settings,
    input_format,
    output_format,
)
from voiceline.sim.deepgram_sim import validate_settings


def _known_literals(open_union: Any) -> tuple[str, ...]:
    """The Literal members of the SDK's ``Union[Literal[...], Any]`` enums."""
    for arg in typing.get_args(open_union):
        if typing.get_origin(arg) is typing.Literal:
            return typing.get_args(arg)
    raise AssertionError(f"no Literal in {open_union}")


def _assert_no_extras(obj: Any, path: str) -> None:
    if isinstance(obj, pydantic.BaseModel):
        extra = obj.model_extra or {}
        assert not extra, f"unknown field(s) at {path}: {sorted(extra)}"
        for name in type(obj).model_fields:
            _assert_no_extras(getattr(obj, name), f"{path}.{name}")
    elif isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            _assert_no_extras(item, f"{path}[{i}]")


def assert_sdk_valid(model_cls: type[pydantic.BaseModel], data: dict[str, Any]) -> pydantic.BaseModel:
    model = model_cls.model_validate(data, strict=True)
    _assert_no_extras(model, model_cls.__name__)
    assert model.model_dump(exclude_unset=True, by_alias=True) == data
    # What goes on the wire is JSON: it must survive the round trip unchanged.
    assert json.loads(json.dumps(data)) == data
    return model


def _assert_no_none(value: Any, path: str = "") -> None:
    assert value is not None, f"null sent at {path or 'top level'}"
    if isinstance(value, dict):
        for k, v in value.items():
            _assert_no_none(v, f"{path}.{k}" if path else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _assert_no_none(v, f"{path}[{i}]")


FUNCTIONS = [
    {
        "name": "lookup_order",
        "description": "Find an order by its number",
        "parameters": {
            "type": "object",
            "properties": {"order_number": {"type": "string", "description": "the order number"}},
            "required": ["order_number"],
        },
    },
    {
        "name": "transfer_call",
        "description": "Transfer the caller to a human",
        "parameters": {"type": "object", "properties": {}},
        "endpoint": {"url": "https://example.invalid/transfer", "method": "post", "headers": {"X-Key": "abc"}},
    },
]


def full_config() -> DeepgramProviderSettings:
    return DeepgramProviderSettings(
        api_key="k",
        input_encoding="linear16",
        input_sample_rate=16000,
        output_encoding="linear16",
        output_sample_rate=24000,
        think_temperature=0.4,
        prompt="You are the front desk of a dental practice.",
        greeting="Hello, you have reached the practice. How can I help?",
        functions=FUNCTIONS,
        tags=["voiceline", "test"],
    )


def test_default_settings_match_sdk_type() -> None:
    settings = build_settings(DeepgramProviderSettings(api_key="k"))
    model = assert_sdk_valid(AgentV1Settings, settings)
    assert settings["type"] == "Settings"
    assert settings["audio"] == {
        "input": {"encoding": "mulaw", "sample_rate": 8000},
        "output": {"encoding": "mulaw", "sample_rate": 8000, "container": "none"},
    }
    agent = settings["agent"]
    assert agent["language"] == "en"
    assert agent["listen"] == {"provider": {"type": "deepgram", "model": "nova-3"}}
    assert agent["think"]["provider"] == {"type": "open_ai", "model": "gpt-4o-mini"}
    assert isinstance(agent["think"]["prompt"], str) and agent["think"]["prompt"]
    assert agent["speak"] == {"provider": {"type": "deepgram", "model": "aura-2-thalia-en"}}
    # Parsed into the structured agent model, not the bare-string alternative.
    assert not isinstance(model.agent, str)  # type: ignore[attr-defined]
    _assert_no_none(settings)


def test_full_settings_match_sdk_type() -> None:
    settings = build_settings(full_config())
    assert_sdk_valid(AgentV1Settings, settings)
    assert settings["tags"] == ["voiceline", "test"]
    assert settings["audio"]["input"] == {"encoding": "linear16", "sample_rate": 16000}
    assert settings["audio"]["output"] == {"encoding": "linear16", "sample_rate": 24000, "container": "none"}
    think = settings["agent"]["think"]
    assert think["provider"] == {"type": "open_ai", "model": "gpt-4o-mini", "temperature": 0.4}
    assert think["prompt"] == "You are the front desk of a dental practice."
    assert [f["name"] for f in think["functions"]] == ["lookup_order", "transfer_call"]
    assert think["functions"][0]["parameters"]["required"] == ["order_number"]
    assert "endpoint" not in think["functions"][0]  # client-side function
    assert think["functions"][1]["endpoint"]["url"] == "https://example.invalid/transfer"
    assert settings["agent"]["greeting"].startswith("Hello")
    _assert_no_none(settings)


@pytest.mark.parametrize("cfg", [DeepgramProviderSettings(api_key="k"), full_config()], ids=["default", "full"])
def test_enum_values_are_ones_the_sdk_knows(cfg: DeepgramProviderSettings) -> None:
    """The SDK types accept any string for these; the known values are in its Literals."""
    s = build_settings(cfg)
    assert s["audio"]["input"]["encoding"] in _known_literals(AgentV1SettingsAudioInputEncoding)
    assert s["audio"]["output"]["encoding"] in _known_literals(AgentV1SettingsAudioOutputEncoding)
    assert s["audio"]["output"]["container"] in _known_literals(AgentV1SettingsAudioOutputContainer)
    assert s["agent"]["think"]["provider"]["model"] in _known_literals(OpenAiThinkProviderModel)
    assert s["agent"]["speak"]["provider"]["model"] in _known_literals(DeepgramModel)


def test_sample_rates_are_ints() -> None:
    cfg = DeepgramProviderSettings(api_key="k", input_sample_rate=16000.0, output_sample_rate="24000")  # type: ignore[arg-type]
    s = build_settings(cfg)
    assert type(s["audio"]["input"]["sample_rate"]) is int and s["audio"]["input"]["sample_rate"] == 16000
    assert type(s["audio"]["output"]["sample_rate"]) is int and s["audio"]["output"]["sample_rate"] == 24000
    assert '"sample_rate": 16000' in json.dumps(s)
    assert_sdk_valid(AgentV1Settings, s)
    with pytest.raises(ValueError, match="input_sample_rate"):
        DeepgramProviderSettings(api_key="k", input_sample_rate=8000.5)  # type: ignore[arg-type]


def test_none_fields_are_omitted() -> None:
    cfg = DeepgramProviderSettings(api_key="k", prompt="", greeting=None, think_temperature=None, functions=[], tags=None)
    s = build_settings(cfg)
    assert "tags" not in s
    assert "greeting" not in s["agent"]
    assert set(s["agent"]["think"]) == {"provider"}
    assert "temperature" not in s["agent"]["think"]["provider"]
    _assert_no_none(s)
    assert_sdk_valid(AgentV1Settings, s)
    # An empty greeting is no greeting.
    assert "greeting" not in build_settings(DeepgramProviderSettings(api_key="k", greeting=""))["agent"]


def test_temperature_is_a_number_and_functions_default_parameters() -> None:
    cfg = DeepgramProviderSettings(api_key="k", think_temperature=1, functions=[{"name": "hang_up", "description": "End the call"}])
    s = build_settings(cfg)
    assert s["agent"]["think"]["provider"]["temperature"] == 1.0
    assert isinstance(s["agent"]["think"]["provider"]["temperature"], float)
    assert s["agent"]["think"]["functions"] == [
        {"name": "hang_up", "description": "End the call", "parameters": {"type": "object", "properties": {}}}
    ]
    assert_sdk_valid(AgentV1Settings, s)


def test_bad_config_is_refused_before_sending() -> None:
    # The config model names the field (pydantic's ValidationError is a ValueError).
    with pytest.raises(ValueError, match=r"functions\.0\.paramters"):
        DeepgramProviderSettings(api_key="k", functions=[{"name": "f", "paramters": {}}])
    with pytest.raises(ValueError, match=r"functions\.0\.name"):
        DeepgramProviderSettings(api_key="k", functions=[{"description": "nameless"}])
    with pytest.raises(ValueError, match="input_encoding"):
        DeepgramProviderSettings(api_key="k", input_encoding="opus")
    with pytest.raises(ValueError, match="output_container"):
        DeepgramProviderSettings(api_key="k", output_container="mp4")
    # What the model cannot say (an endpoint's shape) build_settings does.
    with pytest.raises(ValueError, match="endpoint.*url"):
        build_settings(DeepgramProviderSettings(api_key="k", functions=[{"name": "f", "endpoint": {"method": "post"}}]))
    with pytest.raises(ValueError, match="endpoint field.*'verb'"):
        build_settings(
            DeepgramProviderSettings(api_key="k", functions=[{"name": "f", "endpoint": {"url": "https://x.invalid", "verb": "post"}}])
        )
    with pytest.raises(ValueError, match="name"):
        build_settings(DeepgramProviderSettings(api_key="k", functions=[{"name": ""}]))


def test_linear16_is_the_engines_slin16() -> None:
    cfg = DeepgramProviderSettings(api_key="k", input_encoding="linear16", input_sample_rate=16000, output_encoding="alaw")
    assert build_settings(cfg)["audio"]["input"] == {"encoding": "linear16", "sample_rate": 16000}
    assert input_format(cfg) == AudioFormat("slin16", 16000)
    assert output_format(cfg) == AudioFormat("alaw", 8000)


def test_the_checks_catch_mistakes() -> None:
    """The harness itself must fail on a typo, a stringly int and a float rate."""
    good = build_settings(full_config())
    typo = json.loads(json.dumps(good))
    typo["agent"]["think"]["provider"]["temprature"] = 0.4
    with pytest.raises(AssertionError, match="temprature"):
        assert_sdk_valid(AgentV1Settings, typo)
    for bad_rate in ("8000", 8000.0):
        wrong = json.loads(json.dumps(good))
        wrong["audio"]["input"]["sample_rate"] = bad_rate
        with pytest.raises(pydantic.ValidationError):
            assert_sdk_valid(AgentV1Settings, wrong)


def test_simulator_validator_agrees() -> None:
    """The simulator is strict in the same places: it accepts ours, names the bad field."""
    for cfg in (DeepgramProviderSettings(api_key="k"), full_config()):
        assert validate_settings(build_settings(cfg)) is None
    typo = build_settings(full_config())
    typo["agent"]["think"]["provider"]["temprature"] = 0.4
    assert "agent.think.provider.temprature" in (validate_settings(typo) or "")
    as_str = build_settings(DeepgramProviderSettings(api_key="k"))
    as_str["audio"]["input"]["sample_rate"] = "8000"
    assert "audio.input.sample_rate" in (validate_settings(as_str) or "")
    nulled = build_settings(DeepgramProviderSettings(api_key="k"))
    nulled["agent"]["greeting"] = None
    assert "agent.greeting" in (validate_settings(nulled) or "")


def test_provider_availability_and_session_capabilities() -> None:
    usable, why = DeepgramProvider(DeepgramProviderSettings()).availability()
    assert not usable and "DEEPGRAM_API_KEY" in why
    usable, why = DeepgramProvider(DeepgramProviderSettings(api_key="")).availability()
    assert not usable
    no_url = DeepgramProviderSettings(api_key="k", functions=[{"name": "f", "endpoint": {"method": "post"}}])
    usable, why = DeepgramProvider(no_url).availability()
    assert not usable and "endpoint" in why and "'f'" in why
    provider = DeepgramProvider(DeepgramProviderSettings(api_key="k"))
    assert provider.name == "deepgram"
    assert provider.availability() == (True, "ok")
    session = provider.create_session(CallContext(call_id="c1"))
    assert isinstance(session, DeepgramSession)
    caps = session.capabilities
    assert caps.input_format == AudioFormat("mulaw", 8000)
    assert caps.output_format == AudioFormat("mulaw", 8000)
    assert caps.detects_turns and caps.interruptible


def test_one_prompt_default_the_config_models() -> None:
    """The prompt and greeting sent by default are the config model's, nowhere else."""
    defaults = DeepgramProviderSettings(api_key="k")
    think = build_settings(defaults)["agent"]["think"]
    assert think["prompt"] == DeepgramProviderSettings.model_fields["prompt"].default
    assert build_settings(defaults)["agent"]["greeting"] == DeepgramProviderSettings.model_fields["greeting"].default


def test_a_function_named_like_an_enabled_action_is_refused() -> None:
    cfg = DeepgramProviderSettings(
        api_key="k", functions=[{"name": "hangup"}], actions={"hangup": {"enabled": True}}
    )
    with pytest.raises(ValueError, match=r"\['hangup'\] declared twice"):
        build_settings(cfg)
