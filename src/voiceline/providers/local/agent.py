"""The local offline voice agent: VAD → pocketsphinx → scripted/LLM reply → espeak-ng.

No API key and no network (unless ``llm.kind`` is ``openai_compatible``, which
talks to a server of your choice, typically on the same machine).

Per call, ``LocalAgentSession``:

* greets the caller on ``start()`` (``greeting``; ``None`` = wait for the caller);
* runs every 20 ms caller frame through the end-of-utterance detector; a
  confirmed onset emits ``UserStartedSpeaking`` (the engine stops agent playback)
  and cancels any reply in progress (barge-in); audio is decoded by pocketsphinx
  on the session's worker thread while the caller speaks;
* when the caller has been silent for ``end_of_utterance_ms``, takes the final
  transcript (``Transcript(user)``), asks the reply generator for sentences and
  turns each into speech as soon as it is complete, so the first sentence plays
  while later ones are still being generated: ``AgentStartedSpeaking``,
  ``AgentAudio`` chunks of ``chunk_ms``, ``AgentAudioDone``, ``Transcript(assistant)``;
* handles one turn at a time: a new turn, ``interrupt()`` or caller speech cancels
  the current one, after which it emits no further audio (and no
  ``AgentAudioDone``: the interruption already ended the turn);
* turns failures into ``ProviderError`` (``llm_error`` is followed by a spoken
  apology; ``stt_error``/``tts_error``/``internal`` end the turn) and keeps going.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any
from dataclasses import dataclass

import structlog

from voiceline.audio.formats import AudioFormat
from voiceline.config import LocalProviderSettings
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
    ProviderSession,
    Transcript,
    UserStartedSpeaking,
)
from voiceline.providers.functions import arguments_from_json, dtmf_text, function_definitions, result_text
from voiceline.providers.local.llm import (
    LLMError,
    OpenAICompatibleLLM,
    ReplyGenerator,
    ScriptedLLM,
    ToolCall,
    split_sentences,
)
from voiceline.providers.local.stt import (
    PocketSphinxRecognizer,
    StreamingSTT,
    STTError,
    check_model,
    model_paths,
)
from voiceline.providers.local.tts import INSTALL_HINT, EspeakTTS, TTSError
from voiceline.providers.local.vad import (
    EndOfUtteranceDetector,
    FrameSplitter,
    SpeechEnd,
    SpeechStart,
)

__all__ = [
    "LocalAgentProvider",
    "LocalAgentSession",
]

log = structlog.get_logger(__name__)

_VAD_FRAME_MS = 20
_PREROLL_MS = 200  # audio before the confirmed onset run handed to the recogniser too
_TTS_AHEAD = 2  # sentences synthesised concurrently within one turn


@dataclass
class TurnTimings:
    """Monotonic timestamps (s) of one agent turn; None where not applicable."""

    # the caller's end of utterance was detected
    utterance_end: float | None = None
    # the final transcript was ready
    transcript: float | None = None
    # the reply generator produced its first sentence
    first_sentence: float | None = None
    # the first AgentAudio was emitted
    first_audio: float | None = None

    @staticmethod
    def _ms(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round((b - a) * 1000.0, 1)

    @property
    def total_ms(self) -> float | None:
        return self._ms(self.utterance_end, self.first_audio)

    @property
    def stt_ms(self) -> float | None:
        return self._ms(self.utterance_end, self.transcript)

    @property
    def llm_ms(self) -> float | None:
        return self._ms(self.transcript, self.first_sentence)

    @property
    def tts_ms(self) -> float | None:
        return self._ms(self.first_sentence, self.first_audio)


class LocalAgentSession(ProviderSession):
    def __init__(
        self,
        settings: LocalProviderSettings,
        ctx: CallContext,
        *,
        tts: EspeakTTS,
        llm: ReplyGenerator,
        recognizer_factory: Callable[[], PocketSphinxRecognizer],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        fmt = AudioFormat("slin16", settings.sample_rate)
        super().__init__(
            ProviderCapabilities(fmt, fmt, detects_turns=True, interruptible=True)
        )
        self.settings = settings
        self.ctx = ctx
        self._format = fmt
        self._chunk_bytes = max(2, fmt.bytes_for_ms(settings.chunk_ms))
        self._vad = EndOfUtteranceDetector(
            sample_rate=settings.sample_rate,
            frame_ms=_VAD_FRAME_MS,
            aggressiveness=settings.vad_aggressiveness,
            onset_ms=settings.onset_ms,
            end_of_utterance_ms=settings.end_of_utterance_ms,
            min_utterance_ms=settings.min_utterance_ms,
            max_utterance_ms=settings.max_utterance_ms,
        )
        self._frames = FrameSplitter(self._vad.frame_bytes)
        self._preroll: deque[bytes] = deque(
            maxlen=self._vad.onset_frames + _PREROLL_MS // _VAD_FRAME_MS
        )
        self._stt = StreamingSTT(recognizer_factory, name=f"stt-{ctx.call_id}")
        self._llm = llm
        self._tts = tts
        self._clock = clock
        self._history: list[dict[str, Any]] = []
        self._turn: asyncio.Task[None] | None = None
        self._turn_seq = 0
        self._active_turn = 0  # the only turn allowed to emit agent audio; 0 = none
        self._started = False
        self._closed = False
        self._deaf = False  # set when the recognizer died
        self._log = log.bind(call_id=ctx.call_id)
        self.turn_timings: list[TurnTimings] = []  # answered turns, oldest first
        # Functions the script may call (providers.local.actions); requests are numbered.
        self._offered = {f["name"] for f in function_definitions(settings.actions)}
        self._function_seq = 0
        self._pending_tools: dict[str, str] = {}  # LLM tool call id -> name, not answered yet

    # ---- ProviderSession ---------------------------------------------------------

    async def start(self) -> None:
        if self._closed:
            raise RuntimeError("session is closed")
        if self._started:
            return
        if self.settings.greeting:
            # The greeting is synthesised while the recogniser loads its model.
            self._begin_turn(functools.partial(self._greet, self.settings.greeting))
        try:
            await self._stt.open()
        except Exception:
            await self._stop_turn()
            self._stt.close()
            raise
        self._started = True

    async def send_audio(self, audio: bytes) -> None:
        if not self._started or self._closed or self._deaf:
            return
        try:
            for frame in self._frames.feed(audio):
                self._on_frame(frame)
        except STTError as exc:
            # The recognizer's worker is gone: this call can no longer hear the caller.
            self._deaf = True
            self._log.error("speech recognizer unavailable", error=str(exc))
            self._emit(ProviderError(str(exc), code="stt_error", fatal=True))

    async def interrupt(self, played_ms: float | None = None) -> None:
        if self._active_turn:
            self._log.debug("local agent interrupted", played_ms=played_ms)
        await self._stop_turn()

    async def close(self, reason: str = "call ended") -> None:
        if self._closed:
            return
        self._closed = True
        self._started = False
        await self._stop_turn()
        self._stt.close()
        try:
            await self._llm.aclose()
        except Exception:  # noqa: BLE001 - closing must go on; logged
            self._log.exception("closing the reply generator failed")
        self._emit(ProviderClosed(reason))

    @property
    def history(self) -> list[dict[str, Any]]:
        """The conversation so far as chat messages (what the LLM sees)."""
        return list(self._history)

    # ---- caller audio ----------------------------------------------------------------

    def _on_frame(self, frame: bytes) -> None:
        was_speech = self._vad.in_speech
        event = self._vad.process(frame)
        if was_speech:
            self._stt.feed(frame)
        else:
            self._preroll.append(frame)
        if isinstance(event, SpeechStart):
            self._stt.begin(b"".join(self._preroll))
            self._preroll.clear()
            self._emit(UserStartedSpeaking())
            self._cancel_turn()
        elif isinstance(event, SpeechEnd):
            if event.too_short:
                self._stt.abort()
                self._log.debug(
                    "utterance too short, ignored", duration_ms=event.duration_ms
                )
                return
            ended_at = self._clock()
            transcript = self._stt.finish()
            transcript.add_done_callback(_retrieve)
            self._begin_turn(functools.partial(self._answer, transcript, ended_at))

    # ---- turns -------------------------------------------------------------------------

    def _begin_turn(self, body: Callable[[int], Awaitable[None]]) -> None:
        previous = self._turn
        self._cancel_turn()
        self._turn_seq += 1
        turn_id = self._turn_seq
        self._active_turn = turn_id
        self._turn = asyncio.create_task(
            self._run_turn(turn_id, previous, body),
            name=f"local-agent-turn-{self.ctx.call_id}-{turn_id}",
        )

    def _cancel_turn(self) -> None:
        self._active_turn = 0
        task = self._turn
        # Cancel once: a second cancel would interrupt the turn's own cleanup.
        if task is not None and not task.done() and not task.cancelling():
            task.cancel()

    async def _stop_turn(self) -> None:
        task = self._turn
        self._cancel_turn()
        if task is not None and not task.done():
            await asyncio.wait([task])

    async def _run_turn(
        self,
        turn_id: int,
        previous: asyncio.Task[None] | None,
        body: Callable[[int], Awaitable[None]],
    ) -> None:
        try:
            if previous is not None and not previous.done():
                await asyncio.wait([previous])  # one turn at a time
            await body(turn_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a turn's failure never escapes its task
            self._log.exception("local agent turn failed")
            self._emit(
                ProviderError(f"local agent turn failed: {exc}", code="internal")
            )

    async def _greet(self, text: str, turn_id: int) -> None:
        await self._speak(
            turn_id,
            _aiter(split_sentences(text)),
            TurnTimings(first_sentence=self._clock()),
        )

    async def _answer(
        self, transcript: asyncio.Future[str], ended_at: float, turn_id: int
    ) -> None:
        timings = TurnTimings(utterance_end=ended_at)
        try:
            text = (await transcript).strip()
        except STTError as exc:
            self._log.error("speech recognition failed", error=str(exc))
            self._emit(ProviderError(str(exc), code="stt_error"))
            return
        except concurrent.futures.BrokenExecutor as exc:
            self._deaf = True
            self._log.error("speech recognizer worker died", error=str(exc))
            self._emit(
                ProviderError(
                    f"speech recognizer worker died: {exc}",
                    code="stt_error",
                    fatal=True,
                )
            )
            return
        timings.transcript = self._clock()
        if not text:
            self._log.info(
                "no words recognised in the caller's utterance", stt_ms=timings.stt_ms
            )
            return
        await self._reply(turn_id, text, timings)
        self.turn_timings.append(timings)
        self._log.info(
            "local agent answered",
            stt_ms=timings.stt_ms,
            llm_first_sentence_ms=timings.llm_ms,
            tts_ms=timings.tts_ms,
            end_of_utterance_to_audio_ms=timings.total_ms,
        )

    async def _reply(self, turn_id: int, text: str | None, timings: TurnTimings) -> None:
        """Answer what the caller said (or a keypress told as text; None: go on after
        function results); then the functions the model called (LLM ``tool_calls``), or
        the one the script's rule names, if offered (actions)."""
        prior = list(self._history)
        if text is not None:
            self._emit(Transcript("user", text))
            self._history.append({"role": "user", "content": text})
        tool_calls: list[ToolCall] = []
        before = len(self._history)
        await self._speak(turn_id, self._llm.reply(prior, text), timings, tool_calls)
        if turn_id != self._active_turn:
            return
        if tool_calls:
            self._call_tools(tool_calls, spoke=len(self._history) > before)
            return
        function_for = getattr(self._llm, "function_for", None)
        function = function_for(text) if function_for is not None and text is not None else None
        if function is not None:
            if function in self._offered:
                self._function_seq += 1
                self._emit(FunctionCallRequest(call_id=f"local-{self._function_seq}", name=function))
            else:
                self._log.info("scripted function not offered; not called", function=function)

    def _call_tools(self, calls: list[ToolCall], *, spoke: bool) -> None:
        """The LLM called functions: remember them in the conversation (the assistant
        message carries ``tool_calls``) and ask the engine to run them."""
        entries = [c.message_entry() for c in calls]
        if spoke:
            self._history[-1] = {**self._history[-1], "tool_calls": entries}
        else:
            self._history.append({"role": "assistant", "content": None, "tool_calls": entries})
        for call in calls:
            self._pending_tools[call.id] = call.name
            self._emit(FunctionCallRequest(call_id=call.id, name=call.name, arguments=arguments_from_json(call.arguments)))

    async def _reply_now(self, text: str | None, turn_id: int) -> None:
        """A turn with nothing to recognise: a keypress told as text, or (None) going on
        after function results."""
        await self._reply(turn_id, text, TurnTimings(utterance_end=self._clock(), transcript=self._clock()))

    async def send_dtmf(self, digit: str) -> None:
        """A keypress is answered like words (``actions.dtmf.template``), by the script's rules."""
        text = dtmf_text(self.settings.actions, digit)
        if text is None or not self._started or self._closed:
            return
        self._begin_turn(functools.partial(self._reply_now, text))

    async def send_function_result(self, call_id: str, result: Mapping[str, Any]) -> bool:
        """An LLM's function call: the result goes into the conversation and, once every
        call of the turn is answered, the LLM goes on from there. A scripted rule's
        function: the agent already said its line; a failure gets the apology."""
        if self._closed:
            return False
        if call_id in self._pending_tools:
            del self._pending_tools[call_id]
            self._history.append({"role": "tool", "tool_call_id": call_id, "content": result_text(result)})
            if not self._pending_tools:
                self._begin_turn(functools.partial(self._reply_now, None))
            return True
        if "error" in result:
            self._log.warning("function failed; apologising", function_call=call_id, error=result["error"])
            self._begin_turn(functools.partial(self._greet, self.settings.apology))
        return True

    async def _speak(
        self, turn_id: int, sentences: AsyncIterator[str | ToolCall], timings: TurnTimings,
        tool_calls: list[ToolCall] | None = None,
    ) -> None:
        """Sentences → speech, pipelined: sentence n+1 is generated and synthesised
        while sentence n is being sent. Ends the turn with AgentAudioDone and the
        assistant transcript; a cancellation stops it silently."""
        queue: asyncio.Queue[tuple[str, asyncio.Task[bytes]] | BaseException | None] = (
            asyncio.Queue()
        )
        synths: list[asyncio.Task[bytes]] = []
        # A fast LLM may deliver many sentences at once: synthesise a few ahead,
        # not one espeak-ng process per sentence all at the same time.
        slots = asyncio.Semaphore(_TTS_AHEAD)

        async def synthesize_one(sentence: str) -> bytes:
            async with slots:
                return await self._tts.synthesize(sentence)

        def synthesize(sentence: str) -> asyncio.Task[bytes]:
            task = asyncio.create_task(synthesize_one(sentence))
            synths.append(task)
            return task

        async def produce() -> None:
            try:
                async with contextlib.aclosing(sentences) as stream:  # type: ignore[type-var]
                    async for sentence in stream:
                        if isinstance(sentence, ToolCall):
                            if tool_calls is not None:
                                tool_calls.append(sentence)
                            continue
                        if timings.first_sentence is None:
                            timings.first_sentence = self._clock()
                        queue.put_nowait((sentence, synthesize(sentence)))
            except Exception as exc:  # noqa: BLE001 - handed to the consumer, re-raised there
                queue.put_nowait(exc)
            queue.put_nowait(None)

        producer = asyncio.create_task(produce())
        spoken: list[str] = []
        started = False
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, LLMError):
                    self._log.warning(
                        "reply generation failed; apologising", error=str(item)
                    )
                    self._emit(ProviderError(str(item), code="llm_error"))
                    if timings.first_sentence is None:
                        timings.first_sentence = self._clock()
                    item = (self.settings.apology, synthesize(self.settings.apology))
                elif isinstance(item, BaseException):
                    raise item
                sentence, synth = item
                pcm = await synth
                if not pcm:
                    continue
                if turn_id != self._active_turn:
                    return  # superseded; the cancellation is on its way
                if not started:
                    started = True
                    timings.first_audio = self._clock()
                    self._emit(
                        AgentStartedSpeaking(
                            total_latency_ms=timings.total_ms,
                            tts_latency_ms=timings.tts_ms,
                            ttt_latency_ms=timings.llm_ms,
                        )
                    )
                for i in range(0, len(pcm), self._chunk_bytes):
                    self._emit(AgentAudio(pcm[i : i + self._chunk_bytes]))
                spoken.append(sentence)
        except TTSError as exc:
            self._log.error("speech synthesis failed", error=str(exc))
            self._emit(ProviderError(str(exc), code="tts_error"))
        finally:
            producer.cancel()
            for task in synths:
                task.cancel()
            await asyncio.gather(producer, *synths, return_exceptions=True)
            if spoken:
                self._history.append({"role": "assistant", "content": " ".join(spoken)})
        if started:
            self._emit(AgentAudioDone())
        if spoken:
            self._emit(Transcript("assistant", " ".join(spoken)))


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a future's exception as seen (its turn may have been cancelled)."""
    if not future.cancelled():
        future.exception()


