"""The functions a provider offers its model, from ``providers.<name>.actions``: the
enabled built-in telephony actions and the HTTP functions, each as a provider-neutral
``{"name", "description", "parameters"}`` definition. Each provider wraps these in
its own wire shape (Deepgram ``think.functions``, OpenAI ``tools``, chat-completions
``tools``). The engine runs every one of them (``core.actions``)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from voiceline.config import ActionsSettings

__all__ = ["arguments_from_json", "duplicate_names", "dtmf_text", "function_definitions", "result_text"]

_EMPTY = {"type": "object", "properties": {}}


def function_definitions(actions: ActionsSettings) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if actions.transfer.enabled:
        names = [t.name for t in actions.transfer.targets]
        out.append({
            "name": "transfer",
            "description": actions.description_of("transfer"),
            "parameters": {
                "type": "object",
                "properties": {
                    "destination": {
                        "type": "string",
                        "enum": names,
                        "description": f"where to transfer the caller (default {names[0]!r})",
                    }
                },
            },
        })
    if actions.hangup.enabled:
        out.append({"name": "hangup", "description": actions.description_of("hangup"), "parameters": dict(_EMPTY)})
    if actions.send_dtmf.enabled:
        out.append({
            "name": "send_dtmf",
            "description": actions.description_of("send_dtmf"),
            "parameters": {
                "type": "object",
                "properties": {"digits": {"type": "string", "description": "digits to send: 0-9, *, #, A-D"}},
                "required": ["digits"],
            },
        })
    if actions.get_call_info.enabled:
        out.append({"name": "get_call_info", "description": actions.description_of("get_call_info"),
                    "parameters": dict(_EMPTY)})
    for fn in actions.http:
        out.append({"name": fn.name, "description": fn.description, "parameters": dict(fn.parameters)})
    return out


def duplicate_names(names: Sequence[Any]) -> list[str]:
    """The names that occur more than once, sorted: a provider's configured functions
    and the actions must not share a name (the model could not tell them apart)."""
    return sorted({str(name) for name in names if names.count(name) > 1})


def arguments_from_json(text: str) -> dict[str, Any]:
    """The model's function arguments from their JSON text: an object as it is, any
    other JSON value as ``{"_value": value}``, text that is not JSON as ``{"_raw": text}``
    (the engine's function then reports what is wrong with them)."""
    try:
        value = json.loads(text)
    except ValueError:
        return {"_raw": text}
    return value if isinstance(value, dict) else {"_value": value}


def result_text(result: Mapping[str, Any]) -> str:
    """A function result as the JSON text the providers carry it in."""
    return json.dumps(dict(result), separators=(",", ":"), default=str)


def dtmf_text(actions: ActionsSettings, digit: str) -> str | None:
    """What the model is told about a caller keypress; None when keypresses are ignored."""
    if actions.dtmf.mode == "ignore":
        return None
    return actions.dtmf.text(digit)
