"""The configuration contract: typed pydantic models for ``config/ai-agent.yaml``.

Every key is a typed, documented field; unknown keys are errors. ``${VAR}`` and
``${VAR:-default}`` in string values are expanded from the environment, which is
the one documented way to inject secrets and per-host values. Errors name the
key path, the offending value and what is allowed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class ConfigError(Exception):
    """A config file that cannot be used; the message lists every problem."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        where = f" in {source}" if source else ""
        super().__init__(f"invalid configuration{where}:\n" + "\n".join(f"  - {p}" for p in problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ---------------------------------------------------------------------------- sections


class AsteriskSettings(_Strict):
    ari_url: str = Field("http://127.0.0.1:8088/ari", description="ARI base URL, including /ari")
    username: str = "voiceline"
    password: SecretStr = Field(SecretStr(""), description="ARI password; ship as ${ARI_PASSWORD}")
    app_name: str = Field("voiceline", pattern=r"^[A-Za-z0-9_.-]+$")
    request_timeout_ms: int = Field(5000, gt=0)
    reconnect_initial_ms: int = Field(500, gt=0)
    reconnect_max_ms: int = Field(10000, gt=0)

    @field_validator("ari_url")
    @classmethod
    def _ari_url_shape(cls, value: str) -> str:
        if not re.match(r"^https?://[^/]+/.*ari/?$", value):
            raise ValueError("must be an http(s) URL ending in /ari, e.g. http://127.0.0.1:8088/ari")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _backoff_order(self) -> AsteriskSettings:
        if self.reconnect_initial_ms > self.reconnect_max_ms:
            raise ValueError("reconnect_initial_ms must not exceed reconnect_max_ms")
        return self


class AudioSocketSettings(_Strict):
    host: str = Field("127.0.0.1", description="address the AudioSocket listener binds")
    port: int = Field(9092, ge=0, le=65535)
    advertise_host: str = Field(
        "127.0.0.1", description="host Asterisk connects to (externalMedia external_host); ari mode"
    )
    allowed_peers: list[str] = Field(default_factory=lambda: ["127.0.0.1/32", "::1/128"])
    uuid_timeout_ms: int = Field(5000, gt=0)
    write_limit_bytes: int = Field(65536, ge=4096)
    sample_rate: Literal[8000, 12000, 16000, 24000, 32000, 44100, 48000, 96000, 192000] = Field(
        8000, description="wire rate of slin frames we request in ari mode (externalMedia format)"
    )

    @field_validator("allowed_peers")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        for item in value:
            try:
                ipaddress.ip_network(item, strict=True)
            except ValueError as exc:
                raise ValueError(f"{item!r} is not an IP address or network: {exc}") from None
        return value


class StreamingSettings(_Strict):
    chunk_size_ms: int = Field(20, description="wire frame duration (multiple of 10, 10-60)")
    min_start_ms: int = Field(120, ge=0, description="buffered agent audio before a turn starts playing")
    low_watermark_ms: int = Field(20, ge=0, description="depth below which an open turn pauses")
    jitter_buffer_ms: int = Field(60000, gt=0, description="capacity of the per-call agent audio buffer")
    fallback_timeout_ms: int = Field(4000, ge=0, description="stall before file playback; 0 disables")
    provider_grace_ms: int = Field(500, ge=0, description="late chunks after turn end still played")
    logging_level: LogLevel = "INFO"
    fallback_media_dir: str = Field(
        "/var/lib/asterisk/sounds/voiceline", description="engine-side directory for fallback files"
    )
    fallback_media_uri: str = Field(
        "sound:/var/lib/asterisk/sounds/voiceline", description="the same directory as Asterisk sees it"
    )

    @model_validator(mode="after")
    def _cross_field(self) -> StreamingSettings:
        # The streaming core owns these rules; the config reports them with the key path.
        from voiceline.core.stream_params import StreamParams

        StreamParams(**self.model_dump(exclude={"fallback_media_dir", "fallback_media_uri"}))
        return self


class BargeInSettings(_Strict):
    enabled: bool = True
    min_ms: int = Field(250, gt=0, description="speech needed to confirm an interruption")
    energy_threshold: int = Field(1000, ge=0, description="RMS (16-bit) a frame needs to count as speech")
    vad_aggressiveness: int = Field(2, ge=0, le=3)
    cooldown_ms: int = Field(500, ge=0)
    initial_protection_ms: int = Field(200, ge=0)
    soft_pause_ms: int = Field(60, ge=0, description="speech that pauses agent audio until confirmed (0 = off)")


class LoggingSettings(_Strict):
    level: LogLevel = "INFO"
    format: Literal["auto", "json", "console"] = "auto"
    levels: dict[str, LogLevel] = Field(default_factory=dict, description="per-component levels")


class HttpSettings(_Strict):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9091, ge=0, le=65535)
    bearer_token: SecretStr = SecretStr("")


class HistorySettings(_Strict):
    enabled: bool = True
    url: SecretStr = Field(SecretStr("sqlite:///data/calls.db"), description="SQLAlchemy URL")


class EchoProviderSettings(_Strict):
    delay_ms: int = Field(500, ge=0, le=10000, description="how long after the caller the audio comes back")


class DeepgramFunction(_Strict):
    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict, description="JSON schema of the arguments")
    endpoint: dict[str, Any] | None = Field(None, description="server-side function: {url, method, headers}")


