"""Outbound streaming settings (``streaming:`` in the config), validated on creation.

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from voiceline.core.log_levels import LOG_LEVELS

__all__ = ["StreamParams"]


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

    max_buffer_ms: int = 60_000
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
            "max_buffer_ms",
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
        if self.max_buffer_ms < self.min_start_ms:
            raise ValueError(
                f"max_buffer_ms ({self.max_buffer_ms}) must be >= min_start_ms"
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
            or self.logging_level.upper() not in LOG_LEVELS
        ):
            raise ValueError(
                f"logging_level must be one of {LOG_LEVELS}, got {self.logging_level!r}"
            )
