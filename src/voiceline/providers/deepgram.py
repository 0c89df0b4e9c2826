"""Deepgram Voice Agent API v1 provider.

One websocket per call to ``wss://agent.deepgram.com/v1/agent/converse``:

    server Welcome -> client Settings -> server SettingsApplied -> binary audio both ways

Deepgram runs listen (STT), think (LLM) and speak (TTS) itself and detects the caller's
turns, so this session only moves audio and hands server messages to the pure
``DeepgramEventMapper`` (``deepgram_events.py``). Caller audio handed to ``send_audio``
before ``SettingsApplied`` (also while ``start()`` runs) is held, up to
``pre_settings_buffer_ms`` with the oldest dropped beyond that, and flushed in order the
moment settings are applied, so the first words of a call are not lost to the handshake.

The module never reads the environment: everything arrives in the config model
``DeepgramProviderSettings`` (the API key as a secret).
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog

from voiceline.audio.formats import AudioFormat
from voiceline.config import DeepgramProviderSettings
from voiceline.providers.base import (
    CallContext,
    FunctionCallRequest,
    Provider,
    ProviderCapabilities,
    ProviderClosed,
    ProviderError,
    ProviderSession,
)
from voiceline.providers.deepgram_events import (
    DeepgramEventMapper,
    SessionRejected,
    SettingsApplied,
    Welcome,
)
from voiceline.providers.functions import dtmf_text, duplicate_names, function_definitions, result_text
from voiceline.tasks import cancel_and_wait, spawn

if TYPE_CHECKING:
    from voiceline.config import DeepgramFunction

log = structlog.get_logger("voiceline.providers.deepgram")

# Deepgram encoding name -> engine encoding name. The config model admits only these
# encodings (the ones the engine can transcode; Deepgram itself also takes opus, flac,
# ...) and only the "none" output container.
_TO_ENGINE_ENCODING = {"linear16": "slin16", "mulaw": "mulaw", "alaw": "alaw"}
_FUNCTION_ENDPOINT_KEYS = frozenset({"url", "method", "headers"})
# Errors a websocket receive raises when the connection is gone.
_CONNECTION_ERRORS = (ConnectionError, OSError, aiohttp.ClientError)
# ... and a send (aiohttp raises RuntimeError when the socket is closing under it).
_SEND_ERRORS = (*_CONNECTION_ERRORS, RuntimeError)


class DeepgramError(Exception):
    """The Deepgram session could not be started or was refused."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class DeepgramAuthError(DeepgramError):
    """No API key, or the service refused it."""


class DeepgramSettingsError(DeepgramError):
    """The service answered ``Settings`` with an ``Error`` (or never applied them)."""


def _engine_format(encoding: str, rate: Any, which: str) -> AudioFormat:
    return AudioFormat(_TO_ENGINE_ENCODING[encoding], _as_int(rate, f"{which}_sample_rate"))  # type: ignore[arg-type]


def input_format(cfg: DeepgramProviderSettings) -> AudioFormat:
    """The engine format of the caller audio Deepgram is told to expect."""
    return _engine_format(cfg.input_encoding, cfg.input_sample_rate, "input")


def output_format(cfg: DeepgramProviderSettings) -> AudioFormat:
    """The engine format of the agent audio Deepgram is told to send."""
    return _engine_format(cfg.output_encoding, cfg.output_sample_rate, "output")


def _as_int(value: Any, name: str) -> int:
    """Deepgram rejects 8000.0 where it wants 8000: integers go out as integers.
    (The config model's int field would take True as 1; this refuses it.)"""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValueError(f"{name} must be an integer, got {value!r}")


def _function_settings(fn: DeepgramFunction) -> dict[str, Any]:
    if not fn.name:
        raise ValueError("every deepgram function needs a non-empty 'name'")
    out: dict[str, Any] = {"name": fn.name}
    if fn.description:
        out["description"] = fn.description
    out["parameters"] = dict(fn.parameters) if fn.parameters else {"type": "object", "properties": {}}
    if fn.endpoint is not None:
        if not fn.endpoint.get("url"):
            raise ValueError(f"deepgram function {fn.name!r}: 'endpoint' needs a 'url'")
        bad = set(fn.endpoint) - _FUNCTION_ENDPOINT_KEYS
        if bad:
            raise ValueError(
                f"deepgram function {fn.name!r}: unknown endpoint field(s) {sorted(bad)}; "
                f"allowed {sorted(_FUNCTION_ENDPOINT_KEYS)}"
            )
        out["endpoint"] = {k: v for k, v in fn.endpoint.items() if v is not None}
    return out


