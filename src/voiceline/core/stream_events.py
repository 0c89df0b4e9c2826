"""What an ``OutboundStream`` tells its owner about a turn (plain frozen records)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = [
    "END_REASONS",
    "FallbackRequested",
    "FlushResult",
    "StreamEvent",
    "StreamState",
    "StreamingEnded",
    "StreamingPaused",
    "StreamingResumed",
    "StreamingStarted",
]

END_REASONS = ("completed", "barge-in", "fallback", "call-ended")


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
