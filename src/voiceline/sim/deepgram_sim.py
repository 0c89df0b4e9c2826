"""A local stand-in for the Deepgram Voice Agent API v1, for tests and benchmarks.

It speaks the real wire protocol so ``DeepgramSession`` talks to it unchanged:
``Authorization: Token <key>`` (401 without), ``Welcome``, a strictly validated
``Settings`` -> ``SettingsApplied``, binary audio both ways. It has no STT and no LLM:
it detects the caller's speech with ``SpeechDetector`` (``UserStartedSpeaking`` at
onset, barge-in on agent audio like the real service) and at the end of an utterance
answers with a fixed transcript and real espeak-ng speech of ``answer_text``.

Agent audio is delivered in one of several patterns (``steady``, ``burst``, ``jitter``,
``stall``, ``tiny``, ``odd``) so the engine's playout path can be tested against the
ways a real provider's network delivery differs; every pattern delivers exactly the
same bytes in the same order. Per-connection overrides come from URL query parameters
(``?pattern=jitter&speed=2``), so one server serves many differently behaving calls.

Run standalone: ``python -m voiceline.sim.deepgram_sim --port 8765 --pattern jitter``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import random
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import structlog
from aiohttp import WSMsgType, web

from voiceline.sim.speech import (
    SpeechDetector,
    decode_to_pcm,
    encode_pcm,
    silence,
    synthesize_async,
)

log = structlog.get_logger("voiceline.sim.deepgram")

PATH = "/v1/agent/converse"
PATTERNS = ("steady", "burst", "jitter", "stall", "tiny", "odd")
DEFAULT_ANSWER = "Thanks for calling. This is the simulated agent. How can I help you today?"
DEFAULT_TRANSCRIPT = "(caller spoke {seconds:.1f} s)"

# What the real service accepts; the simulator can produce/consume only SIM_ENCODINGS.
INPUT_ENCODINGS = ("linear16", "linear32", "flac", "alaw", "mulaw", "amr-nb", "amr-wb", "opus", "ogg-opus", "speex", "g729")
OUTPUT_ENCODINGS = ("linear16", "mulaw", "alaw", "mp3", "opus", "flac", "aac")
SIM_ENCODINGS = ("linear16", "mulaw", "alaw")
_BYTES_PER_SAMPLE = {"linear16": 2, "mulaw": 1, "alaw": 1}
MAX_RECORDED_AUDIO = 16 * 1024 * 1024


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


# ---- delivery patterns -------------------------------------------------------------------


def delivery_plan(
    total: int,
    pattern: str,
    *,
    bytes_per_sample: int,
    sample_rate: int,
    speed: float = 1.2,
    stall_s: float = 3.0,
    rng: random.Random | None = None,
) -> list[tuple[int, float]]:
    """How to send ``total`` bytes: (chunk size, send time in seconds from the start).

    Sizes always sum to ``total``. Send times follow real time divided by ``speed``
    (``burst`` sends everything at once).
    """
    if pattern not in PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r}; one of {PATTERNS}")
    if speed <= 0:
        raise ValueError("speed must be positive")
    rng = rng or random.Random(0)
    bytes_per_s = sample_rate * bytes_per_sample

    def ms_bytes(ms: float) -> int:
        return max(bytes_per_sample, int(sample_rate * ms / 1000) * bytes_per_sample)

    def at(offset: int) -> float:
        return offset / bytes_per_s / speed

    plan: list[tuple[int, float]] = []
    offset = 0
    last_at = 0.0
    stalled = False
    while offset < total:
        if pattern in ("steady", "stall"):
            size = ms_bytes(20)
        elif pattern == "burst":
            size = ms_bytes(1000)
        elif pattern == "jitter":
            size = ms_bytes(rng.uniform(10, 200))
        elif pattern == "tiny":
            size = rng.randint(1, 7)
        else:  # odd
            size = rng.randrange(33, 1000, 2)
        size = min(size, total - offset)
        if pattern == "burst":
            when = 0.0
        elif pattern == "jitter":
            # Each chunk goes out up to 120 ms early, never late: average >= speed.
            when = max(last_at, at(offset) - rng.uniform(0.0, 0.12))
        else:
            when = at(offset)
        if pattern == "stall":
            if not stalled and offset >= total // 2 and offset > 0:
                stalled = True
            if stalled:
                when += stall_s
        plan.append((size, max(0.0, when)))
        last_at = when
        offset += size
    return plan


# ---- per-connection state ----------------------------------------------------------------


@dataclass
class SimOptions:
    pattern: str = "steady"
    speed: float = 1.2
    stall_s: float = 3.0
    seed: int = 0
    answer_text: str = DEFAULT_ANSWER
    greeting: str | None = None  # None: use Settings' agent.greeting; "": no greeting
    long_answer_s: float | None = None
    close_after_s: float | None = None
    error_on_settings: str | None = None
    settings_delay_s: float = 0.0
    think_delay_s: float = 0.15
    call_function: str | None = None
    transcript: str = DEFAULT_TRANSCRIPT
    voice: str = "en-us"

    def validate(self) -> None:
        if self.pattern not in PATTERNS:
            raise ValueError(f"unknown pattern {self.pattern!r}; one of {', '.join(PATTERNS)}")
        if self.speed <= 0:
            raise ValueError("speed must be positive")
        for name in ("stall_s", "settings_delay_s", "think_delay_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")


_QUERY_TYPES: dict[str, Any] = {
    "pattern": str,
    "speed": float,
    "stall_s": float,
    "seed": int,
    "answer_text": str,
    "greeting": str,
    "long_answer_s": float,
    "close_after_s": float,
    "error_on_settings": str,
    "settings_delay_s": float,
    "think_delay_s": float,
    "call_function": str,
    "transcript": str,
    "voice": str,
}


@dataclass
class AgentTurn:
    text: str
    kind: str  # "greeting" | "answer" | "injected"
    audio_bytes: int = 0  # bytes of the whole turn's audio
    bytes_sent: int = 0
    completed: bool = False
    barged_in: bool = False


@dataclass
class SimSession:
    id: str
    options: SimOptions
    received_messages: list[dict[str, Any]] = field(default_factory=list)
    sent_messages: list[dict[str, Any]] = field(default_factory=list)
    audio_bytes_received: int = 0
    # The caller audio itself, in arrival order (capped at MAX_RECORDED_AUDIO bytes).
    audio_in: bytearray = field(default_factory=bytearray, repr=False)
    audio_bytes_before_settings: int = 0
    agent_audio_bytes_sent: int = 0
    settings: dict[str, Any] | None = None
    applied: bool = False
    turns: list[AgentTurn] = field(default_factory=list)
    utterances: list[float] = field(default_factory=list)  # durations (s)
    errors_sent: list[str] = field(default_factory=list)
    closed: bool = False
    close_code: int | None = None
    input_encoding: str = "linear16"
    input_rate: int = 24000
    output_encoding: str = "linear16"
    output_rate: int = 24000
    # runtime (not for comparison)
    ws: web.WebSocketResponse | None = field(default=None, repr=False)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    detector: SpeechDetector | None = field(default=None, repr=False)
    agent_task: asyncio.Task[None] | None = field(default=None, repr=False)
    speaking: bool = False
    function_results: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict, repr=False)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set, repr=False)

    def message_types(self) -> list[str]:
        return [str(m.get("type")) for m in self.received_messages]


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
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(sess.ws.close(code=1001, message=b"simulator stopping"), 1.0)
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
            if key not in _QUERY_TYPES:
                raise ValueError(f"unknown query parameter {key!r}")
            setattr(opts, key, _QUERY_TYPES[key](value))
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
        sess = SimSession(id=str(uuid.uuid4()), options=opts, ws=ws)
        self.sessions.append(sess)
        slog = log.bind(sim_session=sess.id[:8], pattern=opts.pattern)
        slog.info("sim connection")
        try:
            await self._send(sess, {"type": "Welcome", "request_id": sess.id})
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await self._on_text(sess, msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await self._on_audio(sess, msg.data)
                elif msg.type == WSMsgType.ERROR:
                    slog.info("sim connection error", error=str(ws.exception()))
                    break
        except ConnectionError:
            pass
        finally:
            sess.closed = True
            sess.close_code = ws.close_code
            for task in list(sess.tasks):
                task.cancel()
            for task in list(sess.tasks):
                with contextlib.suppress(BaseException):
                    await task
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
        if opts.call_function and self._declares_function(sess, opts.call_function):
            call_id = f"call_{uuid.uuid4().hex[:12]}"
            fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            sess.function_results[call_id] = fut
            args = {"caller_seconds": round(caller_seconds or 0.0, 2), "utterance": user_text}
            await self._send(
                sess,
                {
                    "type": "FunctionCallRequest",
                    "functions": [
                        {"id": call_id, "name": opts.call_function, "arguments": json.dumps(args), "client_side": True}
                    ],
                },
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fut, timeout=10.0)
        await asyncio.sleep(opts.think_delay_s)
        ttt = time.monotonic() - started
        await self._agent_turn(sess, opts.answer_text, kind="answer", ttt=ttt)

    @staticmethod
    def _declares_function(sess: SimSession, name: str) -> bool:
        think = (sess.settings or {}).get("agent", {}).get("think", {})
        thinks = think if isinstance(think, list) else [think]
        return any(fn.get("name") == name for t in thinks for fn in t.get("functions", []) or [])

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
        sess.speaking = False
        turn.completed = True
        await self._send(sess, {"type": "AgentAudioDone"})


# ---- CLI ---------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="voiceline-sim-deepgram",
        description="Local Deepgram Voice Agent v1 simulator (no STT/LLM; espeak-ng answers).",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--pattern", choices=PATTERNS, default="steady", help="agent audio delivery pattern")
    p.add_argument("--speed", type=float, default=1.2, help="delivery speed relative to real time")
    p.add_argument("--stall-s", type=float, default=3.0, help="stall length for --pattern stall")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--answer-text", default=DEFAULT_ANSWER)
    p.add_argument("--greeting", default=None, help="override the Settings greeting ('' for none)")
    p.add_argument("--long-answer-s", type=float, default=None, help="repeat answers to at least this long")
    p.add_argument("--close-after-s", type=float, default=None, help="close each call with 1011 after this long")
    p.add_argument("--error-on-settings", default=None, help="reject Settings with this description")
    p.add_argument("--settings-delay-s", type=float, default=0.0)
    p.add_argument("--think-delay-s", type=float, default=0.15)
    p.add_argument("--call-function", default=None, help="request this (declared) function before answering")
    return p


async def _serve(args: argparse.Namespace) -> None:
    sim = DeepgramSimulator(
        pattern=args.pattern,
        speed=args.speed,
        stall_s=args.stall_s,
        seed=args.seed,
        answer_text=args.answer_text,
        greeting=args.greeting,
        long_answer_s=args.long_answer_s,
        close_after_s=args.close_after_s,
        error_on_settings=args.error_on_settings,
        settings_delay_s=args.settings_delay_s,
        think_delay_s=args.think_delay_s,
        call_function=args.call_function,
    )
    url = await sim.start(args.host, args.port)
    print(f"deepgram simulator on {url} (pattern {args.pattern}); any 'Authorization: Token <x>' accepted", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await sim.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
