"""One settings model per provider. The provider is constructed with its model and
reads it directly (secrets with ``.get_secret_value()``); defaults live only here."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SecretStr

from voiceline.config.actions import ActionsSettings
from voiceline.config.base import Strict
from voiceline.config.local_agent import LocalProviderSettings


class EchoProviderSettings(Strict):
    delay_ms: int = Field(500, ge=0, le=10000, description="how long after the caller the audio comes back")


class DeepgramFunction(Strict):
    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict, description="JSON schema of the arguments")
    endpoint: dict[str, Any] | None = Field(None, description="server-side function: {url, method, headers}")


class DeepgramProviderSettings(Strict):
    url: str = Field("wss://agent.deepgram.com/v1/agent/converse", pattern=r"^wss?://")
    api_key: SecretStr = Field(SecretStr(""), description="from DEEPGRAM_API_KEY")
    input_encoding: Literal["mulaw", "alaw", "linear16"] = "mulaw"
    input_sample_rate: int = Field(8000, gt=0)
    output_encoding: Literal["mulaw", "alaw", "linear16"] = "mulaw"
    output_sample_rate: int = Field(8000, gt=0)
    output_container: Literal["none"] = "none"
    language: str = "en"
    listen_provider: str = "deepgram"
    listen_model: str = "nova-3"
    think_provider: str = "open_ai"
    think_model: str = "gpt-4o-mini"
    think_temperature: float | None = Field(None, ge=0, le=2)
    prompt: str = "You are a friendly phone assistant. Keep answers short: one or two sentences."
    greeting: str | None = "Hello! How can I help you today?"
    speak_provider: str = "deepgram"
    speak_model: str = "aura-2-thalia-en"
    functions: list[DeepgramFunction] = Field(default_factory=list)
    tags: list[str] | None = None
    keepalive_interval_s: float = Field(8.0, gt=0, description="KeepAlive after this long without audio")
    connect_timeout_s: float = Field(10.0, gt=0)
    settings_timeout_s: float = Field(10.0, gt=0, description="Welcome -> SettingsApplied")
    pre_settings_buffer_ms: int = Field(5000, ge=0, description="caller audio held while Settings applies")
    actions: ActionsSettings = Field(default_factory=ActionsSettings, description="functions the engine runs")


class OpenAITurnDetection(Strict):
    type: Literal["server_vad"] = "server_vad"
    threshold: float = Field(0.5, ge=0, le=1)
    prefix_padding_ms: int = Field(300, ge=0)
    silence_duration_ms: int = Field(500, ge=0)
    create_response: bool = True
    interrupt_response: bool = True


class OpenAIRealtimeProviderSettings(Strict):
    url: str = Field("wss://api.openai.com/v1/realtime", pattern=r"^wss?://")
    api_key: SecretStr = Field(SecretStr(""), description="from OPENAI_API_KEY")
    model: str = "gpt-realtime"
    voice: str = "alloy"
    instructions: str = "You are a helpful voice assistant answering a phone call. Keep answers short."
    greeting: str | None = None
    audio_format: Literal["g711_ulaw", "g711_alaw", "pcm16"] = "g711_ulaw"
    api_shape: Literal["ga", "beta"] = "ga"
    turn_detection: OpenAITurnDetection | None = Field(default_factory=OpenAITurnDetection)
    transcription_model: str | None = "whisper-1"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    connect_timeout_s: float = Field(10.0, gt=0)
    actions: ActionsSettings = Field(default_factory=ActionsSettings, description="functions the engine runs")


class ProvidersSettings(Strict):
    echo: EchoProviderSettings = Field(default_factory=EchoProviderSettings)
    deepgram: DeepgramProviderSettings = Field(default_factory=DeepgramProviderSettings)
    openai_realtime: OpenAIRealtimeProviderSettings = Field(default_factory=OpenAIRealtimeProviderSettings)
    local: LocalProviderSettings = Field(default_factory=LocalProviderSettings)
