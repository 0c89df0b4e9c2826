"""Deepgram Voice Agent API v1 provider.

One websocket per call to ``wss://agent.deepgram.com/v1/agent/converse``:

    server Welcome -> client Settings -> server SettingsApplied -> binary audio both ways

Deepgram runs listen (STT), think (LLM) and speak (TTS) itself and detects the caller's
turns, so this session only moves audio and maps server messages onto the typed
provider events. Caller audio handed to ``send_audio`` before ``SettingsApplied`` is
held (bounded) and flushed in order the moment settings are applied, so the first
words of a call are not lost to the handshake.

The module never reads the environment: the API key arrives through ``DeepgramConfig``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog

from voiceline.audio.formats import AudioFormat
from voiceline.providers.base import (
    AgentAudio,
    AgentAudioDone,
    AgentStartedSpeaking,
    AgentThinking,
    CallContext,
    FunctionCallRequest,
    Provider,
    ProviderCapabilities,
    ProviderClosed,
    ProviderError,
    ProviderEvent,
    ProviderSession,
    ProviderWarning,
    Transcript,
    UserStartedSpeaking,
)

log = structlog.get_logger("voiceline.providers.deepgram")

DEFAULT_URL = "wss://agent.deepgram.com/v1/agent/converse"
DEFAULT_PROMPT = "You are a friendly, concise assistant answering a phone call. Keep replies short."

# Deepgram encoding name <-> engine encoding name. Only encodings the engine can
# transcode are usable here (Deepgram itself also takes opus, flac, ...).
_TO_ENGINE_ENCODING = {"linear16": "slin16", "mulaw": "mulaw", "alaw": "alaw"}
_TO_DEEPGRAM_ENCODING = {"slin16": "linear16", "linear16": "linear16", "mulaw": "mulaw", "alaw": "alaw"}
_OUTPUT_CONTAINERS = ("none", "wav", "ogg")
# Keys a configured function may carry (everything else would be rejected by Deepgram
# or is a typo; better to say so at startup than to fail every call).
_FUNCTION_KEYS = frozenset({"name", "description", "parameters", "endpoint"})
_FUNCTION_ENDPOINT_KEYS = frozenset({"url", "method", "headers"})


class DeepgramError(Exception):
    """The Deepgram session could not be started or was refused."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class DeepgramAuthError(DeepgramError):
    """No API key, or the service refused it."""


class DeepgramSettingsError(DeepgramError):
    """The service answered ``Settings`` with an ``Error`` (or never applied them)."""


@dataclass
class DeepgramConfig:
    url: str = DEFAULT_URL
    api_key: str | None = None
    input_encoding: str = "mulaw"
    input_sample_rate: int = 8000
    output_encoding: str = "mulaw"
    output_sample_rate: int = 8000
    output_container: str = "none"
    language: str = "en"
    listen_provider: str = "deepgram"
    listen_model: str = "nova-3"
    think_provider: str = "open_ai"
    think_model: str = "gpt-4o-mini"
    think_temperature: float | None = None
    prompt: str | None = DEFAULT_PROMPT
    greeting: str | None = None
    speak_provider: str = "deepgram"
    speak_model: str = "aura-2-thalia-en"
    # Each: {"name", "description", "parameters" (JSON schema), optional "endpoint"
    # {"url", "method", "headers"} for server-side functions}. Without an endpoint the
    # function is called client-side (FunctionCallRequest -> send_function_result).
    functions: list[dict[str, Any]] = field(default_factory=list)
    tags: list[str] | None = None
    keepalive_interval_s: float = 8.0
    connect_timeout_s: float = 10.0
    settings_timeout_s: float = 10.0
    # Caller audio held while Settings is being applied; beyond this it is dropped.
    pre_settings_buffer_ms: int = 5000

    @property
    def input_format(self) -> AudioFormat:
        return _engine_format(self.input_encoding, self.input_sample_rate, "input")

    @property
    def output_format(self) -> AudioFormat:
        return _engine_format(self.output_encoding, self.output_sample_rate, "output")