async def _aiter(items: Iterable[str]) -> AsyncIterator[str]:
    for item in items:
        yield item


class LocalAgentProvider(Provider):
    """The offline agent. Build it once; it creates one session per call."""

    name = "local"

    def __init__(
        self,
        settings: LocalProviderSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Raises ValueError naming the key (below ``providers.local``) when the
        script's rules do not compile."""
        self.settings = settings if settings is not None else LocalProviderSettings()
        self._clock = clock
        # Shared: stateless apart from its cache of recently synthesised sentences.
        self.tts = EspeakTTS(self.settings.tts, self.settings.sample_rate)
        llm = self.settings.llm
        # Compiled once here, so a broken rule is a config error at start-up, and
        # shared by every call (matching keeps no state).
        self._script = ScriptedLLM(llm.rules, llm.fallback_reply) if llm.kind == "scripted" else None

    def availability(self) -> tuple[bool, str]:
        problems: list[str] = []
        espeak = self.tts.binary_path()
        if espeak is None:
            problems.append(
                f"espeak-ng binary {self.settings.tts.espeak_binary!r} not found; {INSTALL_HINT} "
                "(or set tts.espeak_binary)"
            )
        stt_problem = check_model(self.settings.stt)
        if stt_problem:
            problems.append(stt_problem)
        if problems:
            return False, "; ".join(problems)
        llm = self.settings.llm
        if llm.kind == "scripted":
            llm_note = f"scripted replies ({len(llm.rules)} rules)"
        else:
            llm_note = (
                f"LLM {llm.model!r} at {llm.base_url} (openai_compatible; reachability is not "
                "checked here: if the server is down, each turn reports a ProviderError and "
                "speaks the apology)"
            )
        return (
            True,
            f"espeak-ng at {espeak}, pocketsphinx model {model_paths(self.settings.stt).hmm}, {llm_note}",
        )

    def create_session(self, ctx: CallContext) -> LocalAgentSession:
        return LocalAgentSession(
            self.settings,
            ctx,
            tts=self.tts,
            llm=self._script if self._script is not None else OpenAICompatibleLLM(
                self.settings.llm,
                tools=[{"type": "function", "function": d} for d in function_definitions(self.settings.actions)],
            ),
            recognizer_factory=functools.partial(
                PocketSphinxRecognizer, self.settings.stt, self.settings.sample_rate
            ),
            clock=self._clock,
        )
