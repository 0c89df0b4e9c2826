"""One live call's media runtime: caller audio in, provider events, agent audio out.

The ``Call`` joins an AudioSocket connection, a provider session and the call's
outbound stream. It implements the AudioSocket handler callbacks, which never
block: inbound frames go through a bounded queue to a single sender task, and
provider events are consumed by a single pump task, so everything of one call is
handled in order by tasks the call owns and cancels.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from voiceline.asterisk.audiosocket import AudioSocketConnection
from voiceline.asterisk.audiosocket_codec import Frame, slin_kind_for_rate
from voiceline.audio.formats import AudioFormat
from voiceline.audio.levels import slin_rms
from voiceline.audio.transcode import Transcoder
from voiceline.core.barge_in import PROTECTED_DROP_LOG_MESSAGE, BargeInDetector, BargeInParams, Decision
from voiceline.core.conversation_coordinator import ConversationCoordinator
from voiceline.core.models import CallSession
from voiceline.core.stream_events import (
    FallbackRequested,
    StreamingEnded,
    StreamingPaused,
    StreamingResumed,
    StreamingStarted,
    StreamState,
)
from voiceline.core.streaming_playback_manager import StreamingPlaybackManager
from voiceline.tasks import cancel_and_wait, spawn
from voiceline.providers import base as pb
from voiceline.telemetry.metrics import Metrics
from voiceline.telemetry.timeline import TimelineRecorder

log = structlog.get_logger("voiceline.call")

# Caller audio waiting for the provider. 50 frames = 1 s at 20 ms: a provider that
# cannot take audio for a second is stalled, and old caller audio is worth less
# than new, so the oldest frame is dropped (and counted).
INBOUND_QUEUE_FRAMES = 50
# Buffer depth is sampled for gauges, histograms and the timeline at this interval,
# not per frame, to keep the 20 ms path cheap.
DEPTH_SAMPLE_INTERVAL_S = 0.2
ENERGY_SAMPLE_INTERVAL_S = 0.1


@dataclass(slots=True)
class CallCounters:
    frames_in: int = 0
    frames_to_provider: int = 0
    frames_gated: int = 0
    inbound_dropped: int = 0
    agent_chunks: int = 0
    agent_bytes: int = 0
    dtmf: int = 0
    provider_errors: int = 0


EndCall = Callable[[str, str], Awaitable[None]]  # (call_id, reason)
FallbackPlayer = Callable[[str, FallbackRequested], Awaitable[None]]
PlaybackStopper = Callable[[str], Awaitable[None]]  # stop the call's ARI playback, if any

# Caller audio kept while capture is gated, so that after a confirmed barge-in the
# provider hears the interruption from its first syllable, not from the confirmation.
PREROLL_S = 0.6


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
        play_fallback: FallbackPlayer | None,
        clock: Callable[[], float],
        metrics: Metrics,
        barge_in: BargeInParams | None = None,
        stop_playback: PlaybackStopper | None = None,
    ) -> None:
        self.session = session
        self.provider = provider
        self.wire_format = wire_format
        self.counters = CallCounters()
        self._streaming = streaming
        self._coordinator = coordinator
        self._end_call = end_call
        self._play_fallback = play_fallback
        self._clock = clock
        self._metrics = metrics
        self.timeline = TimelineRecorder(start_s=clock())
        self.pause_durations_ms: list[float] = []
        self._next_depth_sample = 0.0
        self._next_energy_sample = 0.0
        caps = provider.capabilities
        self._to_provider = Transcoder(wire_format, caps.input_format)
        self._from_provider = Transcoder(caps.output_format, wire_format)
        self._full_duplex = caps.full_duplex
        self._wire_kind = slin_kind_for_rate(wire_format.sample_rate)
        # Full-duplex providers hear the caller all the time; there is nothing to barge into.
        self._detector = BargeInDetector(barge_in) if barge_in is not None and barge_in.enabled \
            and not self._full_duplex else None
        self._stop_playback = stop_playback
        self._preroll: deque[bytes] = deque(maxlen=max(1, int(PREROLL_S * 1000 / 20)))
        self._last_agent_frame: bytes | None = None
        self._last_agent_frame_at: float | None = None
        self._protected_logged = False
        self._inbound: asyncio.Queue[bytes] = asyncio.Queue(maxsize=INBOUND_QUEUE_FRAMES)
        self._tasks: set[asyncio.Task[object]] = set()
        self._ending_tasks: set[asyncio.Task[object]] = set()
        self.connection: AudioSocketConnection | None = None
        self.stream = None
        self._provider_started = asyncio.Event()
        self.connected = asyncio.Event()
        self._ended = False
        session.wire_format = str(wire_format)
        session.provider_input_format = str(caps.input_format)
        session.provider_output_format = str(caps.output_format)

    # ------------------------------------------------------------------ lifecycle

    def start_provider(self) -> None:
        """Connect the provider in the background while the call is being set up."""
        spawn(self._run_provider(), name=f"provider-{self.session.call_id}", owner=self._tasks)

    async def _run_provider(self) -> None:
        call_id = self.session.call_id
        try:
            await self.provider.start()
        except Exception as exc:  # any failure to connect ends this call only
            self.counters.provider_errors += 1
            self._metrics.provider_error(self.session.provider_name)
            log.error("provider_start_failed", call_id=call_id, provider=self.session.provider_name, error=str(exc))
            await self._end_call(call_id, f"provider start failed: {exc}")
            return
        self._provider_started.set()
        spawn(self._send_inbound(), name=f"inbound-{call_id}", owner=self._tasks)
        await self._pump_provider_events()

    def attach(self, connection: AudioSocketConnection) -> None:
        """The AudioSocket connection for this call arrived: start the outbound stream."""
        self.connection = connection
        self.connected.set()
        self.stream = self._streaming.open(
            self.session.call_id, self.wire_format, send_frame=self._send_frame, on_event=self._on_stream_event
        )

    def _send_frame(self, frame: bytes) -> None:
        connection = self.connection
        if connection is not None and not connection.closed:
            connection.send_audio(frame, self._wire_kind)
        now = self._clock()
        # The barge-in detector compares the caller's audio with what we just sent.
        if self.stream is not None and self.stream.last_tick_sent_audio:
            self._last_agent_frame = frame
            self._last_agent_frame_at = now
        else:
            self._last_agent_frame = None
        if now >= self._next_depth_sample and self.stream is not None:
            self._next_depth_sample = now + DEPTH_SAMPLE_INTERVAL_S
            self._sample_depth(now)

    def _sample_depth(self, now: float) -> None:
        depth = self.stream.depth_frames
        self._metrics.jitter_depth.labels(self.session.call_id).set(depth)
        if self.session.tts_playing:
            self._metrics.buffer_depth.observe(depth)
            self.timeline.depth_sample(depth, now_s=now)

    async def close(self) -> None:
        """Stop everything this call owns. Idempotent."""
        if self._ended:
            return
        self._ended = True
        self._streaming.close(self.session.call_id)
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                await cancel_and_wait(task)
        await self.provider.close("call ended")
        if self.connection is not None and not self.connection.closed:
            self.connection.send_hangup()
            self.connection.close("call ended")

    @property
    def owned_tasks(self) -> int:
        return len(self._tasks)

    # ------------------------------------------------------------------ inbound (AudioSocketHandler)

    def on_audio(self, frame: Frame) -> None:
        self.counters.frames_in += 1
        payload = frame.payload
        now = self._clock()
        if now >= self._next_energy_sample:
            self._next_energy_sample = now + ENERGY_SAMPLE_INTERVAL_S
            self.timeline.energy_sample(slin_rms(payload), now_s=now)
        if self._detector is not None and not self._watch_for_barge_in(payload, now):
            return
        if not (self._full_duplex or self.session.audio_capture_enabled):
            self.counters.frames_gated += 1
            self._preroll.append(payload)
            return
        if self._preroll:
            # Capture came back without a barge-in (the turn just ended): the gated
            # audio is stale and must not be replayed at a later interruption.
            self._preroll.clear()
        self._forward(payload)

    def _forward(self, payload: bytes) -> None:
        if self._inbound.full():
            self._inbound.get_nowait()
            self.counters.inbound_dropped += 1
        self._inbound.put_nowait(payload)

    def _watch_for_barge_in(self, payload: bytes, now: float) -> bool:
        """Feed the detector; False when the frame must be dropped (protection window)."""
        detector = self._detector
        playing = not self.session.audio_capture_enabled
        if playing and not detector.in_playback:
            detector.playback_started(now)
            self._protected_logged = False
        elif not playing and detector.in_playback:
            detector.playback_stopped(now)
        if len(payload) != detector.params.frame_bytes:
            return True  # another ptime: no detection on this frame, gating still applies
        decision = detector.feed(payload, now, reference=self._last_agent_frame)
        if decision is Decision.NONE or decision is Decision.SPEECH_CANDIDATE:
            return True
        call_id = self.session.call_id
        if decision is Decision.DROP_PROTECTED:
            if not self._protected_logged:
                self._protected_logged = True
                log.info(PROTECTED_DROP_LOG_MESSAGE, call_id=call_id)
            return False
        self._sync_attempts()
        if decision is Decision.SOFT_PAUSE:
            if self.stream is not None and self.stream.hold(now):
                self.timeline.add("soft_pause", None, now_s=now)
        elif decision is Decision.RESUME:
            self._metrics.barge_in_false_triggers_total.inc()
            if self.stream is not None and self.stream.held:
                self.stream.release(now)
                self.timeline.add("soft_resume", None, now_s=now)
        elif decision is Decision.CONFIRMED:
            self._barge_in(now, source="local", onset=detector.stats.speech_onset)
        return True

    def _sync_attempts(self) -> None:
        """Caller speech episodes during playback, from the detector, into session and metrics."""
        attempts = self._detector.stats.attempts
        new = attempts - self.session.conversation.barge_in_attempts
        if new > 0:
            self.session.conversation.barge_in_attempts = attempts
            self._metrics.barge_in_attempts_total.inc(new)

    def _barge_in(self, now: float, *, source: str, onset: float | None) -> None:
        """The caller interrupted: silence the agent at once, let the provider hear the caller."""
        call_id = self.session.call_id
        stream_playing = self.stream is not None and self.stream.state is not StreamState.IDLE
        playback = self.session.current_playback
        ari_playing = playback is not None and not playback.finished
        if not (stream_playing or ari_playing or self.session.tts_playing):
            return  # nothing was playing: not an interruption
        played_ms = None
        if self.stream is not None:
            result = self.stream.flush(now, "barge-in")
            played_ms = result.played_ms
        if ari_playing and self._stop_playback is not None:
            spawn(self._stop_playback(call_id), name=f"stop-playback-{call_id}", owner=self._tasks)
        reaction_s = None
        if onset is not None and self._last_agent_frame_at is not None:
            reaction_s = max(0.0, self._last_agent_frame_at - onset)
        self.session.conversation.barge_ins += 1
        self._metrics.barge_in(call_id, source, reaction_s)
        self.timeline.add("barge_in", round(played_ms or 0), now_s=now)
        log.info("barge_in", call_id=call_id, source=source, played_ms=played_ms,
                 reaction_ms=round(reaction_s * 1000, 1) if reaction_s is not None else None)
        # Capture is on again (the turn ended); hand the provider the interruption's start.
        while self._preroll:
            self._forward(self._preroll.popleft())
        if self._provider_started.is_set():
            spawn(self.provider.interrupt(played_ms), name=f"interrupt-{call_id}", owner=self._tasks)

    def on_dtmf(self, digit: str) -> None:
        self.counters.dtmf += 1
        log.info("dtmf", call_id=self.session.call_id, digit=digit)
        if self._provider_started.is_set():
            spawn(self.provider.send_dtmf(digit), name=f"dtmf-{self.session.call_id}", owner=self._tasks)

    def on_error_frame(self, code: int | None) -> None:
        log.warning("audiosocket_error_frame", call_id=self.session.call_id, code=code)

    def on_closed(self, reason: str) -> None:
        if self._ended:
            return
        # Not in self._tasks: ending the call cancels those, and this task is the one
        # ending it. Kept referenced here so it cannot be garbage-collected mid-way.
        spawn(
            self._end_call(self.session.call_id, f"audiosocket closed: {reason}"),
            name=f"end-{self.session.call_id}",
            owner=self._ending_tasks,
        )

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
                    if self.stream is not None:
                        self.stream.push(self._from_provider.convert(data), self._clock())
                case pb.AgentStartedSpeaking(total_latency_ms=latency_ms):
                    if latency_ms is not None:
                        self._metrics.turn_latency.observe(latency_ms / 1000)
                    if self.stream is not None:
                        now = self._clock()
                        turn_id = self.stream.begin_turn(now)
                        self.timeline.add("turn_start", turn_id, now_s=now)
                case pb.AgentAudioDone():
                    if self.stream is not None:
                        self.stream.end_turn(self._clock())
                case pb.UserStartedSpeaking():
                    self._on_user_started_speaking()
                case pb.Transcript(role=role, text=text, final=final):
                    if final:
                        self.session.transcript.append({"t": round(time.time(), 3), "role": role, "text": text})
                        log.info("transcript", call_id=call_id, role=role, text=text)
                case pb.ProviderError(message=message, code=code, fatal=fatal):
                    self.counters.provider_errors += 1
                    self._metrics.provider_error(self.session.provider_name)
                    log.warning("provider_error", call_id=call_id, message=message, code=code, fatal=fatal)
                case pb.ProviderWarning(message=message, code=code):
                    log.warning("provider_warning", call_id=call_id, message=message, code=code)
                case pb.FunctionCallRequest(name=name):
                    log.info("function_call_request", call_id=call_id, function=name)
                case pb.AgentThinking():
                    pass  # informational; the turn timing comes from AgentStartedSpeaking
                case pb.ProviderClosed(reason=reason, error=error):
                    if error and not self._ended:
                        await self._end_call(call_id, f"provider lost: {reason}")
                    return

    def _on_user_started_speaking(self) -> None:
        """The provider heard the caller: drop queued agent audio at once (counted once)."""
        self._barge_in(self._clock(), source="provider", onset=None)

    # ------------------------------------------------------------------ stream events

    def _on_stream_event(self, event: object) -> None:
        call_id = self.session.call_id
        now = self._clock()
        metrics = self._metrics
        if isinstance(event, StreamingStarted):
            metrics.turns_total.inc()
            metrics.first_frame_latency.observe(event.first_frame_latency_ms / 1000)
            self.timeline.add("agent_on", event.turn_id, now_s=now)
            self._coordinator.on_tts_start(call_id, self._turn_playback_id(event.turn_id))
        elif isinstance(event, StreamingEnded):
            metrics.pauses_total.inc(event.pauses)
            metrics.late_chunks_total.inc(event.late_chunks_dropped)
            if event.reason == "fallback":
                metrics.fallback()
            self.timeline.add("agent_off", event.turn_id, now_s=now)
            self.timeline.add("turn_end", event.reason, now_s=now)
            self._coordinator.on_tts_end(call_id, self._turn_playback_id(event.turn_id), event.reason)
        elif isinstance(event, StreamingPaused):
            self.timeline.add("pause", event.depth, now_s=now)
        elif isinstance(event, StreamingResumed):
            self.pause_durations_ms.append(event.paused_ms)
            self.timeline.add("resume", round(event.paused_ms), now_s=now)
        elif isinstance(event, FallbackRequested):
            self.timeline.add("fallback", event.turn_id, now_s=now)
            if self._play_fallback is None:
                log.warning("fallback_unavailable", call_id=call_id, reason="no ARI in this call-control mode")
                return
            spawn(self._play_fallback(call_id, event), name=f"fallback-{call_id}", owner=self._tasks)

    def _turn_playback_id(self, turn_id: str) -> str:
        return f"stream:{turn_id}"
