"""A local stand-in for the OpenAI Realtime WebSocket service.

It checks what the real service checks (Bearer auth, ``?model=``, the session.update
schema of the GA or the beta shape, audio format values), hears the caller with the
shared ``SpeechDetector`` (server VAD), and answers every caller turn with real
synthesized speech in the session's output format. It honours ``response.cancel`` and records
``conversation.item.truncate`` requests so tests can check barge-in handling.

Shape: a connection carrying ``OpenAI-Beta: realtime=v1`` speaks the beta protocol;
any other connection speaks GA.

The session.update schema and the session object live in ``openai_sim_schema``.

Run it standalone::

    python -m voiceline.sim.openai_sim --port 8765
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, Self

import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from voiceline.sim.openai_sim_schema import (
    DEFAULT_TURN_DETECTION,
    FORMATS,
    SessionConfigError,
    SimSession,
    apply_session_update,
    new_id,
    session_object,
)
from voiceline.sim.sim_intents import FunctionModel, Intent
from voiceline.sim.speech import SpeechDetector, synthesize_async

__all__ = [
    "DEFAULT_TURN_DETECTION",
    "OpenAIRealtimeSimulator",
    "SessionConfigError",
    "SimConnection",
    "SimSession",
    "apply_session_update",
    "main",
    "session_object",
]

log = structlog.get_logger("voiceline.sim.openai")


# ---- the server ------------------------------------------------------------------------------


@dataclass
class _Response:
    id: str
    item_id: str
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    cancel_reason: str = "client_cancelled"
    task: asyncio.Task[None] | None = None


class SimConnection:
    """One client WebSocket: its session, VAD state and responses."""

    def __init__(self, sim: OpenAIRealtimeSimulator, ws: web.WebSocketResponse, shape: str, model: str) -> None:
        self.sim = sim
        self.ws = ws
        self.shape = shape
        self.model = model
        self.session_id = new_id("sess")
        self.session = SimSession()
        self.received: list[dict[str, Any]] = []  # client events (audio payloads elided)
        self.errors_sent: list[dict[str, Any]] = []
        self.sent: list[dict[str, Any]] = []  # server events
        self.truncates: list[dict[str, Any]] = []
        self.cancels: list[dict[str, Any]] = []
        self.response_creates: list[dict[str, Any]] = []
        self.responses_done: list[dict[str, Any]] = []
        self.item_audio_ms: dict[str, float] = {}
        self.active: _Response | None = None
        self.last_item_id: str | None = None
        self.audio_in_bytes = 0
        # server VAD: a detector per session configuration; its clock starts at
        # _detector_origin_ms of caller audio
        self._audio_ms = 0.0
        self._detector: SpeechDetector | None = None
        self._detector_origin_ms = 0.0
        self._user_item: str | None = None
        self._new_detector()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.functions = FunctionModel()  # the simulated model's function calls (sim_intents)

    # names that differ between shapes
    def _name(self, ga: str, beta: str) -> str:
        return ga if self.shape == "ga" else beta

    async def send(self, event: dict[str, Any]) -> None:
        event.setdefault("event_id", new_id("event"))
        text = json.dumps(event)
        # Kept for tests (audio payloads elided, so long calls stay small; the rest as sent).
        self.sent.append({**event, "delta": ""} if event["type"].endswith("audio.delta") else json.loads(text))
        if self.ws.closed:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_str(text)

    async def error(self, code: str, message: str, param: str | None = None, client_event_id: str | None = None) -> None:
        err = {"type": "invalid_request_error", "code": code, "message": message, "param": param,
               "event_id": client_event_id}
        self.errors_sent.append(err)
        await self.send({"type": "error", "error": err})

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(self._guard(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @staticmethod
    async def _guard(coro: Any) -> None:
        try:
            await coro
        except ConnectionError as exc:  # the client went away mid-response
            log.debug("sim task ended: connection gone", error=repr(exc))
        except Exception:
            log.exception("sim task failed")

    async def run(self, request: web.Request) -> None:
        await self.send({"type": "session.created",
                         "session": session_object(self.shape, self.session, self.session_id, self.model)})
        if self.sim.close_after_s is not None:
            self._spawn(self._close_later(request, self.sim.close_after_s))
        try:
            async for msg in self.ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    event = json.loads(msg.data)
                except json.JSONDecodeError:
                    await self.error("invalid_json", "The server could not parse the event: invalid JSON.")
                    continue
                if not isinstance(event, dict):
                    await self.error("invalid_event", "Events must be JSON objects.")
                    continue
                await self.dispatch(event)
        finally:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            if tasks:
                # _guard logs every failure, so the tasks end with nothing to report.
                await asyncio.wait(tasks)

    async def _close_later(self, request: web.Request, delay: float) -> None:
        await asyncio.sleep(delay)
        if self.sim.close_mode == "abort":
            if request.transport is not None:
                request.transport.close()
        else:
            await self.ws.close(code=WSCloseCode.GOING_AWAY, message=b"simulated server close")

    async def dispatch(self, event: dict[str, Any]) -> None:
        etype = event.get("type")
        client_id = event.get("event_id")
        if etype == "input_audio_buffer.append":
            self.received.append({"type": etype})
        else:
            self.received.append(event)
        if etype == "session.update":
            try:
                self.session = apply_session_update(self.shape, self.session, event.get("session"))
            except SessionConfigError as exc:
                await self.error(exc.code, exc.message, exc.param, client_id)
                return
            self._new_detector()
            await self.send({"type": "session.updated",
                             "session": session_object(self.shape, self.session, self.session_id, self.model)})
        elif etype == "input_audio_buffer.append":
            audio = event.get("audio")
            try:
                data = base64.b64decode(audio or "", validate=True)
            except (binascii.Error, ValueError, TypeError):
                await self.error("invalid_value", "Invalid 'audio'. Expected base64-encoded audio bytes.",
                                 "audio", client_id)
                return
            self.audio_in_bytes += len(data)
            await self._feed_vad(data)
        elif etype == "input_audio_buffer.commit":
            await self._end_user_turn(committed_by_client=True)
        elif etype == "input_audio_buffer.clear":
            self._new_detector()
            await self.send({"type": "input_audio_buffer.cleared"})
        elif etype == "response.create":
            self.response_creates.append(event)
            if self.active is not None:
                await self.error("conversation_already_has_active_response",
                                 f"Conversation already has an active response in progress: {self.active.id}.",
                                 None, client_id)
                return
            self._start_response()
        elif etype == "response.cancel":
            wanted = event.get("response_id")
            active = self.active
            ok = active is not None and (not wanted or wanted == active.id)
            self.cancels.append({"response_id": wanted, "active": ok})
            if not ok:
                await self.error("response_cancel_not_active",
                                 "Cancellation failed: no active response found.", None, client_id)
                return
            assert active is not None
            if not active.cancelled.is_set():
                active.cancel_reason = "client_cancelled"
                active.cancelled.set()
        elif etype == "conversation.item.truncate":
            await self._truncate(event, client_id)
            log.info("sim truncate", **self.truncates[-1])
        elif etype == "conversation.item.create":
            item = dict(event.get("item") or {})
            if not await self._accept_item(item, client_id):
                return
            item.setdefault("id", new_id("item"))
            await self.send({"type": self._name("conversation.item.added", "conversation.item.created"),
                             "previous_item_id": self.last_item_id, "item": item})
            self.last_item_id = item["id"]
        else:
            await self.error("invalid_value", f"Invalid value: {etype!r}. Unsupported client event type.",
                             "type", client_id)

    async def _accept_item(self, item: dict[str, Any], client_id: str | None) -> bool:
        """What the model learns from a client item: a function's output (for the call it
        is waiting on) or the user's text (a keypress)."""
        kind = item.get("type")
        if kind == "function_call_output" and not self.functions.function_output(item.get("call_id"), item.get("output")):
            await self.error("invalid_value", "function_call_output needs the call_id of the pending "
                             "function call and a string 'output'.", "item.call_id", client_id)
            return False
        if kind == "message" and item.get("role") == "user":
            texts = [c.get("text") for c in item.get("content") or [] if c.get("type") == "input_text"]
            self.functions.user_text = " ".join(t for t in texts if isinstance(t, str)) or self.functions.user_text
        return True

    async def _truncate(self, event: dict[str, Any], client_id: str | None) -> None:
        item_id = event.get("item_id")
        end_ms = event.get("audio_end_ms")
        record = {"item_id": item_id, "content_index": event.get("content_index"), "audio_end_ms": end_ms,
                  "accepted": False}
        self.truncates.append(record)
        if item_id not in self.item_audio_ms:
            await self.error("item_truncate_invalid_item_id",
                             f"Item with item_id={item_id!r} not found or has no assistant audio.",
                             "item_id", client_id)
            return
        if event.get("content_index") != 0:
            await self.error("invalid_value", "Invalid 'content_index': only 0 is supported.",
                             "content_index", client_id)
            return
        if not isinstance(end_ms, int) or end_ms < 0:
            await self.error("invalid_value", "Invalid 'audio_end_ms': expected a non-negative integer.",
                             "audio_end_ms", client_id)
            return
        if end_ms > self.item_audio_ms[item_id]:
            await self.error("invalid_value",
                             f"audio_end_ms {end_ms} is longer than the item's audio "
                             f"({self.item_audio_ms[item_id]:.0f} ms).", "audio_end_ms", client_id)
            return
        record["accepted"] = True
        await self.send({"type": "conversation.item.truncated", "item_id": item_id, "content_index": 0,
                         "audio_end_ms": end_ms})

    # -- caller audio / VAD --

    def _new_detector(self) -> None:
        turn = self.session.turn_detection
        self._user_item = None
        self._detector_origin_ms = self._audio_ms
        if turn is None:
            self._detector = None
            return
        rate = FORMATS[self.session.input_format][0]
        # threshold 0.5 (the default) -> the detector's -50 dBFS floor; 1.0 -> -40 dBFS
        floor = -60.0 + 20.0 * float(turn.get("threshold", 0.5))
        self._detector = SpeechDetector(
            rate, energy_floor_dbfs=floor, end_ms=int(turn.get("silence_duration_ms", 500))
        )

    async def _feed_vad(self, data: bytes) -> None:
        rate, decode, _ = FORMATS[self.session.input_format]
        pcm = decode(data)
        self._audio_ms += len(pcm) / 2 / rate * 1000
        turn = self.session.turn_detection
        if self._detector is None or turn is None:
            return
        for ev in self._detector.feed(pcm):
            at_ms = self._detector_origin_ms + ev.at_s * 1000
            if ev.kind == "speech_started":
                self._user_item = new_id("item")
                padding = turn.get("prefix_padding_ms", 300)
                await self.send({"type": "input_audio_buffer.speech_started",
                                 "audio_start_ms": int(max(0.0, at_ms - padding)), "item_id": self._user_item})
                active = self.active
                if active is not None and turn.get("interrupt_response", True) and not active.cancelled.is_set():
                    active.cancel_reason = "turn_detected"
                    active.cancelled.set()
            else:
                await self.send({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": int(at_ms),
                                 "item_id": self._user_item})
                await self._end_user_turn(committed_by_client=False)

    async def _end_user_turn(self, *, committed_by_client: bool) -> None:
        item_id = self._user_item or new_id("item")
        self._user_item = None
        if committed_by_client and self._detector is not None:
            self._detector.reset()
        await self.send({"type": "input_audio_buffer.committed", "previous_item_id": self.last_item_id,
                         "item_id": item_id})
        item = {"id": item_id, "object": "realtime.item", "type": "message", "role": "user",
                "status": "completed", "content": [{"type": "input_audio", "transcript": None}]}
        await self.send({"type": self._name("conversation.item.added", "conversation.item.created"),
                         "previous_item_id": self.last_item_id, "item": item})
        self.last_item_id = item_id
        self.functions.user_text = self.sim.user_transcript
        if self.session.transcription is not None:
            # whisper-1 reports usage as the duration of audio transcribed.
            await self.send({"type": "conversation.item.input_audio_transcription.completed",
                             "item_id": item_id, "content_index": 0, "transcript": self.sim.user_transcript,
                             "usage": {"type": "duration", "seconds": round(self._audio_ms / 1000, 3)}})
        turn = self.session.turn_detection
        if not committed_by_client and turn is not None and turn.get("create_response", True) and self.active is None:
            self._start_response()

    # -- responses --

    def _start_response(self) -> None:
        response = _Response(id=new_id("resp"), item_id=new_id("item"))
        self.active = response
        response.task = self._spawn(self._run_response(response))

    async def _run_response(self, resp: _Response) -> None:
        declared = [str(t.get("name")) for t in self.session.tools if isinstance(t, dict)]
        text, intent = self.functions.plan(declared, self.sim.reply_text)
        output: list[dict[str, Any]] = []
        try:
            await self.send({"type": "response.created",
                             "response": {"id": resp.id, "object": "realtime.response", "status": "in_progress",
                                          "output": []}})
            status, details = "completed", None
            if text:
                status, details = await self._speak(resp, text, output)
            if intent is not None and status == "completed":
                output.append(await self._call_function(resp, intent, len(output)))
            done = {"id": resp.id, "object": "realtime.response", "status": status, "status_details": details,
                    "output": output}
            self.responses_done.append(done)
            await self.send({"type": "response.done", "response": done})
        finally:
            if self.active is resp:
                self.active = None

    async def _call_function(self, resp: _Response, intent: Intent, output_index: int) -> dict[str, Any]:
        call_id = new_id("call")
        item_id = new_id("item")
        arguments = json.dumps(intent.arguments)
        item = {"id": item_id, "object": "realtime.item", "type": "function_call", "status": "in_progress",
                "name": intent.function, "call_id": call_id, "arguments": ""}
        await self.send({"type": "response.output_item.added", "response_id": resp.id,
                         "output_index": output_index, "item": dict(item)})
        await self.send({"type": "response.function_call_arguments.done", "response_id": resp.id,
                         "item_id": item_id, "output_index": output_index, "call_id": call_id,
                         "name": intent.function, "arguments": arguments})
        item.update(status="completed", arguments=arguments)
        await self.send({"type": "response.output_item.done", "response_id": resp.id,
                         "output_index": output_index, "item": dict(item)})
        self.last_item_id = item_id
        self.functions.pending = (call_id, intent)
        return item

    async def _speak(self, resp: _Response, text: str, output: list[dict[str, Any]]) -> tuple[str, Any]:
        names = {
            "delta": self._name("response.output_audio.delta", "response.audio.delta"),
            "done": self._name("response.output_audio.done", "response.audio.done"),
            "tdelta": self._name("response.output_audio_transcript.delta", "response.audio_transcript.delta"),
            "tdone": self._name("response.output_audio_transcript.done", "response.audio_transcript.done"),
        }
        base = {"response_id": resp.id, "item_id": resp.item_id, "output_index": 0, "content_index": 0}
        item = {"id": resp.item_id, "object": "realtime.item", "type": "message", "role": "assistant",
                "status": "in_progress", "content": []}
        await self.send({"type": "response.output_item.added", "response_id": resp.id, "output_index": 0,
                         "item": item})
        await self.send({"type": self._name("conversation.item.added", "conversation.item.created"),
                         "previous_item_id": self.last_item_id, "item": item})
        self.last_item_id = resp.item_id
        await self.send({"type": names["tdelta"], **base, "delta": text})
        rate, _, encode = FORMATS[self.session.output_format]
        audio = encode(await self.sim.speech(text, rate))
        bytes_per_ms = rate / 1000 * (2 if self.session.output_format == "pcm16" else 1)
        chunk = max(2, int(bytes_per_ms * self.sim.chunk_ms)) & ~1
        sent = 0
        self.item_audio_ms[resp.item_id] = 0.0
        for offset in range(0, len(audio), chunk):
            if resp.cancelled.is_set():
                break
            piece = audio[offset : offset + chunk]
            await self.send({"type": names["delta"], **base, "delta": base64.b64encode(piece).decode("ascii")})
            sent += len(piece)
            self.item_audio_ms[resp.item_id] = sent / bytes_per_ms
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(resp.cancelled.wait(), timeout=self.sim.delta_interval_s)
        if resp.cancelled.is_set():
            status = "cancelled"
            details: dict[str, Any] | None = {"type": "cancelled", "reason": resp.cancel_reason}
            item["status"] = "incomplete"
        else:
            status, details = "completed", None
            await self.send({"type": names["done"], **base})
            await self.send({"type": names["tdone"], **base, "transcript": text})
            item["status"] = "completed"
        item["content"] = [{"type": self._name("output_audio", "audio"), "transcript": text}]
        await self.send({"type": "response.output_item.done", "response_id": resp.id, "output_index": 0,
                         "item": item})
        output.append(item)
        return status, details


