"""Offline local voice agent: webrtcvad + pocketsphinx + scripted/OpenAI-compatible LLM + espeak-ng.

Its settings model (with the defaults of the demo FAQ line) is
``voiceline.config.LocalProviderSettings``; the agent reads it directly.
"""

from voiceline.providers.local.agent import (
    LocalAgentProvider,
    LocalAgentSession,
    TurnTimings,
)
from voiceline.providers.local.llm import (
    LLMError,
    OpenAICompatibleLLM,
    ScriptedLLM,
    create_llm,
)
from voiceline.providers.local.stt import STTError
from voiceline.providers.local.tts import TTSError

__all__ = [
    "LLMError",
    "LocalAgentProvider",
    "LocalAgentSession",
    "OpenAICompatibleLLM",
    "STTError",
    "ScriptedLLM",
    "TTSError",
    "TurnTimings",
    "create_llm",
]
