"""What the simulated OpenAI Realtime service accepts in ``session.update``, GA and beta
shapes, checked as the real service checks it; and the session object it reports back.
Pure: no socket.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from voiceline.audio import g711

# ---- shapes ------------------------------------------------------------------------------

GA_SESSION_KEYS = frozenset(
    {
        "type", "model", "output_modalities", "instructions", "audio", "include", "tracing",
        "tools", "tool_choice", "max_output_tokens", "truncation", "prompt",
    }
)
BETA_SESSION_KEYS = frozenset(
    {
        "model", "modalities", "instructions", "voice", "input_audio_format",
        "output_audio_format", "input_audio_transcription", "turn_detection", "tools",
        "tool_choice", "temperature", "max_response_output_tokens", "input_audio_noise_reduction",
        "speed", "tracing", "include",
    }
)
GA_AUDIO_KEYS = frozenset({"input", "output"})
GA_AUDIO_INPUT_KEYS = frozenset({"format", "noise_reduction", "transcription", "turn_detection"})
GA_AUDIO_OUTPUT_KEYS = frozenset({"format", "voice", "speed"})
GA_FORMATS = {"audio/pcm": "pcm16", "audio/pcmu": "g711_ulaw", "audio/pcma": "g711_alaw"}
BETA_FORMATS = frozenset({"pcm16", "g711_ulaw", "g711_alaw"})
SERVER_VAD_KEYS = frozenset(
    {"type", "threshold", "prefix_padding_ms", "silence_duration_ms", "create_response",
     "interrupt_response", "idle_timeout_ms"}
)
SEMANTIC_VAD_KEYS = frozenset({"type", "eagerness", "create_response", "interrupt_response"})
TRANSCRIPTION_KEYS = frozenset({"model", "language", "prompt"})

# canonical format -> (sample rate, decode to slin16, encode from slin16)
FORMATS: dict[str, tuple[int, Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
    "pcm16": (24000, lambda b: b[: len(b) & ~1], lambda b: b),
    "g711_ulaw": (8000, g711.mulaw_to_slin, g711.slin_to_mulaw),
    "g711_alaw": (8000, g711.alaw_to_slin, g711.slin_to_alaw),
}

DEFAULT_TURN_DETECTION: dict[str, Any] = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
    "create_response": True,
    "interrupt_response": True,
}

_ids = itertools.count(1)


def new_id(prefix: str) -> str:
    return f"{prefix}_sim{next(_ids):06d}"


class SessionConfigError(Exception):
    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


def _unknown(keys: Mapping[str, Any], allowed: frozenset[str], prefix: str) -> None:
    for key in keys:
        if key not in allowed:
            raise SessionConfigError("unknown_parameter", f"Unknown parameter: '{prefix}.{key}'.", f"{prefix}.{key}")


def _invalid(param: str, value: Any, supported: Any) -> SessionConfigError:
    return SessionConfigError(
        "invalid_value", f"Invalid value: {value!r} for '{param}'. Supported values are: {supported}.", param
    )


def _check_turn_detection(value: Any, param: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise SessionConfigError("invalid_type", f"Invalid type for '{param}': expected an object or null.", param)
    kind = value.get("type", "server_vad")
    if kind not in ("server_vad", "semantic_vad"):
        raise _invalid(f"{param}.type", kind, "'server_vad', 'semantic_vad'")
    _unknown(value, SERVER_VAD_KEYS if kind == "server_vad" else SEMANTIC_VAD_KEYS, param)
    threshold = value.get("threshold", 0.5)
    if not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise _invalid(f"{param}.threshold", threshold, "a number from 0.0 to 1.0")
    for key in ("prefix_padding_ms", "silence_duration_ms"):
        if key in value and (not isinstance(value[key], int) or value[key] < 0):
            raise _invalid(f"{param}.{key}", value[key], "a non-negative integer")
    merged = dict(DEFAULT_TURN_DETECTION)
    merged.update(value)
    return merged


def _check_transcription(value: Any, param: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise SessionConfigError("invalid_type", f"Invalid type for '{param}': expected an object or null.", param)
    _unknown(value, TRANSCRIPTION_KEYS, param)
    return dict(value)


def _check_ga_format(value: Any, param: str) -> str:
    if not isinstance(value, Mapping):
        raise SessionConfigError("invalid_type", f"Invalid type for '{param}': expected an object.", param)
    _unknown(value, frozenset({"type", "rate"}), param)
    kind = value.get("type")
    if kind not in GA_FORMATS:
        raise _invalid(f"{param}.type", kind, ", ".join(repr(k) for k in GA_FORMATS))
    if "rate" in value and (kind != "audio/pcm" or value["rate"] != 24000):
        raise _invalid(f"{param}.rate", value["rate"], "24000 (audio/pcm only)")
    return GA_FORMATS[kind]


@dataclass
class SimSession:
    """The effective session configuration, independent of the wire shape."""

    input_format: str = "pcm16"
    output_format: str = "pcm16"
    voice: str = "alloy"
    instructions: str = ""
    modalities: list[str] = field(default_factory=lambda: ["audio"])
    turn_detection: dict[str, Any] | None = field(default_factory=lambda: dict(DEFAULT_TURN_DETECTION))
    transcription: dict[str, Any] | None = None
    tools: list[Any] = field(default_factory=list)


def apply_session_update(shape: str, current: SimSession, session: Any) -> SimSession:
    """Validate a ``session.update`` payload and return the new effective session.

    Raises ``SessionConfigError`` with the message the real service would give.
    """
    if not isinstance(session, Mapping):
        raise SessionConfigError("missing_required_parameter", "Missing required parameter: 'session'.", "session")
    new = SimSession(**{k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v)
                        for k, v in current.__dict__.items()})
    if shape == "ga":
        _unknown(session, GA_SESSION_KEYS, "session")
        if "type" not in session:
            raise SessionConfigError(
                "missing_required_parameter", "Missing required parameter: 'session.type'.", "session.type"
            )
        if session["type"] != "realtime":
            raise _invalid("session.type", session["type"], "'realtime'")
        if "output_modalities" in session:
            mods = session["output_modalities"]
            if not isinstance(mods, list) or len(mods) != 1 or mods[0] not in ("audio", "text"):
                raise _invalid("session.output_modalities", mods, "['audio'] or ['text']")
            new.modalities = list(mods)
        audio = session.get("audio")
        if audio is not None:
            if not isinstance(audio, Mapping):
                raise SessionConfigError("invalid_type", "Invalid type for 'session.audio'.", "session.audio")
            _unknown(audio, GA_AUDIO_KEYS, "session.audio")
            inp = audio.get("input") or {}
            _unknown(inp, GA_AUDIO_INPUT_KEYS, "session.audio.input")
            if "format" in inp:
                new.input_format = _check_ga_format(inp["format"], "session.audio.input.format")
            if "turn_detection" in inp:
                new.turn_detection = _check_turn_detection(inp["turn_detection"], "session.audio.input.turn_detection")
            if "transcription" in inp:
                new.transcription = _check_transcription(inp["transcription"], "session.audio.input.transcription")
            out = audio.get("output") or {}
            _unknown(out, GA_AUDIO_OUTPUT_KEYS, "session.audio.output")
            if "format" in out:
                new.output_format = _check_ga_format(out["format"], "session.audio.output.format")
            if "voice" in out:
                new.voice = str(out["voice"])
    else:
        _unknown(session, BETA_SESSION_KEYS, "session")
        for key, attr in (("input_audio_format", "input_format"), ("output_audio_format", "output_format")):
            if key in session:
                if session[key] not in BETA_FORMATS:
                    raise _invalid(f"session.{key}", session[key], "'pcm16', 'g711_ulaw', 'g711_alaw'")
                setattr(new, attr, session[key])
        if "modalities" in session:
            mods = session["modalities"]
            if not isinstance(mods, list) or not mods or any(m not in ("audio", "text") for m in mods):
                raise _invalid("session.modalities", mods, "'text', 'audio'")
            new.modalities = list(mods)
        if "voice" in session:
            new.voice = str(session["voice"])
        if "turn_detection" in session:
            new.turn_detection = _check_turn_detection(session["turn_detection"], "session.turn_detection")
        if "input_audio_transcription" in session:
            new.transcription = _check_transcription(
                session["input_audio_transcription"], "session.input_audio_transcription"
            )
    if "instructions" in session:
        if not isinstance(session["instructions"], str):
            raise SessionConfigError("invalid_type", "Invalid type for 'session.instructions'.", "session.instructions")
        new.instructions = session["instructions"]
    if "tools" in session:
        new.tools = list(session["tools"] or [])
    return new


def session_object(shape: str, sess: SimSession, session_id: str, model: str) -> dict[str, Any]:
    if shape == "ga":
        def fmt(name: str) -> dict[str, Any]:
            kind = {v: k for k, v in GA_FORMATS.items()}[name]
            return {"type": kind, "rate": 24000} if kind == "audio/pcm" else {"type": kind}

        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": session_id,
            "model": model,
            "output_modalities": list(sess.modalities),
            "instructions": sess.instructions,
            "audio": {
                "input": {
                    "format": fmt(sess.input_format),
                    "transcription": sess.transcription,
                    "noise_reduction": None,
                    "turn_detection": sess.turn_detection,
                },
                "output": {"format": fmt(sess.output_format), "voice": sess.voice, "speed": 1.0},
            },
            "tools": sess.tools,
            "tool_choice": "auto",
        }
    return {
        "id": session_id,
        "object": "realtime.session",
        "model": model,
        "modalities": list(sess.modalities),
        "instructions": sess.instructions,
        "voice": sess.voice,
        "input_audio_format": sess.input_format,
        "output_audio_format": sess.output_format,
        "input_audio_transcription": sess.transcription,
        "turn_detection": sess.turn_detection,
        "tools": sess.tools,
        "tool_choice": "auto",
        "temperature": 0.8,
    }
