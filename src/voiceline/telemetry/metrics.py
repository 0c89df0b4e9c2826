"""Prometheus metrics. Aggregates carry no per-call labels; the few per-call gauges
operators know are removed when the call ends, so series stay bounded by live calls.

With engine worker processes (``workers`` > 1, ``voiceline.workers``) every worker
counts into prometheus_client's multiprocess files (``PROMETHEUS_MULTIPROC_DIR``, set
by the supervisor for the workers only) and the supervisor serves the sum
(``AggregateMetrics``). Per-call series are off there (``per_call_series=False``): a
multiprocess file keeps a series after ``remove()``, so they would grow with every call
ever taken; ``/health`` has the same per-call numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

_LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
_DEPTH_BUCKETS = (0, 1, 2, 3, 5, 8, 12, 20, 35, 50, 100, 250, 500)


class _NoSeries:
    """Stands in for a per-call series family that is switched off: every update is dropped."""

    def labels(self, *_values: str) -> _NoSeries:
        return self

    def set(self, _value: float) -> None:
        return None

    def inc(self, _amount: float = 1) -> None:
        return None

    def remove(self, *_values: str) -> None:
        return None


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, *, per_call_series: bool = True) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.calls_total = Counter("ai_agent_calls_total", "Calls started", ["provider"], registry=r)
        self.calls_ended_total = Counter("ai_agent_calls_ended_total", "Calls ended", ["provider"], registry=r)
        # livesum: with worker processes, the sum over the workers alive.
        self.active_calls = Gauge("ai_agent_active_calls", "Calls in progress", registry=r,
                                  multiprocess_mode="livesum")
        self.provider_fallbacks_total = Counter(
            "ai_agent_provider_fallbacks_total",
            "Calls that asked for an unknown or unavailable provider and got the default",
            ["requested"], registry=r,
        )
        self.provider_errors_total = Counter(
            "ai_agent_provider_errors_total", "Errors reported by or about providers", ["provider"], registry=r
        )
        self.audiosocket_refused_total = Counter(
            "ai_agent_audiosocket_refused_total", "AudioSocket connections refused", ["reason"], registry=r
        )
        self.turns_total = Counter("ai_agent_streaming_turns_total", "Agent turns streamed", registry=r)
        self.pauses_total = Counter(
            "ai_agent_streaming_pauses_total", "Streams paused below the low watermark", registry=r
        )
        self.restarts_total = Counter(
            "ai_agent_streaming_restarts_total", "Streams started more than once in one turn", registry=r
        )
        self.fallbacks_total = Counter(
            "ai_agent_streaming_fallbacks_total", "Turns that stalled past fallback_timeout_ms (handed to file playback in ari mode)", registry=r
        )
        self.late_chunks_total = Counter(
            "ai_agent_streaming_late_chunks_dropped_total", "Agent chunks dropped after the grace", registry=r
        )
        self.first_frame_latency = Histogram(
            "ai_agent_streaming_first_frame_latency_seconds",
            "From the agent turn's first chunk to its first frame sent", buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.turn_latency = Histogram(
            "ai_agent_turn_latency_seconds", "Provider-reported latency from caller end of speech to agent audio",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.buffer_depth = Histogram(
            "ai_agent_streaming_buffer_depth_frames", "Jitter buffer depth sampled each tick of a playing turn",
            buckets=_DEPTH_BUCKETS, registry=r,
        )
        self.barge_ins_total = Counter(
            "ai_agent_barge_ins_total", "Agent turns cut short because the caller spoke", ["source"], registry=r
        )
        self.barge_in_attempts_total = Counter(
            "ai_agent_barge_in_attempts_total", "Caller speech episodes heard while the agent was playing",
            registry=r,
        )
        self.barge_in_false_triggers_total = Counter(
            "ai_agent_barge_in_false_triggers_total", "Soft pauses resumed because speech was not confirmed",
            registry=r,
        )
        self.barge_in_reaction = Histogram(
            "ai_agent_barge_in_reaction_seconds", "Caller speech onset to the last agent frame sent",
            buckets=(0.02, 0.05, 0.08, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0), registry=r,
        )
        self.gating_transitions_total = Counter(
            "ai_agent_capture_gating_transitions_total", "Caller-audio capture switched on or off", registry=r
        )
        self.inbound_frames_refused_total = Counter(
            "ai_agent_inbound_frames_refused_total",
            "Caller frames dropped before the provider (wrong_rate: not the call's sample rate)",
            ["reason"], registry=r,
        )
        # per-call gauges (removed at call end)
        self.capture_enabled: Any = _NoSeries()
        self.tts_gating_active: Any = _NoSeries()
        self.barge_in_events: Any = _NoSeries()
        self.jitter_depth: Any = _NoSeries()
        if per_call_series:
            self.capture_enabled = Gauge(
                "ai_agent_audio_capture_enabled", "1 when caller audio goes to the provider", ["call_id"],
                registry=r,
            )
            self.tts_gating_active = Gauge(
                "ai_agent_tts_gating_active", "1 while agent audio gates the caller", ["call_id"], registry=r
            )
            self.barge_in_events = Counter(
                "ai_agent_barge_in_events", "Barge-ins of one live call", ["call_id"], registry=r
            )
            self.jitter_depth = Gauge(
                "ai_agent_streaming_jitter_buffer_depth", "Current jitter buffer depth (frames)", ["call_id"],
                registry=r,
            )

    # ---- call lifecycle
    def call_started(self, provider: str) -> None:
        self.calls_total.labels(provider).inc()
        self.active_calls.inc()

    def call_ended(self, provider: str) -> None:
        self.calls_ended_total.labels(provider).inc()
        self.active_calls.dec()

    def provider_fallback(self, requested: str) -> None:
        self.provider_fallbacks_total.labels(requested or "(none)").inc()

    def provider_error(self, provider: str) -> None:
        self.provider_errors_total.labels(provider).inc()

    def audiosocket_refused(self, reason: str) -> None:
        self.audiosocket_refused_total.labels(reason).inc()

    def fallback(self) -> None:
        self.fallbacks_total.inc()

    def barge_in(self, call_id: str, source: str, reaction_s: float | None) -> None:
        self.barge_ins_total.labels(source).inc()
        self.barge_in_events.labels(call_id).inc()
        if reaction_s is not None:
            self.barge_in_reaction.observe(reaction_s)

    # ---- per-call gauges
    def gating_changed(self, call_id: str, capture_enabled: bool) -> None:
        self.gating_transitions_total.inc()
        self.capture_enabled.labels(call_id).set(1 if capture_enabled else 0)
        self.tts_gating_active.labels(call_id).set(0 if capture_enabled else 1)

    def call_gauges_open(self, call_id: str) -> None:
        self.capture_enabled.labels(call_id).set(1)
        self.tts_gating_active.labels(call_id).set(0)
        self.jitter_depth.labels(call_id).set(0)
        self.barge_in_events.labels(call_id)

    def call_gauges_close(self, call_id: str) -> None:
        for gauge in (self.capture_enabled, self.tts_gating_active, self.jitter_depth, self.barge_in_events):
            try:
                gauge.remove(call_id)
            except KeyError:
                pass  # the series was never created for this call: nothing to remove

    def render(self) -> bytes:
        return generate_latest(self.registry)


class AggregateMetrics:
    """The supervisor's /metrics with worker processes: the sum of every worker's
    multiprocess files in ``directory`` (counters of exited workers included, gauges
    of live workers only)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.registry = CollectorRegistry()
        MultiProcessCollector(self.registry, path=str(self.directory))

    def process_exited(self, pid: int) -> None:
        """Drop the live gauges of an exited worker (its counters stay in the sums)."""
        mark_process_dead(pid, path=str(self.directory))

    def render(self) -> bytes:
        return generate_latest(self.registry)
