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
* ``StreamingPlaybackManager`` is the thin asyncio-side glue: it registers each
  stream's tick with the single ``Pacer``, hands the frame to ``send_frame`` and
  dispatches/logs events. It never touches timing itself.

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

Why the default low watermark is one frame (20 ms): a pause only trades audio for
silence, it never prevents silence. Pausing while frames are still queued inserts
the gap *earlier* than a dry buffer would, and needlessly whenever the next chunk
was about to arrive. With ``low_watermark_ms = chunk_size_ms`` the stream pauses
exactly when a tick finds no whole frame to send, which is the one moment silence
is unavoidable. Then a provider that stays ahead of real time never pauses: a turn
starts with at least ``min_start`` queued and, at rate ``r >= 1``, every chunk brings
more audio than the ticks consume until the next one arrives, so the queue can
only run dry when a chunk is later than the cushion built up so far. Bursts only
raise the depth. A higher watermark turns a merely late chunk into a pause: with
1.2x 200 ms chunks, one of them 40 ms late, the queue dips to a single frame; the
default plays it and the chunk is in for the next tick, a 40 ms watermark inserts
silence (see the unit tests). The hysteresis up to ``min_start`` turns a slow
(< 1x) provider's underruns into few ~120 ms gaps instead of a frame-by-frame
stutter.

