"""Offline local voice agent: webrtcvad + pocketsphinx + scripted/OpenAI-compatible LLM + espeak-ng."""

from voiceline.providers.local.agent import (
    DEFAULT_APOLOGY,
    DEFAULT_GREETING,
    LocalAgentConfig,
    LocalAgentProvider,
    LocalAgentSession,
    TurnTimings,
)
from voiceline.providers.local.llm import (
    DEFAULT_FALLBACK_REPLY,
    DEFAULT_RULES,
    DEFAULT_SCRIPT_PHRASES,
    LLMConfig,
    LLMError,
    OpenAICompatibleLLM,
    ScriptedLLM,
    ScriptRule,
)
from voiceline.providers.local.stt import STTConfig, STTError
from voiceline.providers.local.tts import TTSConfig, TTSError

__all__ = [
    "DEFAULT_APOLOGY",
    "DEFAULT_FALLBACK_REPLY",
    "DEFAULT_GREETING",
    "DEFAULT_RULES",
    "DEFAULT_SCRIPT_PHRASES",
    "LLMConfig",
    "LLMError",
    "LocalAgentConfig",
    "LocalAgentProvider",
    "LocalAgentSession",
    "OpenAICompatibleLLM",
    "STTConfig",
    "STTError",
    "ScriptRule",
    "ScriptedLLM",
    "TTSConfig",
    "TTSError",
    "TurnTimings",
]
