"""Re-framing FIFO for agent audio on its way to the phone leg (pure, no I/O, no clock).

Providers hand us chunks of any size (1 byte to many seconds, odd byte counts
included); Asterisk must receive exact wire frames. ``JitterBuffer`` cuts the byte
stream into frames of ``frame_bytes`` and carries the remainder to the next push,
so the concatenation of popped frames is always exactly the pushed bytes: nothing
is padded or dropped mid-stream. Only at the very end of a turn does the owner ask
for the final partial frame padded with silence (``take_partial_padded``).

Overflow policy: when ``capacity_frames`` whole frames are queued, further whole
frames are **rejected (newest dropped)** and counted. For speech this is the right
end to cut: the frames already queued are the ones the caller is about to hear and
they stay contiguous with what is playing now; dropping the oldest would cut into
the word being spoken. The capacity is a memory bound for a runaway provider, not a
latency knob (playback is paced at real time and a barge-in flushes everything), so
the owner sizes it generously and overflow should never happen on a sane call.

Cost: ``push`` is O(len(chunk)) (one copy per byte into its frame), ``pop`` O(1).
"""

from __future__ import annotations

from collections import deque

__all__ = ["JitterBuffer"]


class JitterBuffer:
    """FIFO of exact ``frame_bytes`` frames plus one carried partial frame."""

    __slots__ = ("_capacity", "_frame_bytes", "_frames", "_partial", "frames_dropped")

    def __init__(self, frame_bytes: int, capacity_frames: int) -> None:
        if frame_bytes <= 0:
            raise ValueError(f"frame_bytes must be positive, got {frame_bytes}")
        if capacity_frames < 0:
            raise ValueError(f"capacity_frames must be >= 0, got {capacity_frames}")
        self._frame_bytes = frame_bytes
        self._capacity = capacity_frames
        self._frames: deque[bytes] = deque()
        self._partial = bytearray()
        #: Whole frames rejected because the buffer was full (cumulative).
        self.frames_dropped = 0

    # ---- properties -------------------------------------------------------------

    @property
    def frame_bytes(self) -> int:
        return self._frame_bytes

    @property
    def capacity_frames(self) -> int:
        return self._capacity

    @capacity_frames.setter
    def capacity_frames(self, value: int) -> None:
        """Adjustable so an owner can share one budget between several buffers.

        Lowering it below the current depth drops nothing already queued; it only
        makes the next pushes overflow sooner.
        """
        if value < 0:
            raise ValueError(f"capacity_frames must be >= 0, got {value}")
        self._capacity = value

    @property
    def depth_frames(self) -> int:
        """Whole frames ready to pop (the partial is not counted)."""
        return len(self._frames)

    @property
    def partial_bytes(self) -> int:
        """Bytes carried over that do not yet fill a frame (0 <= n < frame_bytes)."""
        return len(self._partial)

    @property
    def queued_bytes(self) -> int:
        return len(self._frames) * self._frame_bytes + len(self._partial)

    def __len__(self) -> int:
        return len(self._frames)

    # ---- operations -------------------------------------------------------------

    def push(self, chunk: bytes | bytearray | memoryview) -> int:
        """Append ``chunk``; return how many whole frames were dropped for capacity."""
        view = memoryview(chunk)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        n = view.nbytes
        if n == 0:
            return 0
        fb = self._frame_bytes
        partial = self._partial
        pos = 0
        dropped = 0
        if partial:
            need = fb - len(partial)
            if n < need:
                partial += view
                return 0
            partial += view[:need]
            pos = need
            if len(self._frames) < self._capacity:
                self._frames.append(bytes(partial))
            else:
                dropped += 1
            partial.clear()
        whole = (n - pos) // fb
        if whole:
            room = max(0, self._capacity - len(self._frames))
            keep = min(whole, room)
            frames = self._frames
            for _ in range(keep):
                frames.append(bytes(view[pos : pos + fb]))
                pos += fb
            # Frames beyond capacity are the newest ones: skipped without copying.
            pos += (whole - keep) * fb
            dropped += whole - keep
        if pos < n:
            partial += view[pos:]
        self.frames_dropped += dropped
        return dropped

    def pop(self) -> bytes | None:
        """The oldest whole frame, or None when no whole frame is queued."""
        if self._frames:
            return self._frames.popleft()
        return None

    def flush(self) -> tuple[int, int]:
        """Drop everything; return ``(frames_dropped, partial_dropped_bytes)``."""
        frames, partial = len(self._frames), len(self._partial)
        self._frames.clear()
        self._partial.clear()
        return frames, partial

    def take_all(self) -> bytes:
        """Remove and return every queued byte in order (whole frames + raw partial)."""
        data = b"".join(self._frames) + bytes(self._partial)
        self._frames.clear()
        self._partial.clear()
        return data

    def take_partial_padded(self, silence_byte_pattern: bytes) -> bytes | None:
        """End of turn only: the carried partial padded to a full frame, or None.

        The padding repeats ``silence_byte_pattern`` (e.g. ``b"\\x00"`` for slin16,
        ``b"\\xff"`` for μ-law). Calling it while whole frames are still queued would
        play the tail before them, so that is a programming error.
        """
        if self._frames:
            raise RuntimeError(
                f"take_partial_padded with {len(self._frames)} whole frames still queued"
            )
        if not self._partial:
            return None
        if not silence_byte_pattern:
            raise ValueError("silence_byte_pattern must not be empty")
        pad = self._frame_bytes - len(self._partial)
        reps = -(-pad // len(silence_byte_pattern))
        frame = bytes(self._partial) + (silence_byte_pattern * reps)[:pad]
        self._partial.clear()
        return frame
