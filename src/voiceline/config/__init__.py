"""The configuration contract: typed pydantic models for ``config/ai-agent.yaml``.

Every key is a typed, documented field; unknown keys are errors naming their key
path. ``${VAR}`` / ``${VAR:-default}`` in string values are expanded from the
environment (the one documented override mechanism). This package imports no
domain module: rules that belong to a domain (the streaming core's cross-field
rules, the local agent's script syntax) are applied by ``voiceline.wiring``, which
reports them with the key path as well.

Modules: ``base`` (ConfigError, the strict model), ``engine`` (engine sections),
``providers`` and ``local_agent`` (one model per provider, with its defaults),
``settings`` (the root), ``loading`` (YAML, env, renamed keys, error messages).
"""

from voiceline.config.actions import (
    ActionsSettings,
    DtmfIn,
    HttpFunction,
    TransferTarget,
)
from voiceline.config.base import ConfigError, LogLevel
from voiceline.config.engine import (
    AsteriskSettings,
    AudioSocketSettings,
    BargeInSettings,
    HistorySettings,
    HttpSettings,
    LoggingSettings,
    RecordingSettings,
    ShutdownSettings,
    StreamingSettings,
)
from voiceline.config.local_agent import (
    DEFAULT_APOLOGY,
    DEFAULT_FALLBACK_REPLY,
    DEFAULT_GREETING,
    DEFAULT_RULES,
    DEFAULT_SCRIPT_PHRASES,
    DEFAULT_SYSTEM_PROMPT,
    LocalLLMSettings,
    LocalProviderSettings,
    LocalScriptRule,
    LocalSTTSettings,
    LocalTTSSettings,
)
from voiceline.config.loading import expand_env, load_settings, parse_settings
from voiceline.config.providers import (
    DeepgramFunction,
    DeepgramProviderSettings,
    EchoProviderSettings,
    OpenAIRealtimeProviderSettings,
    OpenAITurnDetection,
    ProvidersSettings,
)
from voiceline.config.settings import Settings

__all__ = [
    "ActionsSettings",
    "DtmfIn",
    "HttpFunction",
    "TransferTarget",
    "DEFAULT_APOLOGY",
    "DEFAULT_FALLBACK_REPLY",
    "DEFAULT_GREETING",
    "DEFAULT_RULES",
    "DEFAULT_SCRIPT_PHRASES",
    "DEFAULT_SYSTEM_PROMPT",
    "AsteriskSettings",
    "AudioSocketSettings",
    "BargeInSettings",
    "ConfigError",
    "DeepgramFunction",
    "DeepgramProviderSettings",
    "EchoProviderSettings",
    "HistorySettings",
    "HttpSettings",
    "LocalLLMSettings",
    "LocalProviderSettings",
    "LocalSTTSettings",
    "LocalScriptRule",
    "LocalTTSSettings",
    "LogLevel",
    "LoggingSettings",
    "OpenAIRealtimeProviderSettings",
    "OpenAITurnDetection",
    "ProvidersSettings",
    "RecordingSettings",
    "Settings",
    "ShutdownSettings",
    "StreamingSettings",
    "expand_env",
    "load_settings",
    "parse_settings",
]
