"""OpenAI Realtime API provider (speech-to-speech over a WebSocket).

The wire protocol is JSON events over one WebSocket. Two shapes exist:

* ``"ga"`` (default): ``session.update`` carries ``session.type = "realtime"``,
  ``output_modalities`` and nested ``audio.input`` / ``audio.output`` objects whose
  ``format`` is ``{"type": "audio/pcmu"}`` or ``{"type": "audio/pcm", "rate": 24000}``;
  agent audio arrives as ``response.output_audio.delta``.
* ``"beta"``: the older flat session (``input_audio_format: "g711_ulaw"``, ``voice``,
  ``turn_detection``, ``input_audio_transcription``), the ``OpenAI-Beta: realtime=v1``
  header, and ``response.audio.delta`` events.

Everything that decides what goes on the wire or what a server event means is a pure
function or the socket-free ``RealtimeEventMapper``; ``OpenAIRealtimeSession`` only
moves JSON between the socket and those.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

import aiohttp
import structlog

from voiceline.audio.formats import AudioFormat
from voiceline.config import OpenAIRealtimeProviderSettings
from voiceline.providers.functions import arguments_from_json, dtmf_text, result_text
from voiceline.providers.openai_realtime_messages import (  # re-exported: the module's public API
    BENIGN_ERROR_CODES,
    build_audio_append as build_audio_append,
    build_function_output as build_function_output,
    build_greeting as build_greeting,
    build_headers as build_headers,
    build_response_cancel as build_response_cancel,
    build_session_update as build_session_update,
    build_tools as build_tools,
    build_truncate as build_truncate,
    build_url as build_url,
    build_user_text as build_user_text,
    engine_format as engine_format,
    error_message as error_message,
    OpenAIRealtimeError as OpenAIRealtimeError,
)
from voiceline.providers.base import (
    AgentAudio,
    AgentAudioDone,
    AgentStartedSpeaking,
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

log = structlog.get_logger(__name__)

# ---- server event -> typed event mapping (no socket) --------------------------------------

_AUDIO_DELTA = frozenset({"response.output_audio.delta", "response.audio.delta"})
_AUDIO_DONE = frozenset({"response.output_audio.done", "response.audio.done"})
_TRANSCRIPT_DONE = frozenset(
    {"response.output_audio_transcript.done", "response.audio_transcript.done"}
)


class RealtimeEventMapper:
    """Turns decoded server events into ``ProviderEvent``s and tracks response state.

    State kept: the response in progress (for ``response.cancel``), the assistant item
    whose audio was last streamed and how many ms of it arrived (for truncation), and
    function-call names announced by ``response.output_item.added``.
    """

    def __init__(self, output_format: AudioFormat) -> None:
        self.output_format = output_format
        self.response_id: str | None = None
        self.response_in_progress = False
        self.audio_item_id: str | None = None
        self.audio_bytes = 0
        self._started_response: str | None = None  # response that already got AgentStartedSpeaking
        self._audio_open = False  # AgentStartedSpeaking sent, AgentAudioDone not yet
        self._function_names: dict[str, str] = {}
        self._discarded: set[str] = set()  # interrupted responses whose late audio is dropped

    @property
    def audio_ms_received(self) -> float:
        return self.output_format.ms_for_bytes(self.audio_bytes)

    def handle(self, event: Mapping[str, Any]) -> list[ProviderEvent]:
        etype = event.get("type")
        if etype in _AUDIO_DELTA:
            return self._audio_delta(event)
        if etype == "input_audio_buffer.speech_started":
            return [UserStartedSpeaking()]
        if etype == "response.created":
            response = event.get("response") or {}
            self.response_id = response.get("id") or self.response_id
            self.response_in_progress = True
            return []
        if etype == "response.output_item.added":
            item = event.get("item") or {}
            if item.get("type") == "function_call" and item.get("name"):
                for key in (item.get("call_id"), item.get("id")):
                    if key:
                        self._function_names[key] = item["name"]
            return []
        if etype in _AUDIO_DONE:
            return self._close_audio()
        if etype in _TRANSCRIPT_DONE:
            text = event.get("transcript") or ""
            return [Transcript(role="assistant", text=text)] if text else []
        if etype == "conversation.item.input_audio_transcription.completed":
            text = event.get("transcript") or ""
            return [Transcript(role="user", text=text)] if text else []
        if etype == "response.function_call_arguments.done":
            return [self._function_call(event)]
        if etype == "response.done":
            return self._response_done(event)
        if etype == "error":
            message, code = error_message(event)
            if code in BENIGN_ERROR_CODES:
                log.debug("openai_realtime.benign_error", code=code, message=message)
                return []
            return [ProviderError(message=message, code=code, fatal=False)]
        log.debug("openai_realtime.ignored_event", type=etype)
        return []

    def interrupt(self, played_ms: float | None) -> list[dict[str, Any]]:
        """Client events for a barge-in after ``played_ms`` of the current turn was heard.

        Cancels the response if one is still generating, and truncates the assistant
        item to what the caller actually heard, clamped to the audio received (the
        server rejects an ``audio_end_ms`` beyond the item's audio). Audio still in
        flight for the interrupted response is dropped from then on.
        """
        messages: list[dict[str, Any]] = []
        if self.response_in_progress:
            messages.append(build_response_cancel(self.response_id))
            self.response_in_progress = False
        if played_ms is not None and self.audio_item_id is not None:
            end_ms = int(max(0.0, min(float(played_ms), self.audio_ms_received)))
            messages.append(build_truncate(self.audio_item_id, end_ms))
            self.audio_item_id = None
            self.audio_bytes = 0
        if self.response_id is not None:
            self._discarded.add(self.response_id)
        self._audio_open = False
        return messages

    def _audio_delta(self, event: Mapping[str, Any]) -> list[ProviderEvent]:
        try:
            data = base64.b64decode(event.get("delta") or "", validate=True)
        except (binascii.Error, ValueError):
            return [ProviderWarning(message="undecodable audio delta from OpenAI", code="bad_delta")]
        out: list[ProviderEvent] = []
        response_id = event.get("response_id") or self.response_id
        if response_id is not None and response_id in self._discarded:
            return []
        if response_id != self.response_id:
            # A delta of a response we never saw created: treat it as the current one.
            self.response_id = response_id
            self.response_in_progress = True
        item_id = event.get("item_id")
        if item_id and item_id != self.audio_item_id:
            self.audio_item_id = item_id
            self.audio_bytes = 0
        if self._started_response != response_id or not self._audio_open:
            self._started_response = response_id
            self._audio_open = True
            out.append(AgentStartedSpeaking())
        self.audio_bytes += len(data)
        if data:
            out.append(AgentAudio(data))
        return out

    def _close_audio(self) -> list[ProviderEvent]:
        if not self._audio_open:
            return []
        self._audio_open = False
        return [AgentAudioDone()]

    def _response_done(self, event: Mapping[str, Any]) -> list[ProviderEvent]:
        response = event.get("response") or {}
        if not response.get("id") or response.get("id") == self.response_id:
            self.response_in_progress = False
        out = self._close_audio()
        if response.get("status") == "failed":
            details = response.get("status_details") or {}
            err = details.get("error") or {}
            message = err.get("message") or "response failed"
            out.append(ProviderWarning(message=f"OpenAI response failed: {message}", code=err.get("code")))
        return out

    def _function_call(self, event: Mapping[str, Any]) -> ProviderEvent:
        call_id = str(event.get("call_id") or "")
        name = event.get("name") or self._function_names.get(call_id) or self._function_names.get(
            str(event.get("item_id") or ""), ""
        )
        raw = event.get("arguments") or "{}"
        if isinstance(raw, str):
            arguments = arguments_from_json(raw)
        else:
            try:
                arguments = dict(raw)
            except (TypeError, ValueError):
                arguments = {"_raw": raw}
        return FunctionCallRequest(call_id=call_id, name=str(name), arguments=arguments)


# ---- the session ----------------------------------------------------------------------


class OpenAIRealtimeSession(ProviderSession):
    def __init__(self, config: OpenAIRealtimeProviderSettings, ctx: CallContext | None = None) -> None:
        fmt = engine_format(config)
        super().__init__(
            ProviderCapabilities(
                input_format=fmt,
                output_format=fmt,
                detects_turns=config.turn_detection is not None,
                interruptible=True,
            )
        )
        self.config = config
        self.ctx = ctx
        self.mapper = RealtimeEventMapper(fmt)
        self.session_info: dict[str, Any] = {}
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()
        self._closing = False
        self._respond_when_done = False  # a function result or keypress waits for response.done
        self._cancel_pending = False  # response.cancel sent, its response.done not seen yet
        self._log = log.bind(call_id=ctx.call_id if ctx else None)

    # -- lifecycle --

    async def start(self) -> None:
        cfg = self.config
        headers = build_headers(cfg)
        self._http = aiohttp.ClientSession()
        try:
            try:
                self._ws = await asyncio.wait_for(
                    self._http.ws_connect(
                        build_url(cfg), headers=headers, heartbeat=20.0, max_msg_size=32 * 1024 * 1024
                    ),
                    timeout=cfg.connect_timeout_s,
                )
            except aiohttp.WSServerHandshakeError as exc:
                hint = " (check the API key)" if exc.status in (401, 403) else ""
                raise OpenAIRealtimeError(
                    f"OpenAI Realtime refused the connection: HTTP {exc.status} {exc.message}{hint}"
                ) from exc
            except TimeoutError as exc:
                raise OpenAIRealtimeError(
                    f"timed out connecting to OpenAI Realtime after {cfg.connect_timeout_s:g}s"
                ) from exc
            except aiohttp.ClientError as exc:
                raise OpenAIRealtimeError(f"cannot connect to OpenAI Realtime: {exc}") from exc

            created = await self._await_event("session.created")
            self.session_info = dict(created.get("session") or {})
            await self._send(build_session_update(cfg))
            updated = await self._await_event("session.updated")
            self.session_info = dict(updated.get("session") or {})
        except BaseException:
            await self._teardown()
            self._closing = True
            self._emit(ProviderClosed(reason="start failed", error=True))
            raise

        self._reader = asyncio.create_task(self._read_loop(), name="openai-realtime-reader")
        self._log.info("openai_realtime.ready", shape=cfg.api_shape, format=cfg.audio_format)
        if cfg.greeting:
            await self._send(build_greeting(cfg.greeting))

    async def _await_event(self, wanted: str) -> dict[str, Any]:
        """Read until ``wanted`` arrives during the handshake; ``error`` raises."""
        assert self._ws is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.connect_timeout_s
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise OpenAIRealtimeError(f"timed out waiting for {wanted} from OpenAI Realtime")
            try:
                msg = await asyncio.wait_for(self._ws.receive(), timeout=remaining)
            except TimeoutError:
                continue
            if msg.type == aiohttp.WSMsgType.TEXT:
                event = _decode(msg.data)
                if event is None:
                    continue
                etype = event.get("type")
                if etype == wanted:
                    return event
                if etype == "error":
                    message, code = error_message(event)
                    raise OpenAIRealtimeError(
                        f"OpenAI Realtime rejected the session setup while waiting for {wanted}: "
                        f"{message}" + (f" [{code}]" if code else "")
                    )
                self._log.debug("openai_realtime.handshake_event", type=etype)
                continue
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                raise OpenAIRealtimeError(
                    f"OpenAI Realtime closed the socket while waiting for {wanted} "
                    f"(code {self._ws.close_code}, {msg.extra or 'no reason'})"
                )
            if msg.type == aiohttp.WSMsgType.ERROR:
                raise OpenAIRealtimeError(f"WebSocket error while waiting for {wanted}: {msg.data}")

    async def _read_loop(self) -> None:
        ws = self._ws
        assert ws is not None
        reason: str | None = None
        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    event = _decode(msg.data)
                    if event is None:
                        continue
                    for out in self.mapper.handle(event):
                        self._emit(out)
                    etype = event.get("type")
                    if etype == "response.done" or (
                        etype == "error" and error_message(event)[1] == "response_cancel_not_active"
                    ):
                        self._cancel_pending = False  # no response is active any more
                    if self._respond_when_done and not (self.mapper.response_in_progress or self._cancel_pending):
                        self._respond_when_done = False
                        await self._send({"type": "response.create"})
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    reason = f"WebSocket error: {ws.exception() or msg.data}"
                    break
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the reader must never die with an unretrieved error
            reason = f"reader failed: {exc!r}"
            self._log.exception("openai_realtime.reader_failed")
        if self._closing:
            return
        self._closing = True
        if reason is None:
            reason = f"OpenAI closed the socket (code {ws.close_code})"
        self._log.warning("openai_realtime.lost", reason=reason)
        self._emit(ProviderError(message=reason, code="connection_lost", fatal=True))
        self._emit(ProviderClosed(reason=reason, error=True))
        await self._teardown(cancel_reader=False)

    async def close(self, reason: str = "call ended") -> None:
        if not self._closing:
            self._closing = True
            await self._teardown()
        else:
            # The reader may be finishing its own teardown after a lost socket.
            await self._wait_reader()
        self._emit(ProviderClosed(reason=reason))  # no-op if already emitted

    async def _wait_reader(self) -> None:
        reader = self._reader
        if reader is None or reader is asyncio.current_task() or reader.done():
            return
        try:
            await asyncio.shield(reader)
        except asyncio.CancelledError:
            if not reader.cancelled():
                raise

    async def _teardown(self, *, cancel_reader: bool = True) -> None:
        reader = self._reader
        if cancel_reader and reader is not None and reader is not asyncio.current_task():
            reader.cancel()
            try:
                await reader
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # we are being cancelled ourselves, not just the reader
        ws, self._ws = self._ws, None
        if ws is not None and not ws.closed:
            try:
                await asyncio.wait_for(ws.close(), timeout=2.0)
            except (TimeoutError, aiohttp.ClientError, ConnectionError, OSError) as exc:
                # Closing a socket that is already broken: nothing left to release.
                self._log.debug("openai_realtime.close_failed", error=repr(exc))
        http, self._http = self._http, None
        if http is not None:
            await http.close()

    # -- outbound --

    async def send_audio(self, audio: bytes) -> None:
        if audio:
            await self._send(build_audio_append(audio))

    async def interrupt(self, played_ms: float | None = None) -> None:
        messages = self.mapper.interrupt(played_ms)
        for message in messages:
            if message["type"] == "response.cancel":
                self._cancel_pending = True
            await self._send(message)
        if messages:
            self._log.info(
                "openai_realtime.interrupt",
                played_ms=played_ms,
                sent=[m["type"] for m in messages],
            )

    async def send_function_result(self, call_id: str, result: Mapping[str, Any]) -> bool:
        """Give the model a function call's result and let it answer: ``response.create``
        at once, or when the response that made the call is done (the service refuses a
        second response while one is active)."""
        if not await self._send(build_function_output(call_id, result_text(result))):
            return False
        return await self._respond()

    async def send_dtmf(self, digit: str) -> None:
        text = dtmf_text(self.config.actions, digit)
        if text is None:
            return
        if await self._send(build_user_text(text)):
            await self._respond()

    async def _respond(self) -> bool:
        """``response.create`` now, or once the active (or cancelled) response is done."""
        if self.mapper.response_in_progress or self._cancel_pending:
            self._respond_when_done = True
            return True
        return await self._send({"type": "response.create"})

    async def _send(self, event: Mapping[str, Any]) -> bool:
        ws = self._ws
        if ws is None or ws.closed:
            return False
        try:
            async with self._send_lock:
                await ws.send_str(json.dumps(event))
        except (ConnectionError, aiohttp.ClientError, RuntimeError, OSError) as exc:
            # The reader notices the lost socket and reports it once.
            self._log.debug("openai_realtime.send_failed", type=event.get("type"), error=repr(exc))
            return False
        return True


def _decode(data: str) -> dict[str, Any] | None:
    try:
        event = json.loads(data)
    except json.JSONDecodeError:
        log.warning("openai_realtime.bad_json", data=data[:200])
        return None
    return event if isinstance(event, dict) else None


class OpenAIRealtimeProvider(Provider):
    name = "openai_realtime"

    def __init__(self, config: OpenAIRealtimeProviderSettings) -> None:
        self.config = config

    def availability(self) -> tuple[bool, str]:
        if not self.config.api_key.get_secret_value():
            return False, "no OpenAI API key: set OPENAI_API_KEY (or the provider's api_key)"
        return True, f"OpenAI Realtime {self.config.model} ({self.config.api_shape}, {self.config.audio_format})"

    def create_session(self, ctx: CallContext) -> OpenAIRealtimeSession:
        return OpenAIRealtimeSession(self.config, ctx)
