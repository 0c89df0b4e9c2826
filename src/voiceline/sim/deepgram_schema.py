"""What the simulated Deepgram Voice Agent v1 accepts as ``Settings``: a small schema and
its checker, strict where the real service is (unknown keys anywhere are errors, ints
must be ints), with errors naming the dotted path of the offending field.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

# What the real service accepts; the simulator can produce/consume only SIM_ENCODINGS.
INPUT_ENCODINGS = ("linear16", "linear32", "flac", "alaw", "mulaw", "amr-nb", "amr-wb", "opus", "ogg-opus", "speex", "g729")
OUTPUT_ENCODINGS = ("linear16", "mulaw", "alaw", "mp3", "opus", "flac", "aac")
SIM_ENCODINGS = ("linear16", "mulaw", "alaw")

# ---- Settings validation -----------------------------------------------------------------
#
# A small schema language: ("str",), ("int",), ("number",), ("bool",), ("any",),
# ("enum", values), ("list", item), ("map", value), ("obj", fields, required),
# ("one_or_list", obj). Unknown keys anywhere in an object are errors, as on the real
# service, and the error names the dotted path of the offending field.

STR: tuple[Any, ...] = ("str",)
INT: tuple[Any, ...] = ("int",)
NUM: tuple[Any, ...] = ("number",)
BOOL: tuple[Any, ...] = ("bool",)
ANY: tuple[Any, ...] = ("any",)


def _enum(*values: str) -> tuple[Any, ...]:
    return ("enum", values)


def _list(item: tuple[Any, ...]) -> tuple[Any, ...]:
    return ("list", item)


def _map(value: tuple[Any, ...]) -> tuple[Any, ...]:
    return ("map", value)


def _obj(fields: dict[str, tuple[Any, ...]], required: Sequence[str] = ()) -> tuple[Any, ...]:
    return ("obj", fields, frozenset(required))


_ENDPOINT = _obj({"url": STR, "headers": _map(STR)}, required=["url"])
_LISTEN_PROVIDER = _obj(
    {
        "type": STR,
        "version": STR,
        "model": STR,
        "language": STR,
        "keyterms": _list(STR),
        "smart_format": BOOL,
        "language_hints": _list(STR),
        "eot_threshold": NUM,
        "eager_eot_threshold": NUM,
        "eot_timeout_ms": INT,
    },
    required=["type"],
)
_THINK_PROVIDER = _obj(
    {
        "type": STR,
        "version": STR,
        "model": STR,
        "temperature": NUM,
        "reasoning_mode": STR,
        "credentials": ANY,
        "voice_prompt_opt_out": BOOL,
    },
    required=["type", "model"],
)
_SPEAK_PROVIDER = _obj(
    {
        "type": STR,
        "version": STR,
        "model": STR,
        "model_id": STR,
        "voice": ANY,
        "language": STR,
        "language_code": STR,
        "speed": NUM,
        "expressivity": INT,
        "engine": STR,
        "credentials": ANY,
        "volume": NUM,
    },
    required=["type"],
)
_FUNCTION = _obj(
    {
        "name": STR,
        "description": STR,
        "parameters": _map(ANY),
        "endpoint": _obj({"url": STR, "method": STR, "headers": _map(STR)}, required=["url"]),
        "defer_until_eot": BOOL,
        "initial_agent_filler": BOOL,
        "agent_filler_max_count": INT,
        "agent_filler_interval_ms": INT,
    },
    required=["name"],
)
SETTINGS_SCHEMA = _obj(
    {
        "type": _enum("Settings"),
        "tags": _list(STR),
        "experimental": BOOL,
        "mip_opt_out": BOOL,
        "flags": _obj({"history": BOOL}),
        "audio": _obj(
            {
                "input": _obj({"encoding": _enum(*INPUT_ENCODINGS), "sample_rate": INT}, required=["encoding", "sample_rate"]),
                "output": _obj(
                    {"encoding": _enum(*OUTPUT_ENCODINGS), "sample_rate": INT, "bitrate": INT, "container": _enum("none", "wav", "ogg")}
                ),
            }
        ),
        "agent": _obj(
            {
                "language": STR,
                "context": ANY,
                "listen": _obj({"provider": _LISTEN_PROVIDER}),
                "think": (
                    "one_or_list",
                    _obj(
                        {
                            "provider": _THINK_PROVIDER,
                            "endpoint": _ENDPOINT,
                            "functions": _list(_FUNCTION),
                            "prompt": STR,
                            "context_length": ANY,
                        },
                        required=["provider"],
                    ),
                ),
                "think_live": ANY,
                "speak": ("one_or_list", _obj({"provider": _SPEAK_PROVIDER, "endpoint": _ENDPOINT}, required=["provider"])),
                "greeting": STR,
            },
            required=["think"],
        ),
    },
    required=["type", "audio", "agent"],
)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _check(value: Any, spec: tuple[Any, ...], path: str) -> str | None:
    kind = spec[0]
    if kind == "any":
        return None
    if kind == "str":
        return None if isinstance(value, str) else f"'{path}' must be a string, got {_type_name(value)}"
    if kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"'{path}' must be an integer, got {json.dumps(value)}"
    if kind == "number":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else f"'{path}' must be a number, got {json.dumps(value)}"
    if kind == "bool":
        return None if isinstance(value, bool) else f"'{path}' must be a boolean, got {json.dumps(value)}"
    if kind == "enum":
        return None if value in spec[1] else f"'{path}' must be one of {list(spec[1])}, got {json.dumps(value)}"
    if kind == "list":
        if not isinstance(value, list):
            return f"'{path}' must be an array, got {_type_name(value)}"
        for i, item in enumerate(value):
            if (err := _check(item, spec[1], f"{path}[{i}]")) is not None:
                return err
        return None
    if kind == "map":
        if not isinstance(value, dict):
            return f"'{path}' must be an object, got {_type_name(value)}"
        for key, item in value.items():
            if (err := _check(item, spec[1], f"{path}.{key}")) is not None:
                return err
        return None
    if kind == "one_or_list":
        if isinstance(value, list):
            if not value:
                return f"'{path}' must not be an empty array"
            return _check(value, ("list", spec[1]), path)
        return _check(value, spec[1], path)
    if kind == "obj":
        fields, required = spec[1], spec[2]
        if not isinstance(value, dict):
            return f"'{path}' must be an object, got {_type_name(value)}"
        for key in value:
            if key not in fields:
                where = f"{path}.{key}" if path else key
                return f"Unknown field '{where}' in Settings"
        for key in sorted(required):
            if key not in value:
                where = f"{path}.{key}" if path else key
                return f"Missing required field '{where}' in Settings"
        for key, item in value.items():
            if (err := _check(item, fields[key], f"{path}.{key}" if path else key)) is not None:
                return err
        return None
    raise AssertionError(f"bad schema kind {kind}")


def validate_settings(msg: Any) -> str | None:
    """The description of the first problem in a ``Settings`` message, or None."""
    err = _check(msg, SETTINGS_SCHEMA, "")
    if err is not None:
        return err
    audio = msg["audio"]
    for direction in ("input", "output"):
        rate = audio.get(direction, {}).get("sample_rate")
        if rate is not None and rate <= 0:
            return f"'audio.{direction}.sample_rate' must be positive, got {rate}"
    return None
