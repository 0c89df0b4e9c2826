"""Deepgram Voice Agent v1 server messages -> typed provider events. No socket, no clock.

``DeepgramEventMapper`` is the Deepgram counterpart of ``RealtimeEventMapper``: the
session hands it every text message (raw) and every binary message, and forwards
what comes back. Handshake messages come back as the mapper's own small markers
(``Welcome``, ``SettingsApplied``, ``SessionRejected``), which only the session acts
on; everything else is a ``ProviderEvent`` for the engine.

What real traffic looks like, and what the mapper does with it:

* Unknown message types are ignored (logged at debug): the service sends
  undocumented ones (``History``, ``LatencyReport``...) and adds new ones.
* ``Error`` may carry ``message`` instead of ``description``, and no ``code``.
  Before ``SettingsApplied`` it means the session was refused (``SessionRejected``);
  after, it is a non-fatal ``ProviderError`` and the call goes on.
* A text message that is not a JSON object becomes
  ``ProviderWarning(code="malformed_json")``; the first one of a session is logged
  with the parser's reason, later ones only counted. The message is lost, so a turn
  whose ``AgentAudioDone`` was malformed never gets one: the engine must end turns
  without relying on it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from voiceline.providers.base import (
    AgentAudio,
    AgentAudioDone,
    AgentStartedSpeaking,
    AgentThinking,
    FunctionCallRequest,
    ProviderError,
    ProviderEvent,
    ProviderWarning,
    Transcript,
    UserStartedSpeaking,
)

log = structlog.get_logger("voiceline.providers.deepgram")

MALFORMED_JSON = "malformed_json"
INJECTION_REFUSED = "InjectionRefused"
_UPDATE_CONFIRMATIONS = frozenset({"PromptUpdated", "SpeakUpdated", "ThinkUpdated", "ListenUpdated"})


# ---- handshake markers (for the session, never given to the engine) ---------------------


@dataclass(frozen=True, slots=True)
class Welcome:
    request_id: str


@dataclass(frozen=True, slots=True)
class SettingsApplied:
    pass


@dataclass(frozen=True, slots=True)
class SessionRejected:
    """An ``Error`` before ``SettingsApplied``: the service refused the session."""

    message: str
    code: str | None = None


HandshakeMarker = Welcome | SettingsApplied | SessionRejected
MapperOutput = ProviderEvent | HandshakeMarker


# ---- helpers ------------------------------------------------------------------------------


def error_text(msg: Mapping[str, Any]) -> str:
    """The human text of an ``Error``/``Warning``: ``description``, else ``message``."""
    for key in ("description", "message"):
        value = msg.get(key)
        if isinstance(value, str) and value:
            return value
    return json.dumps(dict(msg))


def error_code(msg: Mapping[str, Any]) -> str | None:
    code = msg.get("code")
    return None if code is None else str(code)


def seconds_to_ms(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value) * 1000.0


class DeepgramEventMapper:
    """Maps one session's server messages; keeps the little state the mapping needs.

    State: whether ``SettingsApplied`` was seen (an ``Error`` before it refuses the
    session), the last error text (quoted when the connection is lost), and how many
    malformed text messages arrived.
    """

    def __init__(self, logger: Any = None) -> None:
        self._log = logger if logger is not None else log
        self.settings_applied = False
        self.last_error: str | None = None
        self.malformed_messages = 0

    # ---- entry points ----------------------------------------------------------------

    def handle_binary(self, data: bytes) -> list[MapperOutput]:
        return [AgentAudio(data)] if data else []

    def handle_text(self, raw: str) -> list[MapperOutput]:
        """A text websocket message as received."""
        try:
            msg = json.loads(raw)
        except ValueError as exc:
            return self._malformed(raw, f"not JSON: {exc}")
        if not isinstance(msg, dict):
            return self._malformed(raw, f"JSON {type(msg).__name__}, not an object")
        return self.handle(msg)

    def handle(self, msg: Mapping[str, Any]) -> list[MapperOutput]:
        """A parsed server message (a JSON object)."""
        kind = msg.get("type")
        if kind == "Welcome":
            return [Welcome(str(msg.get("request_id") or ""))]
        if kind == "SettingsApplied":
            self.settings_applied = True
            return [SettingsApplied()]
        if kind == "ConversationText":
            return [Transcript(role=str(msg.get("role", "")), text=str(msg.get("content", "")))]
        if kind == "UserStartedSpeaking":
            return [UserStartedSpeaking()]
        if kind == "AgentThinking":
            return [AgentThinking(str(msg.get("content", "")))]
        if kind == "AgentStartedSpeaking":
            return [
                AgentStartedSpeaking(
                    total_latency_ms=seconds_to_ms(msg.get("total_latency")),
                    tts_latency_ms=seconds_to_ms(msg.get("tts_latency")),
                    ttt_latency_ms=seconds_to_ms(msg.get("ttt_latency")),
                )
            ]
        if kind == "AgentAudioDone":
            return [AgentAudioDone()]
        if kind == "FunctionCallRequest":
            return self._function_calls(msg)
        if kind == "Error":
            return self._error(msg)
        if kind == "Warning":
            text, code = error_text(msg), error_code(msg)
            self._log.warning("deepgram warning", description=text, code=code)
            return [ProviderWarning(text, code=code)]
        if kind == INJECTION_REFUSED:
            text = str(msg.get("message") or "injection refused")
            self._log.info("deepgram refused injected message", message=text)
            return [ProviderWarning(f"InjectionRefused: {text}", code=INJECTION_REFUSED)]
        if kind in _UPDATE_CONFIRMATIONS:
            self._log.info("deepgram update confirmed", type=kind)
            return []
        # History, FunctionCallResponse (server-side functions), LatencyReport, and
        # whatever Deepgram adds later.
        self._log.debug("deepgram message ignored", type=kind)
        return []

    # ---- pieces -----------------------------------------------------------------------

    def _malformed(self, raw: str, reason: str) -> list[MapperOutput]:
        self.malformed_messages += 1
        if self.malformed_messages == 1:
            self._log.warning(
                "deepgram sent a malformed text message; ignored (later ones counted, not logged)",
                reason=reason,
                text=raw[:200],
            )
        else:
            self._log.debug("deepgram sent a malformed text message", reason=reason, count=self.malformed_messages)
        return [ProviderWarning(f"Deepgram sent a malformed message ({reason})", code=MALFORMED_JSON)]

    def _error(self, msg: Mapping[str, Any]) -> list[MapperOutput]:
        text, code = error_text(msg), error_code(msg)
        self.last_error = text
        self._log.warning("deepgram error", description=text, code=code)
        if not self.settings_applied:
            return [SessionRejected(text, code)]
        return [ProviderError(text, code=code, fatal=False)]

    def _function_calls(self, msg: Mapping[str, Any]) -> list[MapperOutput]:
        functions = msg.get("functions")
        if not isinstance(functions, list):
            self._log.warning("deepgram FunctionCallRequest without functions", message=dict(msg))
            return []
        out: list[MapperOutput] = []
        for fn in functions:
            if not isinstance(fn, dict):
                continue
            client_side = fn.get("client_side")
            out.append(
                FunctionCallRequest(
                    call_id=str(fn.get("id", "")),
                    name=str(fn.get("name", "")),
                    arguments=self._arguments(fn),
                    client_side=True if client_side is None else bool(client_side),
                )
            )
        return out

    def _arguments(self, fn: Mapping[str, Any]) -> dict[str, Any]:
        raw = fn.get("arguments")
        if isinstance(raw, dict):
            return raw
        try:
            parsed = json.loads(raw) if isinstance(raw, str) and raw.strip() else {}
        except ValueError:
            self._log.warning("deepgram function arguments are not JSON", name=fn.get("name"), arguments=raw)
            parsed = {"_raw": raw}
        return parsed if isinstance(parsed, dict) else {"_value": parsed}
