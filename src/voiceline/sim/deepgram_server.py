"""The simulated Deepgram Voice Agent v1 server: per-connection state and protocol.

It speaks the real wire protocol so ``DeepgramSession`` talks to it unchanged:
``Authorization: Token <key>`` (401 without), ``Welcome``, a strictly validated
``Settings`` (``deepgram_schema``) -> ``SettingsApplied``, binary audio both ways. It has
no STT and no LLM: it detects the caller's speech with ``SpeechDetector``
(``UserStartedSpeaking`` at onset, barge-in on agent audio like the real service) and at
the end of an utterance answers with a fixed transcript and real espeak-ng speech of
``answer_text``, delivered by a ``delivery_plan`` (``deepgram_delivery``). Per-connection
overrides come from URL query parameters (``?pattern=jitter&speed=2&fault=error``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
import uuid
from collections.abc import Sequence
from typing import Any, Self

import structlog
from aiohttp import WSMsgType, web

from voiceline.sim.deepgram_delivery import (
    CLOSE_MID_TURN_AFTER_S,
    MALFORMED_AUDIO_DONE,
    delivery_plan,
)
from voiceline.sim.deepgram_schema import SIM_ENCODINGS, validate_settings
from voiceline.sim.deepgram_state import (
    DEFAULT_ANSWER,
    DEFAULT_TRANSCRIPT,
    QUERY_TYPES,
    AgentTurn,
    SimOptions,
    SimSession,
)
from voiceline.sim.sim_intents import Intent, choose_intent, keypress_reply, reply_after
from voiceline.sim.speech import (
    SpeechDetector,
    decode_to_pcm,
    encode_pcm,
    silence,
    synthesize_async,
)

log = structlog.get_logger("voiceline.sim.deepgram")

PATH = "/v1/agent/converse"
_BYTES_PER_SAMPLE = {"linear16": 2, "mulaw": 1, "alaw": 1}
MAX_RECORDED_AUDIO = 16 * 1024 * 1024
# How long the simulated model waits for a FunctionCallResponse (the engine's own
# timeout is shorter: it always answers).
FUNCTION_RESULT_WAIT_S = 30.0


class DeepgramSimulator:
    """aiohttp websocket server speaking the Deepgram Voice Agent v1 protocol."""

    def __init__(
        self,
        *,
        pattern: str = "steady",
        speed: float = 1.2,
        stall_s: float = 3.0,
        seed: int = 0,
        answer_text: str = DEFAULT_ANSWER,
        greeting: str | None = None,
        long_answer_s: float | None = None,
        close_after_s: float | None = None,
        error_on_settings: str | bool | None = None,
        settings_delay_s: float = 0.0,
        think_delay_s: float = 0.15,
        call_function: str | None = None,
        transcript: str = DEFAULT_TRANSCRIPT,
        voice: str = "en-us",
        fault: str | None = None,
        api_keys: Sequence[str] | None = None,
    ) -> None:
        if error_on_settings is True:
            error_on_settings = "Simulated error: settings rejected"
        self.defaults = SimOptions(
            pattern=pattern,
            speed=speed,
            stall_s=stall_s,
            seed=seed,
            answer_text=answer_text,
            greeting=greeting,
            long_answer_s=long_answer_s,
            close_after_s=close_after_s,
            error_on_settings=error_on_settings or None,
            settings_delay_s=settings_delay_s,
            think_delay_s=think_delay_s,
            call_function=call_function,
            transcript=transcript,
            voice=voice,
            fault=fault,
        )
        self.defaults.validate()
        self.api_keys = set(api_keys) if api_keys is not None else None
        self.sessions: list[SimSession] = []
        self._runner: web.AppRunner | None = None
        self._host = "127.0.0.1"
        self._port = 0

    # ---- server lifecycle -------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application()
        app.router.add_get(PATH, self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self._host, self._port = host, self._runner.addresses[0][1]
        log.info("deepgram simulator listening", url=self.url, pattern=self.defaults.pattern)
        return self.url

    async def stop(self) -> None:
        for sess in self.sessions:
            for task in list(sess.tasks):
                task.cancel()
            if sess.ws is not None and not sess.ws.closed:
                try:
                    await asyncio.wait_for(sess.ws.close(code=1001, message=b"simulator stopping"), 1.0)
                except (TimeoutError, ConnectionError, OSError) as exc:
                    log.debug("sim close on stop failed", error=repr(exc))
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"ws://{self._host}:{self._port}{PATH}"

    @property
    def received_messages(self) -> list[dict[str, Any]]:
        return [m for s in self.sessions for m in s.received_messages]

    @property
    def audio_bytes_received(self) -> int:
        return sum(s.audio_bytes_received for s in self.sessions)

    # ---- connection -------------------------------------------------------------------

    def _options_for(self, request: web.Request) -> SimOptions:
        opts = dataclasses.replace(self.defaults)
        for key, value in request.query.items():
            if key not in QUERY_TYPES:
                raise ValueError(f"unknown query parameter {key!r}")
            setattr(opts, key, QUERY_TYPES[key](value))
        opts.validate()
        return opts

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() not in ("token", "bearer") or not token.strip():
            return web.json_response(
                {"err_code": "INVALID_AUTH", "err_msg": "Invalid credentials: missing 'Authorization: Token <key>'"},
                status=401,
            )
        if self.api_keys is not None and token.strip() not in self.api_keys:
            return web.json_response({"err_code": "INVALID_AUTH", "err_msg": "Invalid credentials."}, status=401)
        try:
            opts = self._options_for(request)
        except (ValueError, TypeError) as exc:
            return web.json_response({"err_code": "BAD_REQUEST", "err_msg": str(exc)}, status=400)

        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        sess = SimSession(id=str(uuid.uuid4()), options=opts, ws=ws, transport=request.transport)
        self.sessions.append(sess)
        slog = log.bind(sim_session=sess.id[:8], pattern=opts.pattern, fault=opts.fault)
        slog.info("sim connection")
        try:
            if opts.fault == "no-welcome":
                slog.info("sim fault: Welcome withheld")
            else:
                await self._send(sess, {"type": "Welcome", "request_id": sess.id})
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await self._on_text(sess, msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await self._on_audio(sess, msg.data)
                elif msg.type == WSMsgType.ERROR:
                    slog.info("sim connection error", error=str(ws.exception()))
                    break
        except ConnectionError as exc:
            slog.info("sim connection lost", error=repr(exc))
        finally:
            sess.closed = True
            sess.close_code = ws.close_code
            tasks = list(sess.tasks)
            for task in tasks:
                task.cancel()
            if tasks:
                # _guard logs every failure, so the tasks end with nothing to report.
                await asyncio.wait(tasks)
            slog.info(
                "sim connection closed",
                code=ws.close_code,
                audio_in=sess.audio_bytes_received,
                audio_out=sess.agent_audio_bytes_sent,
            )
        return ws

    def _spawn(self, sess: SimSession, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(self._guard(coro, name), name=name)
        sess.tasks.add(task)
        task.add_done_callback(sess.tasks.discard)
        return task

    @staticmethod
    async def _guard(coro: Any, name: str) -> None:
        try:
            await coro
        except ConnectionError:  # the client went away mid-turn
            log.debug("sim task ended: connection gone", task=name)
        except Exception:
            log.exception("sim task failed", task=name)

    async def _send(self, sess: SimSession, message: dict[str, Any]) -> None:
        ws = sess.ws
        if ws is None or ws.closed:
            return
        async with sess.lock:
            await ws.send_str(json.dumps(message))
        sess.sent_messages.append(message)

    async def _send_raw(self, sess: SimSession, text: str) -> None:
        """Text that is not a well-formed message (fault injection); kept in sent_raw."""
        ws = sess.ws
        if ws is None or ws.closed:
            return
        async with sess.lock:
            await ws.send_str(text)
        sess.sent_raw.append(text)

    async def _send_audio(self, sess: SimSession, data: bytes) -> bool:
        ws = sess.ws
        if ws is None or ws.closed:
            return False
        async with sess.lock:
            await ws.send_bytes(data)
        sess.agent_audio_bytes_sent += len(data)
        return True

    async def _error(self, sess: SimSession, description: str, code: str) -> None:
        sess.errors_sent.append(description)
        await self._send(sess, {"type": "Error", "description": description, "code": code})

    # ---- client messages --------------------------------------------------------------

    async def _on_text(self, sess: SimSession, raw: str) -> None:
        try:
            msg = json.loads(raw)
        except ValueError:
            await self._error(sess, "Failed to parse client message as JSON", "UNPARSABLE_CLIENT_MESSAGE")
            return
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            await self._error(sess, "Client message must be an object with a 'type'", "UNPARSABLE_CLIENT_MESSAGE")
            return
        sess.received_messages.append(msg)
        kind = msg["type"]
        if kind == "KeepAlive":
            return
        if kind == "Settings":
            await self._on_settings(sess, msg)
            return
        if not sess.applied:
            await self._error(sess, f"Received {kind} before Settings; Settings must be sent first", "SETTINGS_REQUIRED")
            return
        if kind == "UpdatePrompt":
            if not isinstance(msg.get("prompt"), str) or set(msg) - {"type", "prompt"}:
                await self._error(sess, "UpdatePrompt needs exactly a string 'prompt'", "INVALID_MESSAGE")
            else:
                await self._send(sess, {"type": "PromptUpdated"})
        elif kind == "UpdateSpeak":
            if not isinstance(msg.get("speak"), (dict, list)):
                await self._error(sess, "UpdateSpeak needs a 'speak' object", "INVALID_MESSAGE")
            else:
                await self._send(sess, {"type": "SpeakUpdated"})
        elif kind == "InjectAgentMessage":
            text = msg.get("message")
            if not isinstance(text, str) or not text:
                await self._error(sess, "InjectAgentMessage needs a string 'message'", "INVALID_MESSAGE")
            elif sess.speaking or (sess.detector is not None and sess.detector.in_speech):
                await self._send(sess, {"type": "InjectionRefused", "message": "Agent or user is speaking"})
            else:
                self._start_turn(sess, self._agent_turn(sess, text, kind="injected"))
        elif kind == "InjectUserMessage":
            content = msg.get("content")
            if not isinstance(content, str) or not content:
                await self._error(sess, "InjectUserMessage needs a string 'content'", "INVALID_MESSAGE")
            else:
                self._start_turn(sess, self._answer(sess, content))
        elif kind == "FunctionCallResponse":
            call_id = msg.get("id")
            fut = sess.function_results.get(str(call_id))
            if not isinstance(msg.get("name"), str) or not isinstance(msg.get("content"), str):
                await self._error(sess, "FunctionCallResponse needs string 'name' and 'content'", "INVALID_MESSAGE")
            elif fut is not None and not fut.done():
                fut.set_result(msg)
        else:
            await self._error(sess, f"Unknown message type '{kind}'", "UNPARSABLE_CLIENT_MESSAGE")

    async def _on_settings(self, sess: SimSession, msg: dict[str, Any]) -> None:
        opts = sess.options
        if sess.applied:
            await self._error(sess, "Settings already applied; use the Update* messages", "SETTINGS_ALREADY_APPLIED")
            return
        problem = validate_settings(msg)
        if problem is None and opts.error_on_settings:
            problem = opts.error_on_settings
        if problem is None:
            problem = self._unsupported(msg)
        if problem is not None:
            log.info("sim rejected settings", description=problem)
            await self._error(sess, problem, "INVALID_SETTINGS")
            if sess.ws is not None:
                await sess.ws.close(code=1008, message=b"invalid settings")
            return
        audio = msg["audio"]
        inp = audio.get("input", {"encoding": "linear16", "sample_rate": 24000})
        out = audio.get("output", {})
        sess.input_encoding, sess.input_rate = inp["encoding"], inp["sample_rate"]
        sess.output_encoding = out.get("encoding", "linear16")
        sess.output_rate = out.get("sample_rate", 24000)
        sess.detector = SpeechDetector(sess.input_rate)
        sess.settings = msg
        if opts.settings_delay_s:
            await asyncio.sleep(opts.settings_delay_s)
        sess.applied = True
        await self._send(sess, {"type": "SettingsApplied"})
        if opts.close_after_s is not None:
            self._spawn(sess, self._close_later(sess, opts.close_after_s), "sim-close-after")
        greeting = opts.greeting if opts.greeting is not None else msg["agent"].get("greeting")
        if greeting:
            self._start_turn(sess, self._agent_turn(sess, greeting, kind="greeting"))
        elif opts.fault == "error":
            await self._fault_error(sess)

    async def _fault_error(self, sess: SimSession) -> None:
        if sess.fault_acted:
            return
        sess.fault_acted = True
        description = "Simulated fault: the think provider failed for this turn"
        sess.errors_sent.append(description)
        # The undocumented shape real traffic also has: `message`, not `description`.
        await self._send(sess, {"type": "Error", "message": description, "code": "SIMULATED_FAULT"})

    async def _fault_close_mid_turn(self, sess: SimSession) -> None:
        await asyncio.sleep(CLOSE_MID_TURN_AFTER_S)
        log.info("sim fault: dropping the connection mid-turn", after_s=CLOSE_MID_TURN_AFTER_S)
        if sess.transport is not None:
            sess.transport.abort()  # no close frame: the network went away

    @staticmethod
    def _unsupported(msg: dict[str, Any]) -> str | None:
        audio = msg["audio"]
        enc_in = audio.get("input", {}).get("encoding", "linear16")
        enc_out = audio.get("output", {}).get("encoding", "linear16")
        for which, enc in (("input", enc_in), ("output", enc_out)):
            if enc not in SIM_ENCODINGS:
                return f"Simulator limitation: audio.{which}.encoding {enc!r} is not one of {list(SIM_ENCODINGS)}"
        container = audio.get("output", {}).get("container", "none")
        if container != "none":
            return f"Simulator limitation: audio.output.container {container!r} (only 'none')"
        return None

    async def _close_later(self, sess: SimSession, delay: float) -> None:
        await asyncio.sleep(delay)
        if sess.ws is not None and not sess.ws.closed:
            log.info("sim closing connection on purpose", after_s=delay)
            await sess.ws.close(code=1011, message=b"simulated provider failure")

    # ---- caller audio -----------------------------------------------------------------

    async def _on_audio(self, sess: SimSession, data: bytes) -> None:
        if not sess.applied:
            sess.audio_bytes_before_settings += len(data)
            await self._error(sess, "Received binary audio before Settings", "BINARY_BEFORE_SETTINGS")
            return
        sess.audio_bytes_received += len(data)
        if len(sess.audio_in) + len(data) <= MAX_RECORDED_AUDIO:
            sess.audio_in += data
        assert sess.detector is not None
        for event in sess.detector.feed(decode_to_pcm(data, sess.input_encoding)):
            if event.kind == "speech_started":
                await self._send(sess, {"type": "UserStartedSpeaking"})
                self._cancel_turn(sess, barge_in=True)
            else:
                sess.utterances.append(event.duration_s)
                text = sess.options.transcript.format(seconds=event.duration_s)
                self._start_turn(sess, self._answer(sess, text, caller_seconds=event.duration_s))

    # ---- agent turns ------------------------------------------------------------------

    def _start_turn(self, sess: SimSession, coro: Any) -> None:
        self._cancel_turn(sess, barge_in=False)
        sess.agent_task = self._spawn(sess, coro, "sim-agent-turn")

    def _cancel_turn(self, sess: SimSession, *, barge_in: bool) -> None:
        task = sess.agent_task
        if task is not None and not task.done():
            task.cancel()
            if barge_in and sess.turns and not sess.turns[-1].completed and sess.speaking:
                sess.turns[-1].barged_in = True
        sess.speaking = False

    async def _answer(self, sess: SimSession, user_text: str, caller_seconds: float | None = None) -> None:
        opts = sess.options
        await self._send(sess, {"type": "ConversationText", "role": "user", "content": user_text})
        await self._send(sess, {"type": "AgentThinking", "content": f"Responding to: {user_text}"})
        started = time.monotonic()
        intent = choose_intent(user_text, self._declared_functions(sess))
        if intent is not None:
            await self._function_turn(sess, intent)
            return
        if opts.call_function and self._declares_function(sess, opts.call_function):
            args = {"caller_seconds": round(caller_seconds or 0.0, 2), "utterance": user_text}
            _, response = await self._request_function(sess, opts.call_function, args, timeout_s=10.0)
            if response is None:
                log.info("sim function result not received in 10 s; answering anyway", name=opts.call_function)
        await asyncio.sleep(opts.think_delay_s)
        ttt = time.monotonic() - started
        answer = keypress_reply(user_text) or opts.answer_text
        await self._agent_turn(sess, answer, kind="answer", ttt=ttt)

    async def _function_turn(self, sess: SimSession, intent: Intent) -> None:
        """The "model" calls a declared function (sim_intents): its line first, then the
        request; once answered, what it says about the result (an apology for an error)."""
        await asyncio.sleep(sess.options.think_delay_s)
        if intent.say_before:
            await self._agent_turn(sess, intent.say_before, kind="answer")
        call_id, response = await self._request_function(
            sess, intent.function, intent.arguments, timeout_s=FUNCTION_RESULT_WAIT_S
        )
        if response is None:
            log.info("sim function result not received; the turn ends", name=intent.function)
            sess.function_calls.append({"name": intent.function, "id": call_id, "content": None})
            return
        sess.function_calls.append({"name": intent.function, "id": call_id, "content": response["content"]})
        reply = reply_after(intent, response["content"])
        if reply:
            await self._agent_turn(sess, reply, kind="answer")

    async def _request_function(
        self, sess: SimSession, name: str, arguments: dict[str, Any], *, timeout_s: float
    ) -> tuple[str, dict[str, Any] | None]:
        """Send a client-side ``FunctionCallRequest`` and wait up to ``timeout_s`` for its
        ``FunctionCallResponse``: (the request's id, the response, None if none came)."""
        call_id = f"call_{uuid.uuid4().hex[:12]}"
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        sess.function_results[call_id] = fut
        await self._send(sess, {"type": "FunctionCallRequest", "functions": [
            {"id": call_id, "name": name, "arguments": json.dumps(arguments), "client_side": True}
        ]})
        try:
            return call_id, await asyncio.wait_for(fut, timeout=timeout_s)
        except TimeoutError:
            return call_id, None

    @staticmethod
    def _declared_functions(sess: SimSession) -> list[str]:
        think = (sess.settings or {}).get("agent", {}).get("think", {})
        thinks = think if isinstance(think, list) else [think]
        return [str(fn.get("name")) for t in thinks for fn in t.get("functions", []) or []]

    @classmethod
    def _declares_function(cls, sess: SimSession, name: str) -> bool:
        return name in cls._declared_functions(sess)

    async def _render(self, sess: SimSession, text: str) -> bytes:
        opts = sess.options
        pcm = await synthesize_async(text, sess.output_rate, opts.voice)
        if opts.long_answer_s:
            gap = silence(300, sess.output_rate)
            unit = pcm
            min_bytes = int(opts.long_answer_s * sess.output_rate) * 2
            while len(pcm) < min_bytes:
                pcm += gap + unit
        return encode_pcm(pcm, sess.output_encoding)

    async def _agent_turn(self, sess: SimSession, text: str, *, kind: str, ttt: float = 0.0) -> None:
        opts = sess.options
        t0 = time.monotonic()
        audio = await self._render(sess, text)
        tts = time.monotonic() - t0
        turn = AgentTurn(text=text, kind=kind, audio_bytes=len(audio))
        sess.turns.append(turn)
        await self._send(sess, {"type": "ConversationText", "role": "assistant", "content": text})
        await self._send(
            sess,
            {
                "type": "AgentStartedSpeaking",
                "total_latency": round(ttt + tts, 4),
                "tts_latency": round(tts, 4),
                "ttt_latency": round(ttt, 4),
            },
        )
        sess.speaking = True
        drop_mid_turn = opts.fault == "close-mid-turn" and kind == "answer" and not sess.fault_acted
        if drop_mid_turn:
            sess.fault_acted = True
            self._spawn(sess, self._fault_close_mid_turn(sess), "sim-fault-close")
        plan = delivery_plan(
            len(audio),
            opts.pattern,
            bytes_per_sample=_BYTES_PER_SAMPLE[sess.output_encoding],
            sample_rate=sess.output_rate,
            speed=opts.speed,
            stall_s=opts.stall_s,
            rng=random.Random(opts.seed),
        )
        loop = asyncio.get_running_loop()
        start = loop.time()
        offset = 0
        for size, when in plan:
            delay = start + when - loop.time()
            if delay > 0.001:
                await asyncio.sleep(delay)
            if not await self._send_audio(sess, audio[offset : offset + size]):
                return
            offset += size
            turn.bytes_sent = offset
        if drop_mid_turn:
            return  # the connection drops before this turn is done, whatever the delivery speed
        sess.speaking = False
        turn.completed = True
        if opts.fault == "malformed-json":
            await self._send_raw(sess, MALFORMED_AUDIO_DONE)
        else:
            await self._send(sess, {"type": "AgentAudioDone"})
        if opts.fault == "error" and kind == "greeting":
            await self._fault_error(sess)
