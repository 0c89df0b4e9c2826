"""Composition root: builds every component from validated settings and runs them."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
from collections.abc import Awaitable, Callable

import structlog

from voiceline.asterisk.ari import AriClient
from voiceline.asterisk.ari_mode import AriMode
from voiceline.asterisk.audiosocket_mode import AudioSocketMode
from voiceline.asterisk.audiosocket import AudioSocketServer
from voiceline.config import Settings
from voiceline.core.barge_in import BargeInParams
from voiceline.core.call import Call
from voiceline.core.conversation_coordinator import ConversationCoordinator
from voiceline.core.engine import Engine
from voiceline.core.pacer import Pacer
from voiceline.core.realtime import RealtimeWindow
from voiceline.core.session_store import SessionStore
from voiceline.core.streaming_playback_manager import StreamingPlaybackManager
from voiceline.gc_policy import GcKeeper
from voiceline.tasks import cancel_and_wait
from voiceline.providers.registry import ProviderRegistry
from voiceline.telemetry.history import CallHistory
from voiceline.telemetry.http import TelemetryServer
from voiceline.telemetry.call_sink import TelemetrySink
from voiceline.telemetry.metrics import Metrics
from voiceline.telemetry.recording import RecordingWriter
from voiceline.telemetry.tuning import CallStreamingNumbers, format_hints, tuning_hints
from voiceline.wiring import Parts, build_parts
from voiceline.call_functions import functions_factory

log = structlog.get_logger("voiceline.app")

# A node that is never without calls still runs a full collection this often (it
# may be heard as one short gap on every call of the process); calls leave only a
# few objects per call in reference cycles, so waiting costs little memory.
GC_MAX_INTERVAL_S = 3600.0
GC_POLL_S = 30.0


class App:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] | None = None,
        parts: Parts | None = None,
        metrics: Metrics | None = None,
        reuse_port: bool = False,
        started_event: str = "voiceline_started",
        pacer_phase: float | None = None,
    ) -> None:
        """``parts``: StreamParams and providers already built by ``wiring.build_parts``
        (``serve`` checks them before starting); built here otherwise. An engine worker
        process (``voiceline.workers``) passes its ``metrics``, shares the AudioSocket port
        (``reuse_port``), ticks at ``pacer_phase`` of the period (see ``Pacer``) and logs
        ``started_event`` instead of ``voiceline_started``, which its supervisor logs once
        every worker is up."""
        self.settings = settings
        self._clock = clock
        self.metrics = metrics if metrics is not None else Metrics()
        self._reuse_port = reuse_port
        self._started_event = started_event
        self.store = SessionStore()
        self.coordinator = ConversationCoordinator(self.store, on_gating_change=self.metrics.gating_changed)
        # Built once: the stream of every call and the tuning hints read the same params.
        parts = parts if parts is not None else build_parts(settings)
        self.stream_params = parts.stream_params
        self.providers = ProviderRegistry(parts.providers, settings.default_provider)
        self.ari: AriClient | None = None
        self.engine: Engine | None = None
        self.ari_mode: AriMode | None = None
        self.audiosocket_mode: AudioSocketMode | None = None
        self.audiosocket: AudioSocketServer | None = None
        self.pacer: Pacer | None = None
        priority = settings.streaming.realtime_priority
        self.realtime_window = RealtimeWindow(priority) if priority else None
        self._events_task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self.history: CallHistory | None = None
        self.http: TelemetryServer | None = None
        self.recordings: RecordingWriter | None = None
        self._started_at = 0.0
        self._pacer_phase = pacer_phase
        self.gc_keeper = GcKeeper(GC_MAX_INTERVAL_S)
        self._gc_timer: asyncio.TimerHandle | None = None
        self.draining = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        clock = self._clock or loop.time
        settings = self.settings
        self.pacer = Pacer(period_s=settings.streaming.chunk_size_ms / 1000, clock=clock, phase=self._pacer_phase,
                           after_tick=self.gc_keeper.collect_young_if_due, realtime=self.realtime_window)
        streaming = StreamingPlaybackManager(self.stream_params, self.pacer, clock=clock)
        if settings.mode == "ari":
            a = settings.asterisk
            self.ari = AriClient(
                a.ari_url, a.username, a.password.get_secret_value(), a.app_name,
                request_timeout_s=a.request_timeout_ms / 1000,
                reconnect_initial_s=a.reconnect_initial_ms / 1000,
                reconnect_max_s=a.reconnect_max_ms / 1000,
            )
        s = settings.audiosocket
        # A plain AudioSocket() leg is always 8 kHz; externalMedia runs at the configured rate.
        wire_rate = s.sample_rate if settings.mode == "ari" else 8000
        if settings.recording.enabled:
            self.recordings = RecordingWriter(settings.recording.dir, sample_rate=wire_rate,
                                              max_seconds=settings.recording.max_seconds)
        self.engine = Engine(
            mode=settings.mode, store=self.store, coordinator=self.coordinator, providers=self.providers,
            streaming=streaming, sink=TelemetrySink(self.metrics, recordings=self.recordings), clock=clock,
            wire_rate=wire_rate,
            barge_in=BargeInParams.from_settings(settings.barge_in, wire_rate),
            on_call_ended=self._on_call_ended,
            functions=functions_factory(settings),
        )
        if self.ari is not None:
            st = settings.streaming
            self.ari_mode = AriMode(
                self.engine, self.ari, self.metrics, app_name=settings.asterisk.app_name,
                advertise_host=s.advertise_host, fallback_media_dir=st.fallback_media_dir,
                fallback_media_uri=st.fallback_media_uri, clock=clock,
            )
            accept = self.ari_mode.accept
            self.ari_mode.remove_stale_fallback_files()
        else:
            self.audiosocket_mode = AudioSocketMode(self.engine, self.metrics)
            accept = self.audiosocket_mode.accept
        # The listener must be up before ARI: Asterisk connects during the externalMedia POST.
        self.audiosocket = AudioSocketServer(
            s.host, s.port, accept, allowed_peers=s.allowed_peers,
            uuid_timeout_s=s.uuid_timeout_ms / 1000, write_limit_bytes=s.write_limit_bytes,
            reuse_port=self._reuse_port,
        )
        await self.audiosocket.start()
        if self.ari_mode is not None:
            self.ari_mode.set_audiosocket_port(self.audiosocket.bound_port)
        self._started_at = clock()
        if settings.history.enabled:
            self.history = CallHistory(settings.history.url.get_secret_value())
            await self.history.start()
        if settings.http.enabled:
            self.http = TelemetryServer(settings.http, metrics=self.metrics, health=self.health, ready=self.readiness,
                                        history=self.history, recordings=self.recordings)
            await self.http.start()
        if self.ari is not None:
            await self.ari.open()
            events = self.ari.run_events(self.ari_mode.on_event,
                                         on_connection_change=self.ari_mode.on_connection_change)
            self._events_task = asyncio.create_task(events, name="ari-events")
        # Everything built so far lives for the whole run: collected once, moved out
        # of the cyclic GC's reach, and from now on full collections wait for an
        # idle moment (or the longest wait) instead of stopping every call's audio.
        self.gc_keeper.install()
        self._gc_timer = loop.call_later(GC_POLL_S, self._poll_gc)
        # Ticking starts after that full collection, so the pacer's lateness in
        # /health tells about calls, not about the ~30 ms of start-up housekeeping.
        self.pacer.start()
        log.info(self._started_event, mode=settings.mode, default_provider=settings.default_provider,
                 workers=settings.workers,
                 audiosocket=f"{s.host}:{self.audiosocket.bound_port}", config_hash=settings.digest())

    def _poll_gc(self) -> None:
        self.gc_keeper.poll()
        self._gc_timer = asyncio.get_running_loop().call_later(GC_POLL_S, self._poll_gc)

    def _on_call_ended(self, call: Call) -> None:
        if self.engine is not None:
            self.gc_keeper.calls_changed(self.engine.active_calls)
        session = call.session
        stats = call.stream.stats.as_dict() if call.stream is not None else {}
        self.metrics.restarts_total.inc(int(stats.get("restarts", 0)))
        numbers = CallStreamingNumbers.from_stats(
            stats, pause_durations_ms=call.pause_durations_ms, barge_ins=session.conversation.barge_ins
        )
        hint = format_hints(tuning_hints(numbers, self.stream_params))
        summary = call_summary(call)
        summary["tuning_hint"] = hint
        log.info("call_summary", **summary)
        if self.history is not None:
            self.history.record({
                **summary,
                "started_at": session.started_at,
                "ended_at": session.ended_at,
                "caller_id": session.caller_id,
                "metrics": {"streaming": stats, "call": summary},
                "transcript": list(session.transcript),
                "timeline": call.sink.timeline_events(),
            })

    # ------------------------------------------------------------------ health

    def readiness(self) -> tuple[bool, dict]:
        default = self.providers.get(self.providers.default)
        provider_ok, provider_why = default.availability() if default is not None else (False, "not configured")
        checks = {
            "audiosocket_listening": self.audiosocket is not None and self.audiosocket.bound_port > 0,
            "pacer_running": self.pacer is not None and self.pacer.running,
            "default_provider": {"name": self.providers.default, "usable": provider_ok, "detail": provider_why},
        }
        if self.ari is not None:
            checks["ari_connected"] = self.ari.connected
        checks["taking_calls"] = {"usable": not self.draining, "detail": "draining" if self.draining else "ok"}
        ready = all(v if isinstance(v, bool) else v["usable"] for v in checks.values())
        return ready, checks

    async def drain(self, abort: asyncio.Event | None = None) -> int:
        """Stop taking new calls (/ready turns 503 "draining"), let live calls finish for
        up to shutdown.drain_timeout_s (or until ``abort``), then end the rest cleanly.
        Returns how many calls the timeout (or abort) ended."""
        self.draining = True
        if self.audiosocket is not None and self.settings.mode == "audiosocket":
            # In ari mode the listener must keep taking the media legs of calls still
            # being set up; new calls are refused at StasisStart instead.
            self.audiosocket.stop_accepting()
        if self.engine is None:
            return 0
        return await self.engine.drain(self.settings.shutdown.drain_timeout_s, abort)

    def health(self) -> dict:
        calls = []
        for call in self.engine.calls() if self.engine is not None else []:
            s = call.session
            calls.append({
                "call_id": s.call_id,
                "caller_id": s.caller_id,
                "provider": s.provider_name,
                "state": s.state.value,
                "codec": s.codec_info(),
                "streaming": {
                    "state": call.stream.state.value if call.stream is not None else None,
                    "depth_frames": call.stream.depth_frames if call.stream is not None else 0,
                    **(call.stream.stats.as_dict() if call.stream is not None else {}),
                },
                "conversation": {
                    "audio_capture_enabled": s.audio_capture_enabled,
                    "tts_playing": s.tts_playing,
                    "gating_transitions": s.conversation.gating_transitions,
                    "barge_ins": s.conversation.barge_ins,
                    "barge_in_attempts": s.conversation.barge_in_attempts,
                },
            })
        return {
            "mode": self.settings.mode,
            "config_hash": self.settings.digest(),
            "ari": {"connected": self.ari.connected} if self.ari is not None else None,
            "active_calls": len(calls),
            "calls": calls,
            "pacer": dataclasses.asdict(self.pacer.stats) if self.pacer is not None else None,
            "history": self.history.status() if self.history is not None else None,
        }

    async def stop(self) -> None:
        if self.engine is not None:
            await self.engine.shutdown()
        if self.http is not None:
            await self.http.stop()
        if self.history is not None:
            await self.history.stop(5.0)
        if self.recordings is not None:
            await self.recordings.close()
        await cancel_and_wait(self._events_task)
        if self.ari is not None:
            await self.ari.close()
        if self.audiosocket is not None:
            await self.audiosocket.stop()
        if self.pacer is not None:
            await self.pacer.stop()
        if self._gc_timer is not None:
            self._gc_timer.cancel()
            self._gc_timer = None
        self.gc_keeper.uninstall()
        self._stopped.set()

    async def run_until_signalled(
        self,
        *,
        stop: asyncio.Event | None = None,
        on_started: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Start, run until SIGTERM/SIGINT (or ``stop`` is set by the caller: an engine
        worker whose supervisor is gone), then drain and stop. ``on_started`` runs once
        the engine takes calls."""
        await self.start()
        stop = stop if stop is not None else asyncio.Event()
        abort = asyncio.Event()  # a second signal: end the remaining calls at once

        def on_signal() -> None:
            (abort if stop.is_set() else stop).set()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        if on_started is not None:
            await on_started()
        await stop.wait()
        log.info("voiceline_stopping")
        await self.drain(abort)
        await self.stop()


def call_summary(call: Call) -> dict:
    session = call.session
    duration = (session.ended_at or 0) - session.started_at if session.ended_at else None
    c = call.counters
    return {
        "call_id": session.call_id,
        "provider": session.provider_name,
        "mode": session.mode,
        "duration_s": round(duration, 3) if duration is not None else None,
        "end_reason": session.end_reason,
        "codec": session.codec_info(),
        "frames_in": c.frames_in,
        "frames_to_provider": c.frames_to_provider,
        "frames_gated": c.frames_gated,
        "inbound_dropped": c.inbound_dropped,
        "frames_wrong_rate": c.frames_wrong_rate,
        "pre_attach_bytes": c.pre_attach_bytes,
        "pre_attach_dropped_bytes": c.pre_attach_dropped_bytes,
        "agent_bytes": c.agent_bytes,
        "provider_errors": c.provider_errors,
        "frames_out": call.leg.frames_out if call.leg is not None else 0,
        "transcript_lines": len(session.transcript),
        "gating_transitions": session.conversation.gating_transitions,
    }
