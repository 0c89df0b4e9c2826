"""Streaming agent audio to the phone leg: one pure state machine per call.

Agent audio reaches us in the call's wire format but in chunks of any size and
timing (steady, bursts far ahead of real time, jitter, multi-second stalls, 1-byte
chunks, odd byte counts). Asterisk wants exact 20 ms frames at real time with very
little lead: it has no jitter buffer on what we send and a mixing bridge drops
anything queued beyond ~80 ms. So:

* ``OutboundStream`` (pure, injected ``now``) owns a per-turn ``JitterBuffer`` and
  decides, once per pacer tick, which single frame goes out: agent audio while a
  turn plays, silence otherwise. Silence is sent every tick even when idle, so the
  caller's RTP stays continuous and ``AudioSocket()`` (which hangs up after ~2 s
  without frames) stays up.
* ``StreamingPlaybackManager`` (``streaming_playback_manager.py``) is the thin
  asyncio-side glue that ticks every stream from the single ``Pacer``.

Turn life cycle (``StreamState``)::

    IDLE ──begin_turn/push──▶ BUFFERING ──depth ≥ min_start (or turn ended)──▶ PLAYING
    PLAYING ──depth < low_watermark, turn still open──▶ PAUSED ──depth ≥ min_start──▶ PLAYING
    PLAYING/PAUSED ──end_turn──▶ DRAINING ──all audio sent + grace over──▶ (ENDED) ──▶ IDLE

Pause/resume semantics (the exact rule, checked once per tick before a frame is
taken): while the turn is open, if fewer than ``low_watermark`` frames are queued,
the stream pauses (silence, ``StreamingPaused``); it resumes when ``min_start``
frames are queued again (``StreamingResumed``), i.e. it re-buffers the same cushion
a turn starts with, so it cannot re-pause on the next tick. The stream is never
torn down or restarted: a turn has exactly one ``StreamingStarted``.

Why the default low watermark is one frame: see ``voiceline.core.stream_params``.

Turns queue behind each other: a ``begin_turn`` while the previous turn is still
draining does not cut it; the new turn plays when the previous one has finished.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

import structlog

from voiceline.audio.formats import AudioFormat
from voiceline.core.jitter_buffer import JitterBuffer
from voiceline.core.log_levels import is_debug
from voiceline.core.stream_events import (
    END_REASONS,
    FallbackRequested,
    FlushResult,
    StreamEvent,
    StreamingEnded,
    StreamingPaused,
    StreamingResumed,
    StreamingStarted,
    StreamState,
)
from voiceline.core.stream_params import StreamParams
from voiceline.core.stream_stats import StreamStats
from voiceline.core.stream_turn import Turn

__all__ = ["OutboundStream"]

log = structlog.get_logger("voiceline.streaming")

# Timers compare float seconds built from tick arithmetic (k * 0.020 + 4.0 ...);
# a microsecond of slack keeps "exactly at the deadline" deterministic.
_EPS = 1e-6


class OutboundStream:
    """Pure per-call outbound audio state machine; every method takes ``now`` (s).

    Call ``tick(now)`` exactly once per pacer period; it returns exactly one wire
    frame. Events are queued for ``drain_events()``; if ``on_event`` is given they
    are delivered to it instead, at the end of the method call that produced them
    (never mid-transition, so the callback may call back into the stream).
    """

    def __init__(
        self,
        call_id: str,
        wire_format: AudioFormat,
        params: StreamParams | None = None,
        *,
        on_event: Callable[[StreamEvent], None] | None = None,
    ) -> None:
        params = params if params is not None else StreamParams()
        params.validate()
        self.call_id = call_id
        self.wire_format = wire_format
        self.params = params
        self.frame_bytes = wire_format.bytes_for_ms(params.chunk_size_ms)
        if self.frame_bytes <= 0:
            raise ValueError(
                f"{wire_format} has no whole sample in {params.chunk_size_ms} ms"
            )
        self.min_start_frames = params.frames(params.min_start_ms)
        self.low_watermark_frames = params.frames(params.low_watermark_ms)
        self.capacity_frames = params.frames(params.max_buffer_ms)
        self._fallback_s = (
            params.fallback_timeout_ms / 1000.0 if params.fallback_timeout_ms else None
        )
        self._grace_s = params.provider_grace_ms / 1000.0
        self._silence = wire_format.silence(self.frame_bytes)
        self._pad = wire_format.silence(1)
        self._bps = wire_format.bytes_per_sample
        self._debug = is_debug(params.logging_level)
        self._on_event = on_event
        self._events: deque[StreamEvent] = deque()
        self._queue: deque[Turn] = deque()  # turns with audio still to play; [0] plays
        self._context: Turn | None = None  # the turn chunks are attributed to
        self._turn_count = 0
        self._closed = False
        self._sent_audio = False
        self._held_since: float | None = None
        self.stats = StreamStats()

    # ---- introspection ----------------------------------------------------------

    @property
    def state(self) -> StreamState:
        if self._closed or not self._queue:
            return StreamState.IDLE
        t = self._queue[0]
        if not t.started:
            return StreamState.BUFFERING
        if t.ended:
            return StreamState.DRAINING
        return StreamState.PAUSED if t.paused else StreamState.PLAYING

    @property
    def depth_frames(self) -> int:
        """Whole frames queued over all turns waiting to play."""
        return sum(t.buffer.depth_frames for t in self._queue)

    @property
    def current_turn_id(self) -> str | None:
        """The turn chunks are currently attributed to, if it still accepts chunks."""
        ctx = self._context
        return ctx.turn_id if ctx is not None and not ctx.closed else None

    @property
    def closed(self) -> bool:
        return self._closed

    def drain_events(self) -> list[StreamEvent]:
        events = list(self._events)
        self._events.clear()
        return events

    # ---- provider side ----------------------------------------------------------

    def begin_turn(self, now: float, turn_id: str | None = None) -> str:
        """Open a new agent turn (AgentStartedSpeaking). Returns its turn id.

        An open previous turn is implicitly ended; the grace of an ended one is cut
        short. Either way its queued audio still plays before the new turn.
        """
        if self._closed:
            raise RuntimeError(f"stream {self.call_id} is closed")
        turn_id = self._begin(now, turn_id)
        self._dispatch()
        return turn_id

    def _begin(self, now: float, turn_id: str | None) -> str:
        self._expire(now)
        prev = self._context
        if prev is not None and not prev.closed:
            if not prev.ended:
                prev.ended = True
                if self._debug:
                    log.debug(
                        "streaming turn implicitly ended",
                        call_id=self.call_id,
                        turn_id=prev.turn_id,
                    )
            self._close_context(prev, emit_rest=True)
        self._turn_count += 1
        n = self._turn_count
        turn = Turn(
            n,
            turn_id or f"turn{n}",
            JitterBuffer(self.frame_bytes, self.capacity_frames),
            now,
        )
        self.stats.turns += 1
        self._context = turn
        self._queue.append(turn)
        if len(self._queue) == 1:
            self._activate(turn, now)
        return turn.turn_id

    def push(self, chunk: bytes, now: float) -> int:
        """Queue agent audio (wire format, any size). Returns frames dropped for capacity.

        With no turn ever opened, a push opens one. Chunks of a turn that no longer
        accepts audio (flushed, ended and past its grace, or the stream is closed)
        are discarded and counted in ``late_chunks_dropped`` until ``begin_turn``.
        """
        if not chunk:
            return 0
        dropped = self._push(chunk, now)
        self._dispatch()
        return dropped

    def _push(self, chunk: bytes, now: float) -> int:
        self._expire(now)
        turn = self._context
        if self._closed or (turn is not None and turn.closed):
            self.stats.late_chunks_dropped += 1
            if turn is not None:
                turn.late_chunks_dropped += 1
            if self._debug:
                log.debug(
                    "streaming late chunk dropped",
                    call_id=self.call_id,
                    turn_id=turn.turn_id if turn else None,
                    nbytes=len(chunk),
                )
            return 0
        if turn is None:
            self._begin(now, None)
            turn = self._context
            assert turn is not None
        if turn.first_chunk_at is None:
            turn.first_chunk_at = now
        if turn.fallen_back:
            assert turn.fallback_rest is not None
            turn.fallback_rest += chunk
            return 0
        data: bytes | memoryview = chunk
        if turn.skip_bytes:
            # The turn's final partial frame was already padded and sent, and it ended
            # inside a sample; drop that sample's orphaned bytes to keep alignment.
            k = min(turn.skip_bytes, len(chunk))
            turn.skip_bytes -= k
            data = memoryview(chunk)[k:]
        others = sum(t.buffer.depth_frames for t in self._queue if t is not turn)
        turn.buffer.capacity_frames = max(0, self.capacity_frames - others)
        dropped = turn.buffer.push(data)
        if dropped:
            if not turn.overflow_dropped:
                log.warning(
                    "streaming buffer overflow, newest audio dropped",
                    call_id=self.call_id,
                    turn_id=turn.turn_id,
                    capacity_frames=self.capacity_frames,
                )
            turn.overflow_dropped += dropped
            self.stats.overflow_frames_dropped += dropped
        return dropped

    def end_turn(self, now: float) -> None:
        """The provider sent every chunk of the turn (AgentAudioDone)."""
        self._expire(now)
        turn = self._context
        if turn is None or turn.closed or turn.ended:
            if self._debug:
                log.debug("streaming end_turn without open turn", call_id=self.call_id)
        else:
            turn.ended = True
            turn.grace_deadline = now + self._grace_s
            if self._grace_s <= 0:
                self._close_context(turn, emit_rest=True)
        self._dispatch()

    # ---- phone side -------------------------------------------------------------

    @property
    def held(self) -> bool:
        return self._held_since is not None

    @property
    def last_tick_sent_audio(self) -> bool:
        """Whether the frame returned by the last ``tick`` was agent audio."""
        return self._sent_audio

    def hold(self, now: float) -> bool:
        """Soft barge-in: send silence without consuming queued audio until ``release``.

        A hold is not a stall and not a pause: no pause is counted, nothing is
        dropped, and the fallback timer is pushed back by the held time on release.
        Returns False when there was nothing to hold (no turn playing, or closed).
        """
        if self._closed or self._held_since is not None or not self._queue or not self._queue[0].started:
            return False
        self._held_since = now
        return True

    def release(self, now: float) -> None:
        """End a hold: playback continues exactly where it stopped."""
        if self._held_since is None:
            return
        held_for = now - self._held_since
        self._held_since = None
        for turn in self._queue:
            turn.fallback_deadline += held_for

    def tick(self, now: float) -> bytes:
        """One pacer tick: exactly one wire frame (agent audio or silence)."""
        self._expire(now)
        self._sent_audio = False
        frame: bytes | None = None
        if self._held_since is not None:
            frame = self._silence
        elif not self._closed:
            if self._queue:
                head = self._queue[0]
                if head.started and not head.ended:
                    self.stats.depth.add(self.depth_frames)
            while self._queue:
                frame = self._play(self._queue[0], now)
                if frame is not None:
                    break
        if frame is None:
            frame = self._silence
        if not self._sent_audio:
            self.stats.silence_frames += 1
        self._dispatch()
        return frame

    def flush(self, now: float, reason: str = "barge-in") -> FlushResult:
        """Drop everything queued at once and close the turn (barge-in).

        Chunks of the flushed turn arriving afterwards are discarded and counted
        until the next ``begin_turn``. Collected fallback audio is discarded too.
        """
        if reason not in END_REASONS:
            raise ValueError(f"unknown end reason {reason!r}")
        self._held_since = None
        self._expire(now)
        head = self._queue[0] if self._queue else None
        ctx = self._context
        played_ms = (
            self.wire_format.ms_for_bytes(head.audio_bytes_sent) if head else 0.0
        )
        turn_id = (
            head.turn_id
            if head
            else (ctx.turn_id if ctx is not None and not ctx.closed else None)
        )
        dropped = 0
        if ctx is not None and not ctx.closed:
            if ctx.fallback_rest:
                dropped += math.ceil(len(ctx.fallback_rest) / self.frame_bytes)
            self._close_context(ctx, emit_rest=False)
        while self._queue:
            turn = self._queue[0]
            frames, partial = turn.buffer.flush()
            dropped += frames + (1 if partial else 0)
            self._finish(turn, now, reason)
        self.stats.flushed_frames += dropped
        if self._debug:
            log.debug(
                "streaming flushed",
                call_id=self.call_id,
                reason=reason,
                played_ms=played_ms,
                dropped_frames=dropped,
            )
        self._dispatch()
        return FlushResult(played_ms=played_ms, dropped_frames=dropped, turn_id=turn_id)

    def close(self, now: float) -> FlushResult:
        """The call ended: end every turn with reason "call-ended". Idempotent."""
        if self._closed:
            return FlushResult(played_ms=0.0, dropped_frames=0)
        result = self.flush(now, reason="call-ended")
        self._closed = True
        return result

    # ---- internals --------------------------------------------------------------

    def _emit(self, event: StreamEvent) -> None:
        self._events.append(event)

    def _dispatch(self) -> None:
        if self._on_event is None:
            return
        while self._events:
            self._on_event(self._events.popleft())

    def _expire(self, now: float) -> None:
        """Close the context turn when its grace window has passed."""
        ctx = self._context
        if ctx is not None and not ctx.closed and now >= ctx.grace_deadline - _EPS:
            self._close_context(ctx, emit_rest=True)

    def _close_context(self, turn: Turn, *, emit_rest: bool) -> None:
        turn.closed = True
        rest, turn.fallback_rest = turn.fallback_rest, None
        if emit_rest and rest:
            self._emit(
                FallbackRequested(
                    call_id=self.call_id,
                    turn_id=turn.turn_id,
                    audio=bytes(rest),
                    playback_id=f"voiceline-{self.call_id}-turn{turn.n}-fallback-rest",
                )
            )

    def _activate(self, turn: Turn, now: float) -> None:
        """``turn`` became the playing (head) turn."""
        turn.head_since = now
        if self._fallback_s is not None:
            turn.fallback_deadline = now + self._fallback_s

    def _fallback_due(self, turn: Turn, now: float) -> bool:
        return not turn.ended and now >= turn.fallback_deadline - _EPS

    def _play(self, turn: Turn, now: float) -> bytes | None:
        """This tick's frame for the head turn, or None if the turn just left the queue."""
        buf = turn.buffer
        if not turn.started:
            depth = buf.depth_frames
            if depth >= self.min_start_frames or (
                turn.ended and (depth or buf.partial_bytes)
            ):
                self._start(turn, now, depth)
            elif turn.ended and turn.closed:
                self._finish(turn, now, "completed")  # a turn without audio
                return None
            elif self._fallback_due(turn, now):
                self._fall_back(turn, now)
                return None
            else:
                return self._silence
        if turn.paused:
            if turn.ended:
                resume = buf.depth_frames > 0 or buf.partial_bytes > 0
            else:
                resume = buf.depth_frames >= self.min_start_frames
            if resume:
                turn.paused = False
                self._emit(
                    StreamingResumed(
                        call_id=self.call_id,
                        turn_id=turn.turn_id,
                        depth=buf.depth_frames,
                        paused_ms=(now - turn.paused_at) * 1000.0,
                    )
                )
                if self._debug:
                    log.debug(
                        "streaming resumed",
                        call_id=self.call_id,
                        turn_id=turn.turn_id,
                        depth=buf.depth_frames,
                    )
            elif turn.ended and turn.closed:
                self._finish(turn, now, "completed")
                return None
            elif self._fallback_due(turn, now):
                self._fall_back(turn, now)
                return None
            else:
                turn.pending_silence += 1
                return self._silence
        if not turn.ended:
            if buf.depth_frames < self.low_watermark_frames:
                turn.paused = True
                turn.paused_at = now
                turn.pauses += 1
                self.stats.pauses += 1
                self._emit(
                    StreamingPaused(
                        call_id=self.call_id,
                        turn_id=turn.turn_id,
                        depth=buf.depth_frames,
                        frames_sent=turn.frames_sent,
                    )
                )
                if self._debug:
                    log.debug(
                        "streaming paused",
                        call_id=self.call_id,
                        turn_id=turn.turn_id,
                        depth=buf.depth_frames,
                    )
                turn.pending_silence += 1
                return self._silence
            frame = buf.pop()
            assert frame is not None  # depth >= low watermark >= 1
            return self._send(turn, frame, len(frame), now)
        # Draining: the turn has ended, play everything left including the partial.
        frame = buf.pop()
        if frame is not None:
            return self._send(turn, frame, len(frame), now)
        partial = buf.partial_bytes
        if partial:
            frame = buf.take_partial_padded(self._pad)
            assert frame is not None
            misaligned = partial % self._bps
            if misaligned:
                turn.skip_bytes = self._bps - misaligned
            return self._send(turn, frame, partial, now)
        if turn.closed:
            self._finish(turn, now, "completed")
            return None
        turn.pending_silence += 1  # waiting out the grace window
        return self._silence

    def _start(self, turn: Turn, now: float, depth: int) -> None:
        turn.stream_starts += 1
        if (
            turn.stream_starts > 1
        ):  # unreachable by construction; visible if it regresses
            self.stats.restarts += 1
            log.error(
                "streaming restarted a turn", call_id=self.call_id, turn_id=turn.turn_id
            )
            return
        turn.started = True
        ref = turn.head_since if turn.head_since is not None else turn.began_at
        if turn.first_chunk_at is not None and turn.first_chunk_at > ref:
            ref = turn.first_chunk_at
        latency_ms = (now - ref) * 1000.0
        self.stats.stream_starts += 1
        self.stats.first_frame_latency_ms.append(latency_ms)
        self._emit(
            StreamingStarted(
                call_id=self.call_id,
                turn_id=turn.turn_id,
                first_frame_latency_ms=latency_ms,
                depth=depth,
            )
        )

    def _send(self, turn: Turn, frame: bytes, audio_bytes: int, now: float) -> bytes:
        if turn.pending_silence:
            turn.silence_inserted += turn.pending_silence
            self.stats.silence_frames_inserted += turn.pending_silence
            turn.pending_silence = 0
        turn.frames_sent += 1
        turn.audio_bytes_sent += audio_bytes
        if self._fallback_s is not None:
            turn.fallback_deadline = now + self._fallback_s
        self.stats.frames_sent += 1
        self._sent_audio = True
        return frame

    def _fall_back(self, turn: Turn, now: float) -> None:
        audio = turn.buffer.take_all()
        turn.fallen_back = True
        turn.fallback_rest = bytearray()
        self.stats.fallbacks += 1
        self._emit(
            FallbackRequested(
                call_id=self.call_id,
                turn_id=turn.turn_id,
                audio=audio,
                playback_id=f"voiceline-{self.call_id}-turn{turn.n}-fallback",
            )
        )
        self._finish(turn, now, "fallback")

    def _finish(self, turn: Turn, now: float, reason: str) -> None:
        head = self._queue.popleft()
        assert head is turn
        self._emit(
            StreamingEnded(
                call_id=self.call_id,
                turn_id=turn.turn_id,
                frames_sent=turn.frames_sent,
                silence_frames_inserted=turn.silence_inserted,
                pauses=turn.pauses,
                duration_ms=(turn.frames_sent + turn.silence_inserted)
                * self.params.chunk_size_ms,
                late_chunks_dropped=turn.late_chunks_dropped,
                reason=reason,
            )
        )
        if self._queue:
            self._activate(self._queue[0], now)