class DeepgramProviderSettings(_Strict):
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
    keepalive_interval_s: float = Field(8.0, gt=0)
    connect_timeout_s: float = Field(10.0, gt=0)
    settings_timeout_s: float = Field(10.0, gt=0)
    pre_settings_buffer_ms: int = Field(5000, ge=0)


class OpenAITurnDetection(_Strict):
    type: Literal["server_vad"] = "server_vad"
    threshold: float = Field(0.5, ge=0, le=1)
    prefix_padding_ms: int = Field(300, ge=0)
    silence_duration_ms: int = Field(500, ge=0)
    create_response: bool = True
    interrupt_response: bool = True


class OpenAIRealtimeProviderSettings(_Strict):
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


class LocalScriptRule(_Strict):
    match: list[str] = Field(min_length=1, description="keywords (word* = any ending) or re:REGEX")
    reply: str


def _default_rules() -> list[LocalScriptRule]:
    from voiceline.providers.local.llm import DEFAULT_RULES

    return [LocalScriptRule(match=list(r.match), reply=r.reply) for r in DEFAULT_RULES]


def _local_default(module: str, name: str):
    """A default of the local agent, taken from its own module so the two cannot drift."""
    import importlib

    return getattr(importlib.import_module(f"voiceline.providers.local.{module}"), name)


def _default_phrases() -> list[str]:
    # The scripted FAQ line is the default LLM, so recognition defaults to a small
    # language model of the questions it answers: far more accurate on phone audio.
    from voiceline.providers.local.llm import DEFAULT_SCRIPT_PHRASES

    return list(DEFAULT_SCRIPT_PHRASES)


def _default_fallback_reply() -> str:
    from voiceline.providers.local.llm import DEFAULT_FALLBACK_REPLY

    return DEFAULT_FALLBACK_REPLY


class LocalLLMSettings(_Strict):
    kind: Literal["scripted", "openai_compatible"] = "scripted"
    base_url: str = Field("http://127.0.0.1:11434/v1", description="OpenAI-style API root (Ollama, llama.cpp, vLLM)")
    model: str = ""
    api_key: SecretStr = SecretStr("")
    system_prompt: str = Field(default_factory=lambda: _local_default("llm", "DEFAULT_SYSTEM_PROMPT"))
    temperature: float = Field(0.7, ge=0, le=2)
    max_tokens: int | None = Field(200, gt=0)
    timeout_s: float = Field(20.0, gt=0)
    max_history_messages: int = Field(20, ge=0)
    rules: list[LocalScriptRule] = Field(default_factory=_default_rules)
    fallback_reply: str = Field(default_factory=_default_fallback_reply)


class LocalTTSSettings(_Strict):
    voice: str = "en-us"
    speed: int = Field(165, gt=0, description="words per minute")
    espeak_binary: str = "espeak-ng"
    timeout_s: float = Field(10.0, gt=0)


class LocalSTTSettings(_Strict):
    model: str | None = Field(None, description="acoustic model dir; null = the one in the pocketsphinx wheel")
    lm: str | None = None
    dictionary: str | None = None
    phrases: list[str] | None = Field(
        default_factory=lambda: _default_phrases(),
        description="example caller sentences for a small LM (null: the general English LM)",
    )
    keyphrase: str | None = None
    kws_threshold: float = 1e-20
    grammar: str | None = None
    streaming: bool = Field(False, description="search while audio arrives (faster, less accurate)")
    noise_floor: float = Field(64.0, ge=0, description="σ of quiet noise added so digital silence decodes")


class LocalProviderSettings(_Strict):
    sample_rate: Literal[8000, 16000, 32000, 48000] = 8000
    vad_aggressiveness: int = Field(2, ge=0, le=3)
    onset_ms: int = Field(100, ge=20)
    end_of_utterance_ms: int = Field(600, ge=20)
    min_utterance_ms: int = Field(250, ge=0)
    max_utterance_ms: int = Field(20000, gt=0)
    greeting: str | None = Field(default_factory=lambda: _local_default("agent", "DEFAULT_GREETING"))
    apology: str = Field(default_factory=lambda: _local_default("agent", "DEFAULT_APOLOGY"))
    chunk_ms: int = Field(100, gt=0)
    llm: LocalLLMSettings = Field(default_factory=LocalLLMSettings)
    tts: LocalTTSSettings = Field(default_factory=LocalTTSSettings)
    stt: LocalSTTSettings = Field(default_factory=LocalSTTSettings)