class OpenAIRealtimeSimulator:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        api_key: str | None = None,
        user_transcript: str = "I would like to check the status of my order.",
        reply_text: str = "Sure, I can help you with your order. Could you tell me the order number, please?",
        close_after_s: float | None = None,
        close_mode: str = "close",
        chunk_ms: int = 100,
        delta_interval_s: float = 0.02,
        path: str = "/v1/realtime",
        force_shape: str | None = None,
    ) -> None:
        if force_shape not in (None, "ga", "beta"):
            raise ValueError("force_shape must be None, 'ga' or 'beta'")
        if close_mode not in ("close", "abort"):
            raise ValueError("close_mode must be 'close' or 'abort'")
        self.host = host
        self.port = port
        self.api_key = api_key
        self.user_transcript = user_transcript
        self.reply_text = reply_text
        self.close_after_s = close_after_s
        self.close_mode = close_mode
        self.chunk_ms = chunk_ms
        self.delta_interval_s = delta_interval_s
        self.path = path
        # Speak one shape whatever the headers say (a service that dropped beta, say).
        self.force_shape = force_shape
        self.connections: list[SimConnection] = []
        self.rejected: list[dict[str, Any]] = []  # refused upgrades (status, reason)
        self._runner: web.AppRunner | None = None
        self._speech_cache: dict[tuple[str, int], bytes] = {}

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}{self.path}"

    # aggregated views for tests
    @property
    def truncates(self) -> list[dict[str, Any]]:
        return [t for c in self.connections for t in c.truncates]

    @property
    def cancels(self) -> list[dict[str, Any]]:
        return [t for c in self.connections for t in c.cancels]

    async def speech(self, text: str, sample_rate: int) -> bytes:
        key = (text, sample_rate)
        if key not in self._speech_cache:
            self._speech_cache[key] = await synthesize_async(text, sample_rate)
        return self._speech_cache[key]

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(self.path, self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        for address in self._runner.addresses:  # the bound port when port=0
            if isinstance(address, tuple) and len(address) >= 2:
                self.port = int(address[1])
                break

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _refuse(self, status: int, code: str, message: str) -> web.Response:
        self.rejected.append({"status": status, "code": code, "message": message})
        body = {"error": {"type": "invalid_request_error", "code": code, "message": message, "param": None}}
        return web.json_response(body, status=status)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.startswith("Bearer ") else ""
        if not token:
            return self._refuse(401, "missing_api_key",
                                "You didn't provide an API key. Provide it in an Authorization header (Bearer).")
        if self.api_key is not None and token != self.api_key:
            return self._refuse(401, "invalid_api_key", "Incorrect API key provided.")
        model = request.query.get("model")
        if not model:
            return self._refuse(400, "missing_model", "Missing required query parameter: 'model'.")
        shape = self.force_shape or (
            "beta" if request.headers.get("OpenAI-Beta", "").startswith("realtime") else "ga"
        )
        ws = web.WebSocketResponse(max_msg_size=32 * 1024 * 1024)
        await ws.prepare(request)
        conn = SimConnection(self, ws, shape, model)
        self.connections.append(conn)
        try:
            await conn.run(request)
        finally:
            if not ws.closed:
                await ws.close()
        return ws


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Local OpenAI Realtime API simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--api-key", default=None, help="require exactly this Bearer token (default: any)")
    parser.add_argument("--reply", default=None, help="what the simulated agent says each turn")
    parser.add_argument("--transcript", default=None, help="the caller transcript it reports")
    parser.add_argument("--close-after", type=float, default=None, help="drop each connection after N seconds")
    parser.add_argument("--shape", choices=("ga", "beta"), default=None,
                        help="speak only this shape (default: beta if the OpenAI-Beta header is sent, else GA)")
    args = parser.parse_args(argv)

    kwargs: dict[str, Any] = {"api_key": args.api_key, "close_after_s": args.close_after,
                              "force_shape": args.shape}
    if args.reply:
        kwargs["reply_text"] = args.reply
    if args.transcript:
        kwargs["user_transcript"] = args.transcript

    async def serve() -> None:
        sim = OpenAIRealtimeSimulator(args.host, args.port, **kwargs)
        await sim.start()
        print(f"OpenAI Realtime simulator listening on {sim.url}", flush=True)
        try:
            while True:
                await asyncio.sleep(3600)
        finally:
            await sim.stop()

    started = time.monotonic()
    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        print(f"stopped after {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
