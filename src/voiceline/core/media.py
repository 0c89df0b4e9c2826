"""What a ``Call`` needs from the outside world, as interfaces the mode adapters implement.

The core never sees AudioSocket or ARI: a call's audio goes through a ``MediaLeg``
(in the shipped adapters, an AudioSocket connection) and, in ari mode, a stalled
turn can be finished by a ``PlaybackControl`` (ARI file playback). A mode without
file playback passes none.
"""

from __future__ import annotations

from typing import Protocol

from voiceline.core.stream_events import FallbackRequested

__all__ = ["MediaLeg", "PlaybackControl"]


class MediaLeg(Protocol):
    """The call's audio connection to the phone side (20 ms signed-linear frames)."""

    @property
    def sample_rate(self) -> int:
        """Rate of the signed-linear audio both ways (8000 for a plain AudioSocket leg)."""
        ...

    @property
    def closed(self) -> bool: ...

    @property
    def frames_out(self) -> int:
        """Frames written towards the caller so far (for the call summary)."""
        ...

    def send_frame(self, pcm: bytes) -> None:
        """Queue one frame for the caller; must not block (it runs on the pacer's tick)."""
        ...

    def poll_inbound(self) -> None:
        """Deliver what the phone side sent since the last call (to the call's
        ``on_caller_audio``/``on_dtmf``/...). Called in every pacer tick, after the
        frames were written, while the call's stream is open, so caller audio is
        handled in the media plane's own 20 ms step; a leg whose audio arrives by
        itself does nothing."""
        ...

    def hangup(self) -> None:
        """Ask the phone side to hang up and close the leg; idempotent."""
        ...


class PlaybackControl(Protocol):
    """File playback on the caller's channel, used to finish a stalled turn."""

    async def play_fallback(self, call_id: str, request: FallbackRequested) -> None:
        """Play ``request.audio`` to the caller; registers the playback with the coordinator."""
        ...

    def playing(self, call_id: str) -> bool:
        """Whether any file playback of the call has not finished yet."""
        ...

    async def stop_playbacks(self, call_id: str) -> None:
        """Barge-in: stop every playback of the call that is still running."""
        ...