class ProvidersSettings(_Strict):
    echo: EchoProviderSettings = Field(default_factory=EchoProviderSettings)
    deepgram: DeepgramProviderSettings = Field(default_factory=DeepgramProviderSettings)
    openai_realtime: OpenAIRealtimeProviderSettings = Field(default_factory=OpenAIRealtimeProviderSettings)
    local: LocalProviderSettings = Field(default_factory=LocalProviderSettings)


class Settings(_Strict):
    mode: Literal["ari", "audiosocket"] = "ari"
    default_provider: str = "echo"
    asterisk: AsteriskSettings = Field(default_factory=AsteriskSettings)
    audiosocket: AudioSocketSettings = Field(default_factory=AudioSocketSettings)
    streaming: StreamingSettings = Field(default_factory=StreamingSettings)
    barge_in: BargeInSettings = Field(default_factory=BargeInSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    history: HistorySettings = Field(default_factory=HistorySettings)
    providers: ProvidersSettings = Field(default_factory=ProvidersSettings)

    @model_validator(mode="after")
    def _default_provider_known(self) -> Settings:
        known = set(type(self.providers).model_fields)
        if self.default_provider not in known:
            raise ValueError(f"default_provider {self.default_provider!r} is not one of {sorted(known)}")
        return self

    def masked(self) -> dict[str, Any]:
        """The effective config as plain data with every secret replaced by ``***``."""
        return _mask(self.model_dump(mode="python"))

    def digest(self) -> str:
        """A short hash of the effective config (secrets included) for /health."""
        raw = json.dumps(reveal_secrets(self.model_dump(mode="python")), sort_keys=True, default=str)
        return hashlib.sha256(raw.encode()).hexdigest()[:12]


def _mask(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return "***" if value.get_secret_value() else ""
    if isinstance(value, dict):
        return {k: _mask(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v) for v in value]
    return value


def reveal_secrets(value: Any, *, empty_as_none: bool = False) -> Any:
    """Plain data with every SecretStr replaced by its value (for the config consumers
    that need the real thing: the ARI client, provider configs, re-validation)."""
    if isinstance(value, SecretStr):
        secret = value.get_secret_value()
        return (secret or None) if empty_as_none else secret
    if isinstance(value, dict):
        return {k: reveal_secrets(v, empty_as_none=empty_as_none) for k, v in value.items()}
    if isinstance(value, list):
        return [reveal_secrets(v, empty_as_none=empty_as_none) for v in value]
    return value





# ---------------------------------------------------------------------------- loading

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: Any, env: Mapping[str, str], path: str = "", missing: list[str] | None = None) -> Any:
    """Expand ``${VAR}`` / ``${VAR:-default}`` in every string of a YAML tree.

    An unset ``${VAR}`` without a default becomes an empty string and is recorded in
    ``missing`` (with its key path) so callers can say which secret is absent.
    """
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env and env[name] != "":
                return env[name]
            if default is not None:
                return default
            if missing is not None:
                missing.append(f"{path or '<root>'}: environment variable {name} is not set")
            return ""

        return _VAR.sub(substitute, value)
    if isinstance(value, dict):
        return {k: expand_env(v, env, f"{path}.{k}" if path else str(k), missing) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, env, f"{path}[{i}]", missing) for i, v in enumerate(value)]
    return value


def _format_error(err: Mapping[str, Any]) -> str:
    loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-after"))
    value = err.get("input")
    shown = "***" if any(s in loc for s in ("password", "api_key", "token", "url")) and "history" in loc else value
    if err["type"] == "extra_forbidden":
        return f"{loc}: unknown key (value {shown!r}); check the spelling against config/ai-agent.yaml"
    msg = err["msg"].removeprefix("Value error, ")
    if isinstance(shown, dict):
        # A cross-field rule of a whole section: the message names the fields itself.
        return f"{loc or '<root>'}: {msg}"
    return f"{loc or '<root>'}: {msg} (got {shown!r})"


def parse_settings(data: Any, *, env: Mapping[str, str] | None = None, source: str | None = None) -> tuple[Settings, list[str]]:
    """Validate a YAML tree. Returns the settings and the list of unset env variables."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"<root>: expected a mapping of sections, got {type(data).__name__}"], source)
    missing: list[str] = []
    expanded = expand_env(data, os.environ if env is None else env, missing=missing)
    try:
        return Settings.model_validate(expanded), missing
    except ValidationError as exc:
        raise ConfigError([_format_error(e) for e in exc.errors()], source) from None


def load_settings(path: str | Path, *, env: Mapping[str, str] | None = None) -> tuple[Settings, list[str]]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError([f"cannot read {path}: {exc.strerror}"], str(path)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"YAML syntax error: {exc}"], str(path)) from None
    return parse_settings(data, env=env, source=str(path))
