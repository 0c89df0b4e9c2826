"""Where the core reports what happened, without knowing about Prometheus or timelines.

``EngineEventSink`` receives call-lifecycle events, ``CallEventSink`` one call's
events (metrics and the call's timeline). The telemetry side implements both
(``voiceline.telemetry.call_sink``); the core only calls these methods.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["CallEventSink", "EngineEventSink"]


class CallEventSink(Protocol):
    def mark(self, kind: str, value: Any, now_s: float) -> None:
        """A discrete timeline event (see ``telemetry.timeline`` for the kinds)."""
        ...

    def caller_energy(self, rms: float, now_s: float) -> None:
        """RMS of a caller frame (sampled by the caller, about every 100 ms)."""
        ...

    def caller_audio(self, pcm: bytes) -> None:
        """Every caller frame at the call's rate (for call recording; cheap when it is off)."""
        ...

    def agent_audio(self, pcm: bytes) -> None:
        """Every frame sent to the caller, silence included (the same 20 ms clock as the caller's)."""
        ...

    def buffer_depth(self, depth_frames: int, playing: bool, now_s: float) -> None:
        """Outbound buffer depth (sampled about every 200 ms)."""
        ...

    def provider_error(self) -> None: ...

    def turn_latency(self, seconds: float) -> None: ...

    def turn_started(self, first_frame_latency_s: float) -> None: ...

    def turn_ended(self, pauses: int, late_chunks_dropped: int, fell_back: bool) -> None: ...

    def barge_in(self, source: str, reaction_s: float | None) -> None: ...

    def barge_in_attempts(self, count: int) -> None: ...

    def barge_in_false_trigger(self) -> None: ...

    def caller_frame_refused(self, reason: str) -> None:
        """An inbound frame was dropped before the provider (e.g. wrong sample rate)."""
        ...

    def timeline_events(self) -> list[list[Any]]: ...


class EngineEventSink(Protocol):
    def call_started(self, call_id: str, provider: str) -> None: ...

    def call_ended(self, call_id: str, provider: str) -> None:
        """Counted once per call; per-call series of the call are removed here."""
        ...

    def provider_fallback(self, requested: str) -> None: ...

    def for_call(self, call_id: str, provider: str, start_s: float) -> CallEventSink: ...