Turns queue behind each other: a ``begin_turn`` while the previous turn is still
draining does not cut it; the new turn plays when the previous one has finished.
"""

from __future__ import annotations

import inspect
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import structlog

from voiceline.audio.formats import AudioFormat
from voiceline.core.jitter_buffer import JitterBuffer
from voiceline.core.pacer import Pacer

__all__ = [
    "DepthHistogram",
    "FallbackRequested",
    "FlushResult",
    "OutboundStream",
    "StreamEvent",
    "StreamParams",
    "StreamState",
    "StreamStats",
    "StreamingEnded",
    "StreamingPaused",
    "StreamingPlaybackManager",
    "StreamingResumed",
    "StreamingStarted",
]

log = structlog.get_logger("voiceline.streaming")

# Timers compare float seconds built from tick arithmetic (k * 0.020 + 4.0 ...);
# a microsecond of slack keeps "exactly at the deadline" deterministic.
_EPS = 1e-6

_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
END_REASONS = ("completed", "barge-in", "fallback", "call-ended")


def _is_debug(level: str) -> bool:
    return level.upper() == "DEBUG"


# ---- parameters -------------------------------------------------------------------


@dataclass(frozen=True)
class StreamParams:
    """Outbound streaming settings, in milliseconds of audio (validated on creation).

    Millisecond settings are turned into frame counts per stream with ``ceil`` (a
    setting is never rounded down to less protection than asked for).
    """

    chunk_size_ms: int = 20
    """Wire frame length. 20 ms is Asterisk's native slin/μ-law framing and the
    mixing bridge's interval; it must equal the pacer period. Multiples of 10 in
    [10, 60] are accepted (larger frames would not fit the bridge's ~80 ms queue)."""

    min_start_ms: int = 120
    """Audio queued before a turn starts (and before a paused turn resumes).
    Absorbs the chunk jitter of streaming TTS over websockets (tens of ms, up to
    ~100 ms) while adding at most ~120 ms of first-frame latency for a provider that
    delivers at real time; a provider ahead of real time fills it with its first
    chunk, so it costs nothing there. A turn that has already ended starts at once
    with whatever it has."""

    low_watermark_ms: int = 20
    """Pause when fewer than this many ms of whole frames are queued while the turn
    is still open. One frame (the minimum) means "pause only when a tick finds
    nothing to send": pausing earlier never avoids silence, it only moves the gap
    earlier and can insert it needlessly (see the module docstring)."""

    jitter_buffer_ms: int = 60_000
    """Capacity of queued agent audio per call (whole turns queued behind each other
    share it). This is a memory bound, not latency: playback is paced at real time
    and barge-in flushes everything. Providers often deliver a whole answer far
    ahead of real time (a 5 s burst in one message is normal), so a 2 s capacity
    would cut speech. 60 s costs at most 0.96 MB (slin16@8000) / 1.9 MB
    (slin16@16000) per call, and only while a provider is that far ahead. On
    overflow the newest frames are dropped and counted."""

    fallback_timeout_ms: int = 4000
    """During an open turn, if no agent frame has been sent for this long (timer
    restarted at turn start and by every transmitted agent frame), the provider is
    considered stalled and the rest of the turn is handed over for file playback
    (``FallbackRequested``). 4 s outlasts ordinary TTS hiccups (0.5-2 s under load,
    a 3 s stall still resumes) but does not leave the caller in dead air much longer
    than a person would wait. 0 disables the fallback."""

    provider_grace_ms: int = 500
    """After ``end_turn`` (AgentAudioDone), chunks of that turn arriving within this
    window still play: a provider's final chunk may be delivered a little after its
    done marker. Later chunks are discarded and counted as late. A new
    ``begin_turn`` ends the grace at once."""

    logging_level: str = "INFO"
    """Level for this component's debug logging (``DEBUG`` enables per-event debug
    lines; nothing is ever logged per frame at INFO)."""

    def __post_init__(self) -> None:
        self.validate()

    def frames(self, ms: int) -> int:
        """Frames needed to cover ``ms`` (ceil)."""
        return math.ceil(ms / self.chunk_size_ms)

    def validate(self) -> None:
        """Raise ValueError naming the offending field."""
        for name in (
            "chunk_size_ms",
            "min_start_ms",
            "low_watermark_ms",
            "jitter_buffer_ms",
            "fallback_timeout_ms",
            "provider_grace_ms",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                # Config errors are all ValueError (naming the field) for the loader.
                msg = f"{name} must be an integer number of ms, got {value!r}"
                raise ValueError(msg)  # noqa: TRY004
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        chunk = self.chunk_size_ms
        if chunk % 10 or not 10 <= chunk <= 60:
            raise ValueError(
                f"chunk_size_ms must be a multiple of 10 in [10, 60], got {chunk}"
            )
        if self.min_start_ms < chunk:
            raise ValueError(
                f"min_start_ms ({self.min_start_ms}) must be >= chunk_size_ms ({chunk})"
            )
        if self.low_watermark_ms < chunk:
            raise ValueError(
                f"low_watermark_ms ({self.low_watermark_ms}) must be >= chunk_size_ms ({chunk}):"
                " a stream with no frame to send must count as paused"
            )
        if self.frames(self.low_watermark_ms) >= self.frames(self.min_start_ms):
            raise ValueError(
                f"low_watermark_ms ({self.low_watermark_ms}) must be below min_start_ms"
                f" ({self.min_start_ms}) by at least one {chunk} ms frame, or a resumed"
                " stream would pause again at once"
            )
        if self.jitter_buffer_ms < self.min_start_ms:
            raise ValueError(
                f"jitter_buffer_ms ({self.jitter_buffer_ms}) must be >= min_start_ms"
                f" ({self.min_start_ms}), or a turn could never start"
            )
        if self.fallback_timeout_ms and self.fallback_timeout_ms <= self.min_start_ms:
            raise ValueError(
                f"fallback_timeout_ms ({self.fallback_timeout_ms}) must be 0 (disabled) or"
                f" > min_start_ms ({self.min_start_ms}), or a real-time provider would fall"
                " back while its first frames are still buffering"
            )
        if (
            not isinstance(self.logging_level, str)
            or self.logging_level.upper() not in _LEVELS
        ):
            raise ValueError(
                f"logging_level must be one of {_LEVELS}, got {self.logging_level!r}"
            )


# ---- events -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamingStarted:
    """First agent frame of a turn was sent. Exactly one per turn that plays audio.

    ``first_frame_latency_ms`` is the stream's own latency: from when it had this
    turn's audio and could play it (first chunk, or the previous turn finishing if
    later) to the first frame sent. ``depth`` is whole frames queued at that moment.
    """

    call_id: str
    turn_id: str
    first_frame_latency_ms: float
    depth: int


@dataclass(frozen=True, slots=True)
class StreamingPaused:
    call_id: str
    turn_id: str
    depth: int
    frames_sent: int


@dataclass(frozen=True, slots=True)
class StreamingResumed:
    call_id: str
    turn_id: str
    depth: int
    paused_ms: float


@dataclass(frozen=True, slots=True)
class StreamingEnded:
    """A turn left the stream. Exactly one per turn (even one that never played).

    ``silence_frames_inserted`` counts silence sent between the turn's first and
    last agent frame (the gaps the caller heard inside speech). ``duration_ms`` is
    ``(frames_sent + silence_frames_inserted) * chunk_size_ms``. ``late_chunks_dropped``
    counts chunks of this turn discarded before this event; stragglers that arrive
    after it (e.g. after a barge-in) are only in ``StreamStats``.
    """

    call_id: str
    turn_id: str
    frames_sent: int
    silence_frames_inserted: int
    pauses: int
    duration_ms: int
    late_chunks_dropped: int
    reason: str  # "completed" | "barge-in" | "fallback" | "call-ended"


@dataclass(frozen=True, slots=True)
class FallbackRequested:
    """Play ``audio`` (wire format, not yet sent) by other means, e.g. ARI playback.

    Emitted when the fallback timer expires during an open turn, with everything
    queued for the turn (whole frames + raw partial; may be empty if nothing had
    arrived). Chunks of that turn still arriving are collected and, when the turn's
    window closes (end_turn + grace, or the next begin_turn), handed over in one
    further event with ``playback_id`` suffix ``-fallback-rest``. The concatenation
    of both ``audio`` fields is exactly the turn's unsent audio.
    """

    call_id: str
    turn_id: str
    audio: bytes
    playback_id: str


StreamEvent = (
    StreamingStarted
    | StreamingPaused
    | StreamingResumed
    | StreamingEnded
    | FallbackRequested
)


@dataclass(frozen=True, slots=True)
class FlushResult:
    """``played_ms``: agent audio of the playing turn that reached the caller (padding
    excluded). ``dropped_frames``: frames that would still have been sent (whole
    frames, plus one per non-empty partial)."""

    played_ms: float
    dropped_frames: int
    turn_id: str | None = None


class StreamState(str, Enum):
    IDLE = "idle"
    BUFFERING = "buffering"
    PLAYING = "playing"
    PAUSED = "paused"
    DRAINING = "draining"


# ---- stats ------------------------------------------------------------------------


class DepthHistogram:
    """Running histogram of queue depths in whole frames: O(distinct depths) memory,
    bounded by the buffer capacity, independent of call length."""

    __slots__ = ("_counts", "_total", "count", "max", "min")

    def __init__(self) -> None:
        self._counts: dict[int, int] = {}
        self.count = 0
        self._total = 0
        self.min: int | None = None
        self.max: int | None = None

    def add(self, depth: int) -> None:
        self._counts[depth] = self._counts.get(depth, 0) + 1
        self.count += 1
        self._total += depth
        if self.min is None or depth < self.min:
            self.min = depth
        if self.max is None or depth > self.max:
            self.max = depth

    @property
    def mean(self) -> float | None:
        return self._total / self.count if self.count else None

    def percentile(self, p: float) -> int | None:
        """Nearest-rank percentile (0 < p <= 100)."""
        if not self.count:
            return None
        rank = max(1, math.ceil(p / 100 * self.count))
        seen = 0
        for depth in sorted(self._counts):
            seen += self._counts[depth]
            if seen >= rank:
                return depth
        return self.max

    def summary(self) -> dict[str, float | int | None]:
        return {
            "samples": self.count,
            "min": self.min,
            "mean": self.mean,
            "p95": self.percentile(95),
            "max": self.max,
        }


@dataclass
class StreamStats:
    """Per-call telemetry.

    ``restarts`` counts a second ``StreamingStarted`` for the same turn; it is 0 by
    construction and exists so a regression would show (``stream_starts`` counts
    the first one per turn). ``depth`` samples the whole frames queued once per tick
    while a turn plays with the provider still sending (PLAYING/PAUSED): that is the
    cushion against provider jitter; a drained burst would only skew it.
    ``first_frame_latency_ms`` has one entry per turn that played.
    """

    frames_sent: int = 0
    silence_frames: int = 0
    silence_frames_inserted: int = 0
    pauses: int = 0
    restarts: int = 0
    stream_starts: int = 0
    fallbacks: int = 0
    late_chunks_dropped: int = 0
    overflow_frames_dropped: int = 0
    flushed_frames: int = 0
    turns: int = 0
    first_frame_latency_ms: list[float] = field(default_factory=list)
    depth: DepthHistogram = field(default_factory=DepthHistogram)

    def as_dict(self) -> dict[str, object]:
        d: dict[str, object] = {
            name: getattr(self, name)
            for name in self.__dataclass_fields__
            if name != "depth"
        }
        d["first_frame_latency_ms"] = list(self.first_frame_latency_ms)
        d["depth"] = self.depth.summary()
        return d


# ---- the per-call state machine ----------------------------------------------------


class _Turn:
    __slots__ = (
        "audio_bytes_sent",
        "began_at",
        "buffer",
        "closed",
        "ended",
        "fallback_deadline",
        "fallback_rest",
        "fallen_back",
        "first_chunk_at",
        "frames_sent",
        "grace_deadline",
        "head_since",
        "late_chunks_dropped",
        "n",
        "overflow_dropped",
        "paused",
        "paused_at",
        "pauses",
        "pending_silence",
        "silence_inserted",
        "skip_bytes",
        "started",
        "stream_starts",
        "turn_id",
    )

    def __init__(self, n: int, turn_id: str, buffer: JitterBuffer, now: float) -> None:
        self.n = n
        self.turn_id = turn_id
        self.buffer = buffer
        self.began_at = now
        self.first_chunk_at: float | None = None
        self.head_since: float | None = None
        self.fallback_deadline = math.inf
        self.ended = False  # end_turn received (or implied by the next begin_turn)
        self.grace_deadline = math.inf
        self.closed = False  # no further chunks accepted for this turn
        self.started = False
        self.stream_starts = 0
        self.paused = False
        self.paused_at = 0.0
        self.frames_sent = 0
        self.audio_bytes_sent = 0
        self.pending_silence = 0
        self.silence_inserted = 0
        self.pauses = 0
        self.late_chunks_dropped = 0
        self.overflow_dropped = 0
        self.fallen_back = False
        self.fallback_rest: bytearray | None = None
        self.skip_bytes = 0


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
        self.capacity_frames = params.frames(params.jitter_buffer_ms)
        self._fallback_s = (
            params.fallback_timeout_ms / 1000.0 if params.fallback_timeout_ms else None
        )
        self._grace_s = params.provider_grace_ms / 1000.0
        self._silence = wire_format.silence(self.frame_bytes)
        self._pad = wire_format.silence(1)
        self._bps = wire_format.bytes_per_sample
        self._debug = _is_debug(params.logging_level)
        self._on_event = on_event
        self._events: deque[StreamEvent] = deque()
        self._queue: deque[_Turn] = deque()  # turns with audio still to play; [0] plays
        self._context: _Turn | None = None  # the turn chunks are attributed to
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
        turn = _Turn(
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

    def _close_context(self, turn: _Turn, *, emit_rest: bool) -> None:
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

    def _activate(self, turn: _Turn, now: float) -> None:
        """``turn`` became the playing (head) turn."""
        turn.head_since = now
        if self._fallback_s is not None:
            turn.fallback_deadline = now + self._fallback_s

    def _fallback_due(self, turn: _Turn, now: float) -> bool:
        return not turn.ended and now >= turn.fallback_deadline - _EPS

    def _play(self, turn: _Turn, now: float) -> bytes | None:
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

    def _start(self, turn: _Turn, now: float, depth: int) -> None:
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

    def _send(self, turn: _Turn, frame: bytes, audio_bytes: int, now: float) -> bytes:
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

    def _fall_back(self, turn: _Turn, now: float) -> None:
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

    def _finish(self, turn: _Turn, now: float, reason: str) -> None:
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


# ---- asyncio-side glue --------------------------------------------------------------


class _Entry:
    __slots__ = ("on_event", "stream")

    def __init__(
        self, stream: OutboundStream, on_event: Callable[[StreamEvent], None] | None
    ) -> None:
        self.stream = stream
        self.on_event = on_event


class StreamingPlaybackManager:
    """Registers each call's ``OutboundStream`` with the single ``Pacer``.

    Per tick it calls ``stream.tick(now)`` and hands the frame to ``send_frame``,
    which must be a plain non-blocking call (e.g. ``transport.write``); returning an
    awaitable is an error (it would never run). Logs ``STREAMING STARTED`` /
    ``STREAMING ENDED`` once per turn at INFO.
    """

    def __init__(
        self,
        params: StreamParams,
        pacer: Pacer,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        params.validate()
        if abs(pacer.period_s * 1000.0 - params.chunk_size_ms) > 1e-6:
            raise ValueError(
                f"chunk_size_ms ({params.chunk_size_ms}) must equal the pacer period"
                f" ({pacer.period_s * 1000.0:g} ms)"
            )
        self._params = params
        self._pacer = pacer
        self._clock = clock if clock is not None else pacer.now
        self._debug = _is_debug(params.logging_level)
        self._entries: dict[str, _Entry] = {}

    @property
    def params(self) -> StreamParams:
        return self._params

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, call_id: str) -> OutboundStream | None:
        entry = self._entries.get(call_id)
        return entry.stream if entry is not None else None

    def open(
        self,
        call_id: str,
        wire_format: AudioFormat,
        send_frame: Callable[[bytes], object],
        on_event: Callable[[StreamEvent], None] | None = None,
    ) -> OutboundStream:
        if call_id in self._entries:
            raise ValueError(f"a stream for call {call_id!r} is already open")
        entry_box: list[_Entry] = []

        def handle(event: StreamEvent) -> None:
            self._log_event(event)
            cb = entry_box[0].on_event
            if cb is not None:
                cb(event)

        stream = OutboundStream(call_id, wire_format, self._params, on_event=handle)
        entry = _Entry(stream, on_event)
        entry_box.append(entry)

        def tick(now: float) -> None:
            frame = stream.tick(now)
            result = send_frame(frame)
            if inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()
                raise TypeError(
                    f"send_frame for call {call_id!r} returned an awaitable; it must be synchronous"
                )

        self._pacer.register(call_id, tick)
        self._entries[call_id] = entry
        if self._debug:
            log.debug(
                "streaming opened",
                call_id=call_id,
                wire_format=str(wire_format),
                frame_bytes=stream.frame_bytes,
            )
        return stream

    def close(self, call_id: str) -> FlushResult | None:
        """End an open turn with reason "call-ended" and stop ticking. Idempotent."""
        entry = self._entries.pop(call_id, None)
        if entry is None:
            return None
        self._pacer.unregister(call_id)
        result = entry.stream.close(self._clock())
        if self._debug:
            log.debug(
                "streaming closed", call_id=call_id, **entry.stream.stats.as_dict()
            )
        return result

    def _log_event(self, event: StreamEvent) -> None:
        if isinstance(event, StreamingStarted):
            log.info(
                "STREAMING STARTED",
                call_id=event.call_id,
                turn_id=event.turn_id,
                first_frame_latency_ms=round(event.first_frame_latency_ms, 1),
                depth_frames=event.depth,
            )
        elif isinstance(event, StreamingEnded):
            log.info(
                "STREAMING ENDED",
                call_id=event.call_id,
                turn_id=event.turn_id,
                reason=event.reason,
                frames_sent=event.frames_sent,
                silence_frames_inserted=event.silence_frames_inserted,
                pauses=event.pauses,
                duration_ms=event.duration_ms,
                late_chunks_dropped=event.late_chunks_dropped,
            )
        elif isinstance(event, FallbackRequested):
            log.warning(
                "streaming fallback requested",
                call_id=event.call_id,
                turn_id=event.turn_id,
                playback_id=event.playback_id,
                audio_bytes=len(event.audio),
            )
        # Paused/Resumed are logged at debug by the stream itself.
