"""Bookkeeping of one agent turn inside an ``OutboundStream`` (plain mutable record).

Only ``OutboundStream`` reads and writes these fields; it lives apart so the state
machine's module stays about its rules.
"""

from __future__ import annotations

import math

from voiceline.core.jitter_buffer import JitterBuffer

__all__ = ["Turn"]


class Turn:
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