def _deepgram_encoding(encoding: str, which: str) -> str:
    try:
        return _TO_DEEPGRAM_ENCODING[encoding]
    except KeyError:
        raise ValueError(
            f"deepgram {which}_encoding {encoding!r} is not supported; use one of linear16, mulaw, alaw"
        ) from None


def _engine_format(encoding: str, rate: Any, which: str) -> AudioFormat:
    dg = _deepgram_encoding(encoding, which)
    return AudioFormat(_TO_ENGINE_ENCODING[dg], _as_int(rate, f"{which}_sample_rate"))  # type: ignore[arg-type]


def _as_int(value: Any, name: str) -> int:
    """Deepgram rejects 8000.0 where it wants 8000: integers go out as integers."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    raise ValueError(f"{name} must be an integer, got {value!r}")


def _function_settings(fn: dict[str, Any]) -> dict[str, Any]:
    unknown = set(fn) - _FUNCTION_KEYS
    name = fn.get("name")
    if unknown:
        raise ValueError(f"function {name!r}: unknown field(s) {sorted(unknown)}; allowed {sorted(_FUNCTION_KEYS)}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"every function needs a non-empty 'name', got {fn!r}")
    out: dict[str, Any] = {"name": name}
    if fn.get("description") is not None:
        out["description"] = str(fn["description"])
    params = fn.get("parameters")
    out["parameters"] = params if params is not None else {"type": "object", "properties": {}}
    if not isinstance(out["parameters"], dict):
        raise ValueError(f"function {name!r}: 'parameters' must be a JSON schema object")
    endpoint = fn.get("endpoint")
    if endpoint is not None:
        if not isinstance(endpoint, dict) or not endpoint.get("url"):
            raise ValueError(f"function {name!r}: 'endpoint' must be an object with a 'url'")
        bad = set(endpoint) - _FUNCTION_ENDPOINT_KEYS
        if bad:
            raise ValueError(f"function {name!r}: unknown endpoint field(s) {sorted(bad)}")
        out["endpoint"] = {k: v for k, v in endpoint.items() if v is not None}
    return out


def build_settings(cfg: DeepgramConfig) -> dict[str, Any]:
    """The v1 ``Settings`` message for ``cfg``. Optional values that are None are left out."""
    if cfg.output_container not in _OUTPUT_CONTAINERS:
        raise ValueError(f"deepgram output_container must be one of {_OUTPUT_CONTAINERS}, got {cfg.output_container!r}")
    think_provider: dict[str, Any] = {"type": cfg.think_provider, "model": cfg.think_model}
    if cfg.think_temperature is not None:
        think_provider["temperature"] = float(cfg.think_temperature)
    think: dict[str, Any] = {"provider": think_provider}
    if cfg.prompt is not None:
        think["prompt"] = cfg.prompt
    if cfg.functions:
        think["functions"] = [_function_settings(fn) for fn in cfg.functions]
    agent: dict[str, Any] = {
        "language": cfg.language,
        "listen": {"provider": {"type": cfg.listen_provider, "model": cfg.listen_model}},
        "think": think,
        "speak": {"provider": {"type": cfg.speak_provider, "model": cfg.speak_model}},
    }
    if cfg.greeting:
        agent["greeting"] = cfg.greeting
    settings: dict[str, Any] = {"type": "Settings"}
    if cfg.tags:
        settings["tags"] = [str(t) for t in cfg.tags]
    settings["audio"] = {
        "input": {
            "encoding": _deepgram_encoding(cfg.input_encoding, "input"),
            "sample_rate": _as_int(cfg.input_sample_rate, "input_sample_rate"),
        },
        "output": {
            "encoding": _deepgram_encoding(cfg.output_encoding, "output"),
            "sample_rate": _as_int(cfg.output_sample_rate, "output_sample_rate"),
            "container": cfg.output_container,
        },
    }
    settings["agent"] = agent
    return settings


def _seconds_to_ms(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value) * 1000.0


def _error_text(msg: dict[str, Any]) -> str:
    for key in ("description", "message"):
        value = msg.get(key)
        if isinstance(value, str) and value:
            return value
    return json.dumps(msg)


def _code(msg: dict[str, Any]) -> str | None:
    code = msg.get("code")
    return None if code is None else str(code)


class DeepgramSession(ProviderSession):
    """One call's Voice Agent conversation."""

    def __init__(self, cfg: DeepgramConfig, ctx: CallContext | None = None) -> None:
        fmt_in, fmt_out = cfg.input_format, cfg.output_format
        super().__init__(
            ProviderCapabilities(input_format=fmt_in, output_format=fmt_out, detects_turns=True, interruptible=True)
        )
        self.cfg = cfg
        self.ctx = ctx
        self._log = log.bind(call_id=ctx.call_id if ctx else None)
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()
        self._welcome: asyncio.Future[str] | None = None
        self._applied: asyncio.Future[None] | None = None
        self._started = False
        self._starting = False  # inside start(): connection loss is start()'s to report
        self._lost_reason: str | None = None
        self._ready = False  # SettingsApplied and the pre-settings buffer flushed
        self._closing = False
        self._closed = False
        self._pending: deque[bytes] = deque()
        self._pending_bytes = 0
        self._pending_limit = fmt_in.bytes_for_ms(cfg.pre_settings_buffer_ms)
        self._last_sent = 0.0
        self._last_error: str | None = None
        self._close_reason: str | None = None
        self.request_id: str | None = None
        # Counters for logs, tests and the call record.
        self.stats: dict[str, int] = {
            "audio_bytes_sent": 0,
            "audio_bytes_buffered": 0,
            "audio_bytes_dropped": 0,
            "audio_bytes_received": 0,
            "keepalives_sent": 0,
            "events_dropped": 0,
        }

    # ---- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("DeepgramSession.start() called twice")
        self._started = True
        if not self.cfg.api_key:
            await self._teardown("no API key", error=True)
            raise DeepgramAuthError("Deepgram API key is not set (set DEEPGRAM_API_KEY)")
        loop = asyncio.get_running_loop()
        self._welcome = loop.create_future()
        self._applied = loop.create_future()
        self._starting = True
        try:
            settings = build_settings(self.cfg)
            await self._connect()
            self.request_id = await self._wait(self._welcome, self.cfg.connect_timeout_s, "Welcome")
            try:
                await self._send_json(settings)
            except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
                raise DeepgramError(f"Deepgram connection lost while sending Settings: {exc}") from None
            self._log.info("deepgram settings sent", request_id=self.request_id)
            await self._wait(self._applied, self.cfg.settings_timeout_s, "SettingsApplied")
            await self._flush_pending()
            if self._lost_reason is not None:
                raise DeepgramError(self._lost_reason)
            if self._closed:
                raise DeepgramError(f"session closed during start ({self._close_reason})")
        except BaseException as exc:
            self._starting = False
            await self._teardown(f"start failed: {exc}" if str(exc) else "start failed", error=True)
            raise
        # No await since the check above: the reader cannot have quit unnoticed.
        self._starting = False
        self._last_sent = loop.time()
        self._keepalive = asyncio.create_task(self._keepalive_loop(), name="deepgram-keepalive")
        self._log.info(
            "deepgram session ready",
            request_id=self.request_id,
            input=str(self.capabilities.input_format),
            output=str(self.capabilities.output_format),
        )

    async def _connect(self) -> None:
        self._http = aiohttp.ClientSession()
        headers = {"Authorization": f"Token {self.cfg.api_key}"}
        try:
            self._ws = await asyncio.wait_for(
                self._http.ws_connect(self.cfg.url, headers=headers, autoping=True, max_msg_size=0),
                timeout=self.cfg.connect_timeout_s,
            )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status in (401, 403):
                raise DeepgramAuthError(
                    f"Deepgram refused the API key (HTTP {exc.status}); check DEEPGRAM_API_KEY", str(exc.status)
                ) from None
            raise DeepgramError(f"Deepgram websocket handshake failed: HTTP {exc.status} {exc.message}") from None
        except TimeoutError:
            raise DeepgramError(
                f"timed out after {self.cfg.connect_timeout_s:g}s connecting to {self.cfg.url}"
            ) from None
        except aiohttp.ClientError as exc:
            raise DeepgramError(f"cannot connect to {self.cfg.url}: {exc}") from None
        self._reader = asyncio.create_task(self._read_loop(), name="deepgram-reader")

    async def _wait(self, fut: asyncio.Future[Any], timeout: float, what: str) -> Any:
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout=timeout)
        except TimeoutError:
            raise DeepgramSettingsError(
                f"Deepgram sent no {what} within {timeout:g}s" + (f" (last error: {self._last_error})" if self._last_error else "")
            ) from None

    async def close(self, reason: str = "call ended") -> None:
        await self._teardown(reason, error=False)

    async def _teardown(self, reason: str, *, error: bool) -> None:
        if self._closed:
            return
        self._closed = True
        self._closing = True
        self._close_reason = reason
        current = asyncio.current_task()
        for task in (self._keepalive, self._reader):
            if task is not None and task is not current and not task.done():
                task.cancel()
        for task in (self._keepalive, self._reader):
            if task is not None and task is not current:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), timeout=2.0)
        if self._http is not None:
            with contextlib.suppress(Exception):
                await self._http.close()
        for fut in (self._welcome, self._applied):
            if fut is not None and not fut.done():
                # A start() still waiting gets an error, not a CancelledError that
                # would look like its own caller being cancelled.
                fut.set_exception(DeepgramError(f"session closed during start ({reason})"))
                fut.exception()
        self._pending.clear()
        self._pending_bytes = 0
        self._log.info("deepgram session closed", reason=reason, error=error, **self.stats)
        self._safe_emit(ProviderClosed(reason, error=error))

    # ---- caller audio -----------------------------------------------------------------

    async def send_audio(self, audio: bytes) -> None:
        if self._closed or not audio:
            return
        if not self._ready:
            self._buffer(bytes(audio))
            return
        await self._send_bytes(audio)

    def _buffer(self, audio: bytes) -> None:
        self._pending.append(audio)
        self._pending_bytes += len(audio)
        self.stats["audio_bytes_buffered"] += len(audio)
        dropped = 0
        while self._pending_bytes > self._pending_limit and self._pending:
            old = self._pending.popleft()
            self._pending_bytes -= len(old)
            dropped += len(old)
        if dropped:
            first = self.stats["audio_bytes_dropped"] == 0
            self.stats["audio_bytes_dropped"] += dropped
            if first:
                self._log.warning(
                    "deepgram settings not applied yet; dropping oldest caller audio",
                    limit_ms=self.cfg.pre_settings_buffer_ms,
                )

    async def _flush_pending(self) -> None:
        # send_audio keeps buffering until _ready flips, so order is preserved even if
        # the caller feeds audio while this loop awaits the socket.
        while self._pending:
            chunk = self._pending.popleft()
            self._pending_bytes -= len(chunk)
            await self._send_bytes(chunk)
        self._ready = True

    async def _send_bytes(self, data: bytes) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            return
        try:
            async with self._send_lock:
                await ws.send_bytes(data)
        except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
            # The reader sees the closed socket and reports it; the engine must not
            # get an exception out of the audio path.
            self._log.debug("deepgram audio send failed", error=str(exc))
            return
        self.stats["audio_bytes_sent"] += len(data)
        self._last_sent = asyncio.get_running_loop().time()

    async def _send_json(self, message: dict[str, Any]) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            raise DeepgramError("Deepgram connection is closed")
        async with self._send_lock:
            await ws.send_str(json.dumps(message))

    async def _send_control(self, message: dict[str, Any]) -> bool:
        """Send a control message mid-call; False (logged) when the socket is gone."""
        if self._closed:
            return False
        try:
            await self._send_json(message)
        except (DeepgramError, ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
            self._log.warning("deepgram control message not sent", type=message.get("type"), error=str(exc))
            return False
        return True

    async def _keepalive_loop(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.cfg.keepalive_interval_s
        try:
            while not self._closing:
                remaining = self._last_sent + interval - loop.time()
                if remaining > 0:
                    await asyncio.sleep(remaining)
                    continue
                if not await self._send_control({"type": "KeepAlive"}):
                    return
                self._last_sent = loop.time()
                self.stats["keepalives_sent"] += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never let a background task die noisily
            self._log.warning("deepgram keepalive stopped", error=str(exc))

    # ---- control messages -------------------------------------------------------------

    async def interrupt(self, played_ms: float | None = None) -> None:
        # Deepgram hears the caller itself and stops the agent (UserStartedSpeaking);
        # there is no client message to cancel a turn, so nothing to send.
        self._log.debug("deepgram interrupt (server-side barge-in)", played_ms=played_ms)

    async def update_prompt(self, text: str) -> bool:
        return await self._send_control({"type": "UpdatePrompt", "prompt": text})

    async def update_speak(self, model: str, provider: str = "deepgram") -> bool:
        return await self._send_control({"type": "UpdateSpeak", "speak": {"provider": {"type": provider, "model": model}}})

    async def inject_agent_message(self, text: str) -> bool:
        return await self._send_control({"type": "InjectAgentMessage", "message": text})

    async def inject_user_message(self, text: str) -> bool:
        return await self._send_control({"type": "InjectUserMessage", "content": text})

    async def send_function_result(self, call_id: str, name: str, content: str | dict[str, Any] | list[Any]) -> bool:
        if not isinstance(content, str):
            content = json.dumps(content)
        return await self._send_control({"type": "FunctionCallResponse", "id": call_id, "name": name, "content": content})

    # ---- server messages --------------------------------------------------------------

    def _safe_emit(self, event: ProviderEvent) -> None:
        try:
            self._emit(event)
        except asyncio.QueueFull:
            self.stats["events_dropped"] += 1
            if self.stats["events_dropped"] == 1:
                self._log.error("provider event queue full; engine not draining events", event=type(event).__name__)

    async def _read_loop(self) -> None:
        ws = self._ws
        assert ws is not None
        reason = "Deepgram closed the connection"
        code: str | None = None
        try:
            while True:
                msg = await ws.receive()
                if msg.type == aiohttp.WSMsgType.BINARY:
                    self.stats["audio_bytes_received"] += len(msg.data)
                    self._safe_emit(AgentAudio(msg.data))
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    self._on_text(msg.data)
                elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                    close_code = ws.close_code if ws.close_code is not None else (
                        msg.data if isinstance(msg.data, int) else None
                    )
                    extra = msg.extra if isinstance(msg.extra, str) and msg.extra else ""
                    code = None if close_code is None else str(close_code)
                    reason = f"Deepgram closed the connection (code {close_code}{': ' + extra if extra else ''})"
                    break
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    reason = f"Deepgram connection failed: {ws.exception() or msg.data}"
                    break
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # network failure, or a bug in a handler: report, never raise
            reason = f"Deepgram connection failed: {type(exc).__name__}: {exc}"
        if self._closing:
            return
        if self._last_error:
            reason += f"; last error: {self._last_error}"
        if self._starting:
            # start() is still running: it raises this reason and tears down.
            self._lost_reason = reason
            self._fail_handshake(reason)
            return
        self._log.warning("deepgram session lost", reason=reason)
        self._safe_emit(ProviderError(reason, code=code, fatal=True))
        # _teardown skips awaiting the current task (this reader).
        await self._teardown(reason, error=True)

    def _fail_handshake(self, reason: str) -> None:
        exc_type = DeepgramSettingsError if self._welcome is not None and self._welcome.done() else DeepgramError
        for fut in (self._welcome, self._applied):
            if fut is not None and not fut.done():
                fut.set_exception(exc_type(reason))
                # start() may already be gone (cancelled); don't let the loop warn.
                fut.exception()

    def _on_text(self, raw: str) -> None:
        try:
            msg = json.loads(raw)
        except ValueError:
            self._log.warning("deepgram sent non-JSON text", text=raw[:200])
            return
        if not isinstance(msg, dict):
            self._log.debug("deepgram sent non-object JSON", text=raw[:200])
            return
        kind = msg.get("type")
        if kind == "Welcome":
            if self._welcome is not None and not self._welcome.done():
                self._welcome.set_result(str(msg.get("request_id") or ""))
        elif kind == "SettingsApplied":
            if self._applied is not None and not self._applied.done():
                self._applied.set_result(None)
        elif kind == "ConversationText":
            self._safe_emit(Transcript(role=str(msg.get("role", "")), text=str(msg.get("content", ""))))
        elif kind == "UserStartedSpeaking":
            self._safe_emit(UserStartedSpeaking())
        elif kind == "AgentThinking":
            self._safe_emit(AgentThinking(str(msg.get("content", ""))))
        elif kind == "AgentStartedSpeaking":
            self._safe_emit(
                AgentStartedSpeaking(
                    total_latency_ms=_seconds_to_ms(msg.get("total_latency")),
                    tts_latency_ms=_seconds_to_ms(msg.get("tts_latency")),
                    ttt_latency_ms=_seconds_to_ms(msg.get("ttt_latency")),
                )
            )
        elif kind == "AgentAudioDone":
            self._safe_emit(AgentAudioDone())
        elif kind == "FunctionCallRequest":
            self._on_function_call(msg)
        elif kind == "Error":
            self._on_error(msg)
        elif kind == "Warning":
            text = _error_text(msg)
            self._log.warning("deepgram warning", description=text, code=_code(msg))
            self._safe_emit(ProviderWarning(text, code=_code(msg)))
        elif kind == "InjectionRefused":
            text = str(msg.get("message") or "injection refused")
            self._log.info("deepgram refused injected message", message=text)
            self._safe_emit(ProviderWarning(f"InjectionRefused: {text}", code="InjectionRefused"))
        elif kind in ("PromptUpdated", "SpeakUpdated", "ThinkUpdated", "ListenUpdated"):
            self._log.info("deepgram update confirmed", type=kind)
        else:
            # History, FunctionCallResponse (server-side functions), LatencyReport, and
            # whatever Deepgram adds later.
            self._log.debug("deepgram message ignored", type=kind)

    def _on_error(self, msg: dict[str, Any]) -> None:
        text = _error_text(msg)
        code = _code(msg)
        self._last_error = text
        self._log.warning("deepgram error", description=text, code=code)
        if self._applied is not None and not self._applied.done():
            # Settings refused (or anything else before they were applied): start() raises.
            exc = DeepgramSettingsError(f"Deepgram rejected the session: {text}", code)
            for fut in (self._welcome, self._applied):
                if fut is not None and not fut.done():
                    fut.set_exception(exc)
                    fut.exception()
            return
        self._safe_emit(ProviderError(text, code=code, fatal=False))

    def _on_function_call(self, msg: dict[str, Any]) -> None:
        functions = msg.get("functions")
        if not isinstance(functions, list):
            self._log.warning("deepgram FunctionCallRequest without functions", message=msg)
            return
        for fn in functions:
            if not isinstance(fn, dict):
                continue
            raw = fn.get("arguments")
            arguments: dict[str, Any]
            if isinstance(raw, dict):
                arguments = raw
            else:
                try:
                    parsed = json.loads(raw) if isinstance(raw, str) and raw.strip() else {}
                except ValueError:
                    self._log.warning("deepgram function arguments are not JSON", name=fn.get("name"), arguments=raw)
                    parsed = {"_raw": raw}
                arguments = parsed if isinstance(parsed, dict) else {"_value": parsed}
            client_side = fn.get("client_side")
            self._safe_emit(
                FunctionCallRequest(
                    call_id=str(fn.get("id", "")),
                    name=str(fn.get("name", "")),
                    arguments=arguments,
                    client_side=True if client_side is None else bool(client_side),
                )
            )


class DeepgramProvider(Provider):
    name = "deepgram"

    def __init__(self, config: DeepgramConfig) -> None:
        self.config = config

    def availability(self) -> tuple[bool, str]:
        if not self.config.api_key:
            return False, "set DEEPGRAM_API_KEY (the Deepgram API key) to use the deepgram provider"
        try:
            build_settings(self.config)
            _ = self.config.input_format, self.config.output_format
        except ValueError as exc:
            return False, f"invalid deepgram configuration: {exc}"
        return True, "ok"

    def create_session(self, ctx: CallContext) -> DeepgramSession:
        return DeepgramSession(self.config, ctx)
