"""One live call's media runtime: caller audio in, provider events, agent audio out.

The ``Call`` joins a media leg (``core.media.MediaLeg``), a provider session and the
call's outbound stream. Its inbound callbacks never block: caller frames go through
a bounded queue to a single sender task, and provider events are consumed by a
single pump task, so everything of one call is handled in order by tasks the call
owns and cancels. Per-frame decisions (barge-in reactions, capture gating, the
pre-roll) are made by the pure ``CallPolicy``; metrics and the timeline go to a
``CallEventSink``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from voiceline.audio.formats import AudioFormat
from voiceline.audio.levels import slin_rms
from voiceline.audio.transcode import Transcoder
from voiceline.core.actions import FunctionExecutor
from voiceline.core.barge_in import PROTECTED_DROP_LOG_MESSAGE, BargeInDetector, BargeInParams
from voiceline.core.call_policy import CallPolicy, GateChange, ReactionKind
from voiceline.core.conversation_coordinator import ConversationCoordinator
from voiceline.core.media import MediaLeg, PlaybackControl
from voiceline.core.models import CallSession
from voiceline.core.sink import CallEventSink
from voiceline.core.stream_events import (
    FallbackRequested,
    StreamingEnded,
    StreamingPaused,
    StreamingResumed,
    StreamingStarted,
    StreamState,
)
from voiceline.core.streaming_playback_manager import StreamingPlaybackManager
from voiceline.providers import base as pb
from voiceline.tasks import cancel_and_wait, spawn

log = structlog.get_logger("voiceline.call")

# Caller audio waiting for the provider. 50 frames = 1 s at 20 ms: a provider that
# cannot take audio for a second is stalled, and old caller audio is worth less
# than new, so the oldest frame is dropped (and counted).
INBOUND_QUEUE_FRAMES = 50
# Buffer depth is sampled for gauges, histograms and the timeline at this interval,
# not per frame, to keep the 20 ms path cheap.
DEPTH_SAMPLE_INTERVAL_S = 0.2
ENERGY_SAMPLE_INTERVAL_S = 0.1
# Caller audio kept while capture is gated, so that after a confirmed barge-in the
# provider hears the interruption from its first syllable, not from the confirmation.
PREROLL_S = 0.6
# Agent audio that arrives before the media leg attaches (a greeting sent while ARI
# is still setting the call up) is kept up to this much and played once it attaches.
PRE_ATTACH_MAX_S = 30.0
# After the provider dropped mid-turn, how long beyond the buffered audio (and the
# stream's grace) the call waits for it to be played before ending anyway.
PLAY_OUT_MARGIN_S = 1.0


@dataclass(slots=True)
class CallCounters:
    frames_in: int = 0
    frames_to_provider: int = 0
    frames_gated: int = 0
    inbound_dropped: int = 0
    frames_wrong_rate: int = 0  # caller frames not at the call's sample rate (refused)
    pre_attach_bytes: int = 0  # agent audio kept until the media leg attached
    pre_attach_dropped_bytes: int = 0  # ... beyond PRE_ATTACH_MAX_S, dropped
    agent_chunks: int = 0
    agent_bytes: int = 0
    dtmf: int = 0
    provider_errors: int = 0


EndCall = Callable[[str, str], Awaitable[None]]  # (call_id, reason)


class Call:
    def __init__(
        self,
        session: CallSession,
        provider: pb.ProviderSession,
        *,
        wire_format: AudioFormat,
        streaming: StreamingPlaybackManager,
        coordinator: ConversationCoordinator,
        end_call: EndCall,
        playback: PlaybackControl | None,
        clock: Callable[[], float],
        sink: CallEventSink,
        barge_in: BargeInParams | None = None,
        starvation_s: float | None = None,
    ) -> None:
        self.session = session
        self.provider = provider
        self.wire_format = wire_format
        self.counters = CallCounters()
        self.sink = sink
        self._streaming = streaming
        self._coordinator = coordinator
        self._end_call = end_call
        self._playback = playback
        self._clock = clock
        self.pause_durations_ms: list[float] = []
        self._next_depth_sample = 0.0
        self._next_energy_sample = 0.0
        caps = provider.capabilities
        self._to_provider = Transcoder(wire_format, caps.input_format)
        self._from_provider = Transcoder(caps.output_format, wire_format)
        # Full-duplex providers hear the caller all the time; there is nothing to barge into.
        detector = BargeInDetector(barge_in) if barge_in is not None and barge_in.enabled \
            and not caps.full_duplex else None
        self.policy = CallPolicy(detector, full_duplex=caps.full_duplex,
                                 preroll_frames=max(1, int(PREROLL_S * 1000 / 20)), starvation_s=starvation_s)
        self._last_agent_frame: bytes | None = None
        self._last_agent_frame_at: float | None = None
        self._inbound: asyncio.Queue[bytes] = asyncio.Queue(maxsize=INBOUND_QUEUE_FRAMES)
        self._tasks: set[asyncio.Task[object]] = set()
        self._ending_tasks: set[asyncio.Task[object]] = set()
        self.leg: MediaLeg | None = None
        self.stream = None
        self._provider_started = asyncio.Event()
        # Provider output before the leg attached: ("begin"|"audio"|"end", wire audio).
        self._pre_attach: list[tuple[str, bytes]] = []
        self._stream_idle = asyncio.Event()
        self.connected = asyncio.Event()
        self._ended = False
        # Runs the model's function calls (core.actions.FunctionExecutor); set by the engine.
        self.functions: FunctionExecutor | None = None
        session.wire_format = str(wire_format)
        session.provider_input_format = str(caps.input_format)
        session.provider_output_format = str(caps.output_format)

    @property
    def ended(self) -> bool:
        return self._ended

    # ------------------------------------------------------------------ lifecycle

    def start_provider(self) -> None:
        """Connect the provider in the background while the call is being set up."""
        spawn(self._essential(self._run_provider(), "provider session"),
              name=f"provider-{self.session.call_id}", owner=self._tasks)

    async def _essential(self, work: Awaitable[None], what: str) -> None:
        """Run one of the call's own tasks; if it crashes the call cannot go on (a deaf or
        mute agent), so the call ends with the failure as its reason, logged with the stack."""
        try:
            await work
        except Exception as exc:
            call_id = self.session.call_id
            log.error("call_task_failed", call_id=call_id, task=what, error=repr(exc), exc_info=exc)
            if not self._ended:
                await self._end_call(call_id, f"{what} failed: {exc}")

    async def _run_provider(self) -> None:
        call_id = self.session.call_id
        early = self.provider.capabilities.takes_audio_during_start
        if early:  # the provider holds caller audio through its handshake itself
            spawn(self._essential(self._send_inbound(), "caller audio to provider"),
                  name=f"inbound-{call_id}", owner=self._tasks)
        try:
            await self.provider.start()
        except Exception as exc:  # any failure to connect ends this call only
            self.counters.provider_errors += 1
            self.sink.provider_error()
            log.error("provider_start_failed", call_id=call_id, provider=self.session.provider_name,
                      error=str(exc), exc_info=exc)
            await self._end_call(call_id, f"provider start failed: {exc}")
            return
        self._provider_started.set()
        if not early:
            spawn(self._essential(self._send_inbound(), "caller audio to provider"),
                  name=f"inbound-{call_id}", owner=self._tasks)
        await self._pump_provider_events()

    def attach(self, leg: MediaLeg) -> bool:
        """The call's media leg arrived: start the outbound stream. False if the call
        already ended (the caller must then refuse or hang up the leg)."""
        if self._ended:
            log.info("media_leg_after_call_ended", call_id=self.session.call_id)
            return False
        self.leg = leg
        self.connected.set()
        self.stream = self._streaming.open(
            self.session.call_id, self.wire_format, send_frame=self._send_frame, on_event=self._on_stream_event,
            frame_sent=self._frame_sent, poll_inbound=leg.poll_inbound,
            on_failure=self._on_stream_failure,
        )
        self._replay_pre_attach()
        return True

    def _replay_pre_attach(self) -> None:
        if not self._pre_attach:
            return
        now = self._clock()
        log.info("pre_attach_audio_played", call_id=self.session.call_id,
                 audio_ms=self.wire_format.ms_for_bytes(self.counters.pre_attach_bytes),
                 dropped_ms=self.wire_format.ms_for_bytes(self.counters.pre_attach_dropped_bytes))
        for op, data in self._pre_attach:
            if op == "begin":
                self.sink.mark("turn_start", self.stream.begin_turn(now), now)
            elif op == "audio":
                self.stream.push(data, now)
            else:
                self.stream.end_turn(now)
        self._pre_attach.clear()

    def _keep_pre_attach(self, op: str, data: bytes = b"") -> None:
        if data:
            limit = self.wire_format.bytes_for_ms(PRE_ATTACH_MAX_S * 1000)
            if self.counters.pre_attach_bytes + len(data) > limit:
                self.counters.pre_attach_dropped_bytes += len(data)
                return
            self.counters.pre_attach_bytes += len(data)
        self._pre_attach.append((op, data))

    def _on_stream_failure(self, exc: BaseException) -> None:
        """The stream's tick raised and the stream was removed (the streaming manager
        logged the traceback): the caller would hear nothing more, so end the call."""
        if self._ended:
            return
        log.error("call_stream_failed", call_id=self.session.call_id, error=repr(exc))
        self._end_soon(f"outbound stream failed: {exc!r}")

    def _end_soon(self, reason: str) -> None:
        """End the call from a callback that cannot await. The task is not in
        self._tasks: ending the call cancels those, and this task is the one ending
        it. Kept referenced here so it cannot be garbage-collected mid-way."""
        spawn(self._end_call(self.session.call_id, reason), name=f"end-{self.session.call_id}",
              owner=self._ending_tasks)

    def _send_frame(self, frame: bytes) -> None:
        """The pacer's write phase: only the write, so every call's frame leaves
        at the same point of each tick (bookkeeping is in ``_frame_sent``)."""
        leg = self.leg
        if leg is not None and not leg.closed:
            leg.send_frame(frame)

    def _frame_sent(self, frame: bytes, now: float) -> None:
        leg = self.leg
        if leg is not None and not leg.closed:
            self.sink.agent_audio(frame)
        stream = self.stream
        # The barge-in detector compares the caller's audio with what we just sent.
        sent_audio = stream is not None and stream.last_tick_sent_audio
        if sent_audio:
            self._last_agent_frame = frame
            self._last_agent_frame_at = now
        else:
            self._last_agent_frame = None
        if stream is not None:
            change = self.policy.frame_sent(sent_audio, stream.held, now)
            if change is not None:
                self._apply_gate(change)
            if now >= self._next_depth_sample:
                self._next_depth_sample = now + DEPTH_SAMPLE_INTERVAL_S
                self.sink.buffer_depth(stream.depth_frames, self.session.tts_playing, now)

    def _apply_gate(self, change: GateChange) -> None:
        call_id = self.session.call_id
        if change.gate:
            self._coordinator.on_tts_start(call_id, change.playback_id)
        else:
            self._coordinator.on_tts_end(call_id, change.playback_id, change.reason)

    async def close(self) -> None:
        """Stop everything this call owns. Idempotent. Every step runs even if an
        earlier one raised; failures are logged with their traceback."""
        if self._ended:
            return
        self._ended = True
        call_id = self.session.call_id
        try:
            self._streaming.close(call_id)
        except Exception:
            log.exception("call_close_step_failed", call_id=call_id, step="close_stream")
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                await cancel_and_wait(task)  # logs a task's own failure
        if self.functions is not None:
            await self.functions.aclose()
        try:
            await self.provider.close("call ended")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("call_close_step_failed", call_id=call_id, step="close_provider")
        try:
            if self.leg is not None and not self.leg.closed:
                self.leg.hangup()
        except Exception:
            log.exception("call_close_step_failed", call_id=call_id, step="hangup_leg")

    # ------------------------------------------------------------------ inbound (from the media leg)

    def on_caller_audio(self, payload: bytes, sample_rate: int | None) -> None:
        """One caller frame (signed linear at ``sample_rate``).

        A frame at another rate than the call's is refused, not resampled: the leg
        was set up for one rate, so a different one is a dialplan or channel error
        the operator must see (counted, logged once per call), and guessing would
        feed the provider and the barge-in detector audio they were not set up for.
        """
        self.counters.frames_in += 1
        if sample_rate is not None and sample_rate != self.wire_format.sample_rate:
            self._refuse_wrong_rate(sample_rate)
            return
        self.sink.caller_audio(payload)
        now = self._clock()
        if now >= self._next_energy_sample:
            self._next_energy_sample = now + ENERGY_SAMPLE_INTERVAL_S
            self.sink.caller_energy(slin_rms(payload), now)
        capture = self.session.audio_capture_enabled
        reaction = self.policy.caller_frame(payload, now, capture_enabled=capture, reference=self._last_agent_frame)
        kind = reaction.kind
        if kind is not ReactionKind.NONE:
            if kind is ReactionKind.DROP:
                if reaction.first_drop:
                    log.info(PROTECTED_DROP_LOG_MESSAGE, call_id=self.session.call_id)
                return
            self._react(kind, reaction.new_attempts, reaction.onset, now)
            capture = self.session.audio_capture_enabled  # a barge-in may have reopened it
        if not self.policy.admit(payload, capture_enabled=capture):
            self.counters.frames_gated += 1
            return
        self._forward(payload)

    def _refuse_wrong_rate(self, sample_rate: int) -> None:
        self.counters.frames_wrong_rate += 1
        self.sink.caller_frame_refused("wrong_rate")
        if self.counters.frames_wrong_rate == 1:
            log.warning("caller_audio_wrong_sample_rate", call_id=self.session.call_id,
                        frame_rate=sample_rate, call_rate=self.wire_format.sample_rate,
                        action="frames refused; check the dialplan/externalMedia format")

    def _react(self, kind: ReactionKind, new_attempts: int, onset: float | None, now: float) -> None:
        if new_attempts:
            self.session.conversation.barge_in_attempts += new_attempts
            self.sink.barge_in_attempts(new_attempts)
        stream = self.stream
        if kind is ReactionKind.HOLD:
            if stream is not None and stream.hold(now):
                self.sink.mark("soft_pause", None, now)
        elif kind is ReactionKind.RELEASE:
            self.sink.barge_in_false_trigger()
            if stream is not None and stream.held:
                stream.release(now)
                self.sink.mark("soft_resume", None, now)
        elif kind is ReactionKind.BARGE_IN:
            self._barge_in(now, source="local", onset=onset)

    def _forward(self, payload: bytes) -> None:
        if self._inbound.full():
            self._inbound.get_nowait()
            self.counters.inbound_dropped += 1
        self._inbound.put_nowait(payload)

    def _barge_in(self, now: float, *, source: str, onset: float | None) -> None:
        """The caller interrupted: silence the agent at once, let the provider hear the caller."""
        call_id = self.session.call_id
        stream = self.stream
        stream_open = stream is not None and stream.state is not StreamState.IDLE
        # A starved turn (its end message lost, nothing queued) is open but silent: the
        # caller speaking now starts the caller's turn, it interrupts nothing.
        stream_playing = stream_open and (self.policy.agent_audible or stream.depth_frames > 0)
        file_playing = self._playback is not None and self._playback.playing(call_id)
        if not (stream_playing or file_playing or self.session.tts_playing):
            if stream_open:
                # Close the silent turn without playing its remainder (at most a partial
                # frame): anything sent now would gate the caller's question again.
                stream.flush(now, "completed")
            return  # nothing was playing: not an interruption
        played_ms = stream.flush(now, "barge-in").played_ms if stream is not None else None
        if file_playing:
            spawn(self._playback.stop_playbacks(call_id), name=f"stop-playback-{call_id}", owner=self._tasks)
        reaction_s = None
        if onset is not None and self._last_agent_frame_at is not None:
            reaction_s = max(0.0, self._last_agent_frame_at - onset)
        self.session.conversation.barge_ins += 1
        self.sink.barge_in(source, reaction_s)
        self.sink.mark("barge_in", round(played_ms or 0), now)
        log.info("barge_in", call_id=call_id, source=source, played_ms=played_ms,
                 reaction_ms=round(reaction_s * 1000, 1) if reaction_s is not None else None)
        # Capture is on again (the turn ended); hand the provider the interruption's start.
        for payload in self.policy.take_preroll():
            self._forward(payload)
        if self._provider_started.is_set():
            spawn(self.provider.interrupt(played_ms), name=f"interrupt-{call_id}", owner=self._tasks)

    def on_dtmf(self, digit: str) -> None:
        self.counters.dtmf += 1
        # Callers key in PINs and card numbers: the digit itself only at DEBUG.
        log.info("dtmf", call_id=self.session.call_id, count=self.counters.dtmf)
        log.debug("dtmf_digit", call_id=self.session.call_id, digit=digit)
        if self._provider_started.is_set():
            spawn(self.provider.send_dtmf(digit), name=f"dtmf-{self.session.call_id}", owner=self._tasks)

    def on_media_error(self, code: int | None) -> None:
        log.warning("audiosocket_error_frame", call_id=self.session.call_id, code=code)

    def on_media_closed(self, reason: str) -> None:
        if self._ended:
            return
        self._end_soon(f"audiosocket closed: {reason}")

    async def _send_inbound(self) -> None:
        while True:
            payload = await self._inbound.get()
            audio = self._to_provider.convert(payload)
            if audio:
                await self.provider.send_audio(audio)
                self.counters.frames_to_provider += 1

    # ------------------------------------------------------------------ provider events

    async def _pump_provider_events(self) -> None:
        call_id = self.session.call_id
        async for event in self.provider.events():
            match event:
                case pb.AgentAudio(data=data):
                    self.counters.agent_chunks += 1
                    self.counters.agent_bytes += len(data)
                    audio = self._from_provider.convert(data)
                    if self.stream is not None:
                        self.stream.push(audio, self._clock())
                    elif audio:
                        self._keep_pre_attach("audio", audio)
                case pb.AgentStartedSpeaking(total_latency_ms=latency_ms):
                    if latency_ms is not None:
                        self.sink.turn_latency(latency_ms / 1000)
                    if self.stream is not None:
                        now = self._clock()
                        turn_id = self.stream.begin_turn(now)
                        self.sink.mark("turn_start", turn_id, now)
                    else:
                        self._keep_pre_attach("begin")
                case pb.AgentAudioDone():
                    if self.stream is not None:
                        self.stream.end_turn(self._clock())
                    else:
                        self._keep_pre_attach("end")
                case pb.UserStartedSpeaking():
                    self._pre_attach.clear()  # the caller spoke first: that greeting is moot
                    # The provider heard the caller: drop queued agent audio at once (counted once).
                    self._barge_in(self._clock(), source="provider", onset=None)
                case pb.Transcript(role=role, text=text, final=final):
                    if final:
                        self.session.transcript.append({"t": round(time.time(), 3), "role": role, "text": text})
                        log.info("transcript", call_id=call_id, role=role, text=text)
                case pb.ProviderError(message=message, code=code, fatal=fatal):
                    self.counters.provider_errors += 1
                    self.sink.provider_error()
                    log.warning("provider_error", call_id=call_id, message=message, code=code, fatal=fatal)
                case pb.ProviderWarning(message=message, code=code):
                    log.warning("provider_warning", call_id=call_id, message=message, code=code)
                case pb.FunctionCallRequest(name=name):
                    log.info("function_call_request", call_id=call_id, function=name)
                    if self.functions is not None:
                        self.functions.submit(event)
                case pb.AgentThinking():
                    pass  # informational; the turn timing comes from AgentStartedSpeaking
                case pb.ProviderClosed(reason=reason, error=error):
                    if error and not self._ended:
                        await self._play_out(reason)
                        await self._end_call(call_id, f"provider lost: {reason}")
                    return

    async def _play_out(self, reason: str) -> None:
        """The provider dropped: let the caller hear the agent audio already received."""
        stream = self.stream
        if stream is None or stream.state is StreamState.IDLE:
            return
        now = self._clock()
        stream.end_turn(now)  # no more audio will come for it
        params = self._streaming.params
        buffered_s = stream.depth_frames * params.chunk_size_ms / 1000
        budget_s = buffered_s + params.provider_grace_ms / 1000 + PLAY_OUT_MARGIN_S
        log.info("provider_lost_playing_out", call_id=self.session.call_id, reason=reason,
                 buffered_ms=round(buffered_s * 1000))
        self._stream_idle.clear()
        if stream.state is StreamState.IDLE:
            return
        try:
            await asyncio.wait_for(self._stream_idle.wait(), budget_s)
        except asyncio.TimeoutError:
            log.warning("provider_lost_play_out_timeout", call_id=self.session.call_id, budget_s=round(budget_s, 2))

    # ------------------------------------------------------------------ stream events

    def _on_stream_event(self, event: object) -> None:
        call_id = self.session.call_id
        now = self._clock()
        sink = self.sink
        if isinstance(event, StreamingStarted):
            sink.turn_started(event.first_frame_latency_ms / 1000)
            sink.mark("agent_on", event.turn_id, now)
            self._apply_gate(self.policy.turn_started(self._turn_playback_id(event.turn_id), now))
        elif isinstance(event, StreamingEnded):
            sink.turn_ended(event.pauses, event.late_chunks_dropped, event.reason == "fallback")
            sink.mark("agent_off", event.turn_id, now)
            sink.mark("turn_end", event.reason, now)
            self._apply_gate(self.policy.turn_ended(self._turn_playback_id(event.turn_id), event.reason))
            if self.stream is not None and self.stream.state is StreamState.IDLE:
                self._stream_idle.set()
        elif isinstance(event, StreamingPaused):
            sink.mark("pause", event.depth, now)
        elif isinstance(event, StreamingResumed):
            self.pause_durations_ms.append(event.paused_ms)
            sink.mark("resume", round(event.paused_ms), now)
        elif isinstance(event, FallbackRequested):
            sink.mark("fallback", event.turn_id, now)
            if self._playback is None:
                log.warning("fallback_unavailable", call_id=call_id, reason="no file playback in this call-control mode")
                return
            spawn(self._playback.play_fallback(call_id, event), name=f"fallback-{call_id}", owner=self._tasks)

    def _turn_playback_id(self, turn_id: str) -> str:
        return f"stream:{turn_id}"
