"""The telemetry side of the core's event sinks: Prometheus metrics + the call timeline
(+ the call recording, when ``recording.enabled``)."""

from __future__ import annotations

from typing import Any

from voiceline.telemetry.metrics import Metrics
from voiceline.telemetry.recording import CallRecording, RecordingWriter
from voiceline.telemetry.timeline import TimelineRecorder

__all__ = ["CallTelemetry", "TelemetrySink"]


class CallTelemetry:
    """One call's ``CallEventSink``: aggregate metrics, its per-call series, its timeline."""

    __slots__ = ("_call_id", "_metrics", "_provider", "recording", "timeline")

    def __init__(self, metrics: Metrics, call_id: str, provider: str, start_s: float,
                 recording: CallRecording | None = None) -> None:
        self._metrics = metrics
        self._call_id = call_id
        self._provider = provider
        self.timeline = TimelineRecorder(start_s=start_s)
        self.recording = recording

    def mark(self, kind: str, value: Any, now_s: float) -> None:
        self.timeline.add(kind, value, now_s=now_s)

    def caller_energy(self, rms: float, now_s: float) -> None:
        self.timeline.energy_sample(rms, now_s=now_s)

    def caller_audio(self, pcm: bytes) -> None:
        if self.recording is not None:
            self.recording.add_caller(pcm)

    def agent_audio(self, pcm: bytes) -> None:
        if self.recording is not None:
            self.recording.add_agent(pcm)

    def buffer_depth(self, depth_frames: int, playing: bool, now_s: float) -> None:
        self._metrics.jitter_depth.labels(self._call_id).set(depth_frames)
        if playing:
            self._metrics.buffer_depth.observe(depth_frames)
            self.timeline.depth_sample(depth_frames, now_s=now_s)

    def provider_error(self) -> None:
        self._metrics.provider_error(self._provider)

    def turn_latency(self, seconds: float) -> None:
        self._metrics.turn_latency.observe(seconds)

    def turn_started(self, first_frame_latency_s: float) -> None:
        self._metrics.turns_total.inc()
        self._metrics.first_frame_latency.observe(first_frame_latency_s)

    def turn_ended(self, pauses: int, late_chunks_dropped: int, fell_back: bool) -> None:
        self._metrics.pauses_total.inc(pauses)
        self._metrics.late_chunks_total.inc(late_chunks_dropped)
        if fell_back:
            self._metrics.fallback()

    def barge_in(self, source: str, reaction_s: float | None) -> None:
        self._metrics.barge_in(self._call_id, source, reaction_s)

    def barge_in_attempts(self, count: int) -> None:
        self._metrics.barge_in_attempts_total.inc(count)

    def barge_in_false_trigger(self) -> None:
        self._metrics.barge_in_false_triggers_total.inc()

    def caller_frame_refused(self, reason: str) -> None:
        self._metrics.inbound_frames_refused_total.labels(reason).inc()

    def timeline_events(self) -> list[list[Any]]:
        return self.timeline.events


class TelemetrySink:
    """The engine's ``EngineEventSink`` over one ``Metrics`` registry."""

    def __init__(self, metrics: Metrics, *, recordings: RecordingWriter | None = None) -> None:
        self.metrics = metrics
        self.recordings = recordings  # None: calls are not recorded
        self._recording: dict[str, CallRecording] = {}

    def call_started(self, call_id: str, provider: str) -> None:
        self.metrics.call_started(provider)
        self.metrics.call_gauges_open(call_id)

    def call_ended(self, call_id: str, provider: str) -> None:
        self.metrics.call_ended(provider)
        self.metrics.call_gauges_close(call_id)
        recording = self._recording.pop(call_id, None)
        if recording is not None and self.recordings is not None:
            self.recordings.save(call_id, recording)

    def provider_fallback(self, requested: str) -> None:
        self.metrics.provider_fallback(requested)

    def for_call(self, call_id: str, provider: str, start_s: float) -> CallTelemetry:
        recording = None
        if self.recordings is not None:
            recording = self._recording[call_id] = self.recordings.new()
        return CallTelemetry(self.metrics, call_id, provider, start_s, recording)
