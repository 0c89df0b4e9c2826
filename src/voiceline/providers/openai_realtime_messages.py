"""OpenAI Realtime client messages, pure: the session configuration, audio, barge-in,
function results and keypresses as JSON events, and the text of server errors.
``openai_realtime`` sends them (and re-exports them)."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from voiceline.audio.formats import AudioFormat
from voiceline.config import OpenAIRealtimeProviderSettings
from voiceline.providers.functions import duplicate_names, function_definitions

# wire format name -> (engine AudioFormat, GA format object, beta format string)
_WIRE_FORMATS: dict[str, tuple[AudioFormat, dict[str, Any], str]] = {
    "g711_ulaw": (AudioFormat("mulaw", 8000), {"type": "audio/pcmu"}, "g711_ulaw"),
    "g711_alaw": (AudioFormat("alaw", 8000), {"type": "audio/pcma"}, "g711_alaw"),
    # PCM is 16-bit little-endian mono; the service supports 24 kHz only.
    "pcm16": (AudioFormat("slin16", 24000), {"type": "audio/pcm", "rate": 24000}, "pcm16"),
}

# Error codes that are expected races, not problems: cancelling a response the server
# already finished (or cancelled itself on server-VAD barge-in).
BENIGN_ERROR_CODES = frozenset({"response_cancel_not_active"})


class OpenAIRealtimeError(Exception):
    """The session could not be established (connect, auth, or configuration rejected)."""


def engine_format(config: OpenAIRealtimeProviderSettings) -> AudioFormat:
    """The engine format of ``config.audio_format`` (the same both ways)."""
    return _WIRE_FORMATS[config.audio_format][0]


# ---- pure message builders ------------------------------------------------------------


def build_url(config: OpenAIRealtimeProviderSettings) -> str:
    """The WebSocket URL with ``?model=`` added (existing query parameters kept)."""
    parts = urlsplit(config.url)
    query = parts.query + ("&" if parts.query else "") + urlencode({"model": config.model})
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def build_headers(config: OpenAIRealtimeProviderSettings) -> dict[str, str]:
    api_key = config.api_key.get_secret_value()
    if not api_key:
        raise OpenAIRealtimeError("no OpenAI API key configured (set OPENAI_API_KEY)")
    headers = {"Authorization": f"Bearer {api_key}"}
    if config.api_shape == "beta":
        headers["OpenAI-Beta"] = "realtime=v1"
    return headers


def build_session_update(config: OpenAIRealtimeProviderSettings) -> dict[str, Any]:
    _, ga_format, beta_format = _WIRE_FORMATS[config.audio_format]
    turn = config.turn_detection.model_dump() if config.turn_detection is not None else None
    transcription = (
        {"model": config.transcription_model} if config.transcription_model else None
    )
    if config.api_shape == "ga":
        audio_input: dict[str, Any] = {"format": dict(ga_format), "turn_detection": turn}
        if transcription is not None:
            audio_input["transcription"] = transcription
        session: dict[str, Any] = {
            "type": "realtime",
            "output_modalities": ["audio"],
            "instructions": config.instructions,
            "audio": {
                "input": audio_input,
                "output": {"format": dict(ga_format), "voice": config.voice},
            },
        }
    else:
        session = {
            "modalities": ["audio", "text"],
            "instructions": config.instructions,
            "voice": config.voice,
            "input_audio_format": beta_format,
            "output_audio_format": beta_format,
            "turn_detection": turn,
        }
        if transcription is not None:
            session["input_audio_transcription"] = transcription
    tools = build_tools(config)
    if tools:
        session["tools"] = tools
        session["tool_choice"] = "auto"
    return {"type": "session.update", "session": session}


def build_audio_append(audio: bytes) -> dict[str, Any]:
    return {"type": "input_audio_buffer.append", "audio": base64.b64encode(audio).decode("ascii")}


def build_response_cancel(response_id: str | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "response.cancel"}
    if response_id:
        event["response_id"] = response_id
    return event


def build_truncate(item_id: str, audio_end_ms: int) -> dict[str, Any]:
    return {
        "type": "conversation.item.truncate",
        "item_id": item_id,
        "content_index": 0,
        "audio_end_ms": int(audio_end_ms),
    }


def build_greeting(greeting: str) -> dict[str, Any]:
    """``response.create`` asking the model to open the call with ``greeting``."""
    return {
        "type": "response.create",
        "response": {
            "instructions": f"Greet the caller by saying exactly this, and nothing else: {greeting}"
        },
    }


def build_function_output(call_id: str, output: str) -> dict[str, Any]:
    return {
        "type": "conversation.item.create",
        "item": {"type": "function_call_output", "call_id": call_id, "output": output},
    }


def build_user_text(text: str) -> dict[str, Any]:
    """A user message item carrying ``text`` (a caller keypress told to the model)."""
    return {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]},
    }


def build_tools(config: OpenAIRealtimeProviderSettings) -> list[dict[str, Any]]:
    """``tools`` as configured plus the functions the engine runs (actions)."""
    tools = [dict(tool) for tool in config.tools]
    tools += [{"type": "function", **definition} for definition in function_definitions(config.actions)]
    duplicates = duplicate_names([t["name"] for t in tools if t.get("name") is not None])
    if duplicates:
        raise ValueError(f"openai_realtime tool name(s) {duplicates} declared twice (tools and actions)")
    return tools


def error_message(event: Mapping[str, Any]) -> tuple[str, str | None]:
    """(message, code) of a server ``error`` event."""
    err = event.get("error")
    if not isinstance(err, Mapping):
        return (str(err) if err else "unknown error", None)
    message = str(err.get("message") or err.get("type") or "unknown error")
    param = err.get("param")
    if param and str(param) not in message:
        message = f"{message} (param: {param})"
    code = err.get("code")
    return message, (str(code) if code is not None else None)