def build_settings(cfg: DeepgramProviderSettings) -> dict[str, Any]:
    """The v1 ``Settings`` message for ``cfg``. Optional values that are empty are left out."""
    think_provider: dict[str, Any] = {"type": cfg.think_provider, "model": cfg.think_model}
    if cfg.think_temperature is not None:
        think_provider["temperature"] = float(cfg.think_temperature)
    think: dict[str, Any] = {"provider": think_provider}
    if cfg.prompt:
        think["prompt"] = cfg.prompt
    # Deepgram's own function list, then the ones the engine runs (actions).
    functions = [_function_settings(fn) for fn in cfg.functions] + function_definitions(cfg.actions)
    duplicates = duplicate_names([fn["name"] for fn in functions])
    if duplicates:
        raise ValueError(f"deepgram function name(s) {duplicates} declared twice (functions and actions)")
    if functions:
        think["functions"] = functions
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
    fmt_in, fmt_out = input_format(cfg), output_format(cfg)
    settings["audio"] = {
        "input": {"encoding": cfg.input_encoding, "sample_rate": fmt_in.sample_rate},
        "output": {"encoding": cfg.output_encoding, "sample_rate": fmt_out.sample_rate, "container": cfg.output_container},
    }
    settings["agent"] = agent
    return settings


class DeepgramSession(ProviderSession):
    """One call's Voice Agent conversation."""

    def __init__(self, cfg: DeepgramProviderSettings, ctx: CallContext | None = None) -> None:
        fmt_in, fmt_out = input_format(cfg), output_format(cfg)
        super().__init__(
            ProviderCapabilities(
                input_format=fmt_in,
                output_format=fmt_out,
                detects_turns=True,
                interruptible=True,
                # Held up to pre_settings_buffer_ms until SettingsApplied (_hold).
                takes_audio_during_start=True,
            )
        )
        self.cfg = cfg
        self.ctx = ctx
        self._log = log.bind(call_id=ctx.call_id if ctx else None)
        self.mapper = DeepgramEventMapper(self._log)
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reader: asyncio.Task[None] | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()
        self._welcome: asyncio.Future[str] | None = None
        self._applied: asyncio.Future[None] | None = None
        self._started = False
        self._starting = False  # inside start(): connection loss is start()'s to report
        self._lost_reason: str | None = None
        self._ready = False  # SettingsApplied and the pre-settings hold flushed
        self._closing = False
        self._closed = False
        self._pending: deque[bytes] = deque()
        self._function_names: dict[str, str] = {}  # FunctionCallRequest id -> name (for the response)
        self._pending_bytes = 0
        self._pending_limit = fmt_in.bytes_for_ms(cfg.pre_settings_buffer_ms)
        self._last_sent = 0.0
        self._close_reason: str | None = None
        self.request_id: str | None = None
        # Counters for logs, tests and the call record.
        self.stats: dict[str, int] = {
            "audio_bytes_sent": 0,
            "audio_bytes_buffered": 0,
            "audio_bytes_dropped": 0,
            "audio_bytes_received": 0,
            "keepalives_sent": 0,
        }

    # ---- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("DeepgramSession.start() called twice")
        self._started = True
        if not self.cfg.api_key.get_secret_value():
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
            except _SEND_ERRORS as exc:
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
        self._keepalive = spawn(self._keepalive_loop(), name="deepgram-keepalive", owner=self._tasks)
        self._log.info(
            "deepgram session ready",
            request_id=self.request_id,
            input=str(self.capabilities.input_format),
            output=str(self.capabilities.output_format),
        )

    async def _connect(self) -> None:
        self._http = aiohttp.ClientSession()
        headers = {"Authorization": f"Token {self.cfg.api_key.get_secret_value()}"}
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
        self._reader = spawn(self._read_loop(), name="deepgram-reader", owner=self._tasks)

    async def _wait(self, fut: asyncio.Future[Any], timeout: float, what: str) -> Any:
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout=timeout)
        except TimeoutError:
            last = self.mapper.last_error
            raise DeepgramSettingsError(
                f"Deepgram sent no {what} within {timeout:g}s" + (f" (last error: {last})" if last else "")
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
            # A task that already ended had any crash logged by spawn(); the current
            # task (the reader reporting a lost connection) finishes on its own.
            if task is not None and task is not current and not task.done():
                await cancel_and_wait(task)
        await self._close_socket()
        for fut in (self._welcome, self._applied):
            if fut is not None and not fut.done():
                # A start() still waiting gets an error, not a CancelledError that
                # would look like its own caller being cancelled.
                fut.set_exception(DeepgramError(f"session closed during start ({reason})"))
                fut.exception()
        self._pending.clear()
        self._pending_bytes = 0
        self._log.info(
            "deepgram session closed", reason=reason, error=error, events_dropped=self.events_dropped, **self.stats
        )
        self._emit(ProviderClosed(reason, error=error))

    async def _close_socket(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None and not ws.closed:
            try:
                await asyncio.wait_for(ws.close(), timeout=2.0)
            except (TimeoutError, *_SEND_ERRORS) as exc:
                # Closing a socket that is already broken: nothing left to release.
                self._log.debug("deepgram websocket close failed", error=repr(exc))
        http, self._http = self._http, None
        if http is not None:
            await http.close()

    # ---- caller audio -----------------------------------------------------------------

    async def send_audio(self, audio: bytes) -> None:
        if self._closed or not audio:
            return
        if not self._ready:
            self._hold(bytes(audio))
            return
        await self._send_bytes(audio)

    def _hold(self, audio: bytes) -> None:
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
        # send_audio keeps holding until _ready flips, so order is preserved even if
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
        except _SEND_ERRORS as exc:
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
        except (DeepgramError, *_SEND_ERRORS) as exc:
            self._log.warning("deepgram control message not sent", type=message.get("type"), error=str(exc))
            return False
        return True

    async def _keepalive_loop(self) -> None:
        # Send failures are expected (the socket went away: the reader reports it) and
        # end the loop; anything else is a bug, logged with its traceback by spawn().
        loop = asyncio.get_running_loop()
        interval = self.cfg.keepalive_interval_s
        while not self._closing:
            remaining = self._last_sent + interval - loop.time()
            if remaining > 0:
                await asyncio.sleep(remaining)
                continue
            if not await self._send_control({"type": "KeepAlive"}):
                return
            self._last_sent = loop.time()
            self.stats["keepalives_sent"] += 1

    # ---- control messages -------------------------------------------------------------

    async def interrupt(self, played_ms: float | None = None) -> None:
        # Deepgram hears the caller itself and stops the agent (UserStartedSpeaking);
        # there is no client message to cancel a turn, so nothing to send.
        self._log.debug("deepgram interrupt (server-side barge-in)", played_ms=played_ms)

    async def update_prompt(self, text: str) -> bool:
        return await self._send_control({"type": "UpdatePrompt", "prompt": text})

    async def inject_agent_message(self, text: str) -> bool:
        return await self._send_control({"type": "InjectAgentMessage", "message": text})

    async def inject_user_message(self, text: str) -> bool:
        return await self._send_control({"type": "InjectUserMessage", "content": text})

    async def send_function_result(self, call_id: str, result: Mapping[str, Any]) -> bool:
        name = self._function_names.pop(call_id, None)
        if name is None:
            self._log.warning("deepgram function result for an unknown request", request_id=call_id)
            return False
        return await self._send_control(
            {"type": "FunctionCallResponse", "id": call_id, "name": name, "content": result_text(result)}
        )

    async def send_dtmf(self, digit: str) -> None:
        text = dtmf_text(self.cfg.actions, digit)
        if text is not None:
            await self.inject_user_message(text)

    # ---- server messages --------------------------------------------------------------

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
                    self._dispatch(self.mapper.handle_binary(msg.data))
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    self._dispatch(self.mapper.handle_text(msg.data))
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
        except _CONNECTION_ERRORS as exc:
            reason = f"Deepgram connection failed: {type(exc).__name__}: {exc}"
        except Exception as exc:  # a bug in the mapping: this call ends, the traceback is logged
            self._log.exception("deepgram reader failed unexpectedly")
            reason = f"Deepgram session failed: internal error {type(exc).__name__}: {exc}"
        await self._lost(reason, code)

    async def _lost(self, reason: str, code: str | None) -> None:
        if self._closing:
            return
        if self.mapper.last_error:
            reason += f"; last error: {self.mapper.last_error}"
        if self._starting:
            # start() is still running: it raises this reason and tears down.
            self._lost_reason = reason
            self._fail_handshake(reason)
            return
        self._log.warning("deepgram session lost", reason=reason)
        self._emit(ProviderError(reason, code=code, fatal=True))
        # _teardown skips awaiting the current task (this reader).
        await self._teardown(reason, error=True)

    def _dispatch(self, outputs: list[Any]) -> None:
        for out in outputs:
            if isinstance(out, Welcome):
                if self._welcome is not None and not self._welcome.done():
                    self._welcome.set_result(out.request_id)
            elif isinstance(out, SettingsApplied):
                if self._applied is not None and not self._applied.done():
                    self._applied.set_result(None)
            elif isinstance(out, SessionRejected):
                # Settings refused (or anything else before they were applied): start() raises.
                exc = DeepgramSettingsError(f"Deepgram rejected the session: {out.message}", out.code)
                for fut in (self._welcome, self._applied):
                    if fut is not None and not fut.done():
                        fut.set_exception(exc)
                        fut.exception()
            else:
                if isinstance(out, FunctionCallRequest) and out.client_side:
                    self._function_names[out.call_id] = out.name
                self._emit(out)

    def _fail_handshake(self, reason: str) -> None:
        exc_type = DeepgramSettingsError if self._welcome is not None and self._welcome.done() else DeepgramError
        for fut in (self._welcome, self._applied):
            if fut is not None and not fut.done():
                fut.set_exception(exc_type(reason))
                # start() may already be gone (cancelled); don't let the loop warn.
                fut.exception()


class DeepgramProvider(Provider):
    name = "deepgram"

    def __init__(self, config: DeepgramProviderSettings) -> None:
        self.config = config

    def availability(self) -> tuple[bool, str]:
        if not self.config.api_key.get_secret_value():
            return False, "set DEEPGRAM_API_KEY (the Deepgram API key) to use the deepgram provider"
        try:
            build_settings(self.config)
        except ValueError as exc:
            return False, f"invalid deepgram configuration: {exc}"
        return True, "ok"

    def create_session(self, ctx: CallContext) -> DeepgramSession:
        return DeepgramSession(self.config, ctx)
