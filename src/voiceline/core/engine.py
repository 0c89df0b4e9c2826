"""Call lifecycle: set calls up, hand audio to a ``Call``, release everything at the end.

Two call-control modes share this class:
- ``ari``: StasisStart → answer → mixing bridge → externalMedia(AudioSocket) whose
  connection carries the call's UUID; StasisEnd or hangup → tear down.
- ``audiosocket``: the dialplan runs ``AudioSocket(uuid,host:port)`` itself; a
  connection from an allowed peer with a fresh UUID is a call; no ARI.
The engine never looks at provider names beyond asking the registry for one.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

from voiceline.asterisk.ari import AriClient, AriError
from voiceline.asterisk.audiosocket import AudioSocketConnection
from voiceline.audio.formats import AudioFormat
from voiceline.config import Settings
from voiceline.core.barge_in import BargeInParams
from voiceline.core.call import Call
from voiceline.core.conversation_coordinator import ConversationCoordinator
from voiceline.core.models import CallSession, CallState, PlaybackRef
from voiceline.core.session_store import SessionStore
from voiceline.core.stream_events import FallbackRequested
from voiceline.core.streaming_playback_manager import StreamingPlaybackManager
from voiceline.tasks import spawn
from voiceline.providers.base import CallContext
from voiceline.providers.registry import ProviderRegistry
from voiceline.telemetry.metrics import Metrics

log = structlog.get_logger("voiceline.engine")

# ARI externalMedia `format` for each AudioSocket slin rate.
_SLIN_FORMAT_NAME = {
    8000: "slin", 12000: "slin12", 16000: "slin16", 24000: "slin24", 32000: "slin32",
    44100: "slin44", 48000: "slin48", 96000: "slin96", 192000: "slin192",
}
PROVIDER_VARIABLE = "AI_PROVIDER"
# How long the externalMedia channel may take to enter Stasis and connect to us.
MEDIA_SETUP_TIMEOUT_S = 5.0


class Engine:
    def __init__(
        self,
        settings: Settings,
        *,
        store: SessionStore,
        coordinator: ConversationCoordinator,
        providers: ProviderRegistry,
        streaming: StreamingPlaybackManager,
        metrics: Metrics,
        ari: AriClient | None,
        clock: Callable[[], float],
        on_call_ended: Callable[[Call], None] | None = None,
    ) -> None:
        self.settings = settings
        self.mode = settings.mode
        self.store = store
        self.coordinator = coordinator
        self.providers = providers
        self.streaming = streaming
        self.metrics = metrics
        self.ari = ari
        self._clock = clock
        self._calls: dict[str, Call] = {}
        self._awaiting_media: dict[str, Call] = {}
        self._media_stasis: dict[str, asyncio.Future[str]] = {}
        self._ending: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[object]] = set()
        self._on_call_ended = on_call_ended
        self._audiosocket_rate = settings.audiosocket.sample_rate if self.mode == "ari" else 8000

    # ------------------------------------------------------------------ introspection

    @property
    def active_calls(self) -> int:
        return len(self._calls)

    def call(self, call_id: str) -> Call | None:
        return self._calls.get(call_id)

    def calls(self) -> list[Call]:
        return list(self._calls.values())

    # ------------------------------------------------------------------ call creation

    def _new_call(self, call_id: str, requested_provider: str | None, caller_channel_id: str | None,
                  caller_id: str | None, variables: dict[str, str]) -> Call:
        choice = self.providers.choose(requested_provider)
        if choice.fallback_reason:
            log.warning("provider_fallback", call_id=call_id, reason=choice.fallback_reason,
                        using=choice.provider.name)
            self.metrics.provider_fallback(choice.requested or "")
        session = CallSession(
            call_id=call_id, mode=self.mode, provider_name=choice.provider.name,
            started_at=time.time(), started_monotonic=self._clock(),
            caller_channel_id=caller_channel_id, caller_id=caller_id,
            provider_fallback_reason=choice.fallback_reason,
        )
        self.store.add(session)
        provider_session = choice.provider.create_session(
            CallContext(call_id=call_id, caller_id=caller_id, variables=variables)
        )
        call = Call(
            session, provider_session,
            wire_format=AudioFormat("slin16", self._audiosocket_rate),
            streaming=self.streaming, coordinator=self.coordinator,
            end_call=self.end_call,
            play_fallback=self._play_fallback if self.ari is not None else None,
            clock=self._clock, metrics=self.metrics,
            barge_in=BargeInParams.from_settings(self.settings.barge_in, self._audiosocket_rate),
            stop_playback=self._stop_call_playback if self.ari is not None else None,
        )
        self._calls[call_id] = call
        self.metrics.call_started(choice.provider.name)
        self.metrics.call_gauges_open(call_id)
        log.info("call_started", call_id=call_id, mode=self.mode, provider=choice.provider.name,
                 caller_id=caller_id, channel_id=caller_channel_id)
        call.start_provider()
        return call

    # ------------------------------------------------------------------ AudioSocket side

    def accept_audiosocket(self, connection: AudioSocketConnection):
        """AcceptFn for the AudioSocket server: the handler for this UUID, or None to refuse."""
        conn_uuid = connection.uuid or ""
        if self.mode == "ari":
            call = self._awaiting_media.pop(conn_uuid, None)
            if call is None:
                log.warning("audiosocket_unexpected_uuid", uuid=conn_uuid, peer=connection.peer[0])
                self.metrics.audiosocket_refused("unknown-uuid")
                return None
        else:
            if conn_uuid in self._calls or conn_uuid in self._ending:
                log.warning("audiosocket_duplicate_uuid", uuid=conn_uuid, peer=connection.peer[0])
                self.metrics.audiosocket_refused("duplicate-uuid")
                return None
            call = self._new_call(conn_uuid, None, None, None, {})
        call.attach(connection)
        call.session.state = CallState.ACTIVE
        return call

    # ------------------------------------------------------------------ ARI side

    async def on_ari_event(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "StasisStart":
            await self._on_stasis_start(event)
        elif kind in ("StasisEnd", "ChannelDestroyed", "ChannelHangupRequest"):
            channel_id = event.get("channel", {}).get("id", "")
            session = self.store.by_channel(channel_id)
            if session is not None:
                await self.end_call(session.call_id, f"{kind} on {channel_id}")
        elif kind == "PlaybackFinished":
            self._on_playback_finished(event)
        elif kind == "ApplicationReplaced":
            log.error("ari_application_replaced", app=self.settings.asterisk.app_name)

    async def _on_stasis_start(self, event: dict) -> None:
        channel = event.get("channel", {})
        channel_id = channel.get("id", "")
        args = event.get("args") or []
        if args and args[0] in self._media_stasis:
            # The externalMedia channel entered the app (its StasisStart carries our UUID).
            waiter = self._media_stasis[args[0]]
            if not waiter.done():
                waiter.set_result(channel_id)
            return
        if self.store.by_channel(channel_id) is not None:
            return  # a channel of a call we already handle
        assert self.ari is not None
        call_id = str(uuid.uuid4())
        try:
            requested = await self.ari.get_variable(channel_id, PROVIDER_VARIABLE)
        except AriError as exc:
            log.warning("ari_get_variable_failed", channel_id=channel_id, error=str(exc))
            requested = None
        caller = channel.get("caller", {}) or {}
        call = self._new_call(call_id, requested, channel_id, caller.get("number"),
                              {PROVIDER_VARIABLE: requested} if requested else {})
        try:
            await self._connect_media(call, channel_id)
        except (AriError, asyncio.TimeoutError) as exc:
            why = str(exc) or f"media channel not ready within {MEDIA_SETUP_TIMEOUT_S:.0f} s"
            log.error("call_setup_failed", call_id=call_id, channel_id=channel_id, error=why)
            await self.end_call(call_id, f"setup failed: {why}")

    async def _connect_media(self, call: Call, channel_id: str) -> None:
        assert self.ari is not None
        session = call.session
        await self.ari.answer(channel_id)
        bridge = await self.ari.create_bridge("mixing", name=f"voiceline-{session.call_id}")
        session.bridge_id = bridge["id"]
        await self.ari.add_channel(session.bridge_id, [channel_id])
        self._awaiting_media[session.call_id] = call
        in_stasis = asyncio.get_running_loop().create_future()
        self._media_stasis[session.call_id] = in_stasis
        audiosocket = self.settings.audiosocket
        try:
            media = await self.ari.external_media(
                app=self.settings.asterisk.app_name,
                external_host=f"{audiosocket.advertise_host}:{self._bound_port}",
                data=session.call_id,
                format=_SLIN_FORMAT_NAME[self._audiosocket_rate],
            )
            session.media_channel_id = media["id"]
            self.store.link_channel(session.call_id, media["id"])
            # The channel can only join the bridge once it is in our Stasis app, and
            # its StasisStart may come before or after the POST returns.
            await asyncio.wait_for(in_stasis, MEDIA_SETUP_TIMEOUT_S)
            await asyncio.wait_for(call.connected.wait(), MEDIA_SETUP_TIMEOUT_S)
        finally:
            self._media_stasis.pop(session.call_id, None)
        await self.ari.add_channel(session.bridge_id, [media["id"]])

    _bound_port: int = 0

    def set_audiosocket_port(self, port: int) -> None:
        self._bound_port = port

    # ------------------------------------------------------------------ fallback playback

    async def _play_fallback(self, call_id: str, request: FallbackRequested) -> None:
        """Play the rest of a stalled turn through ARI file playback on the caller's channel."""
        call = self._calls.get(call_id)
        if call is None or self.ari is None or not call.session.caller_channel_id:
            return
        if not request.audio:
            # The turn stalled before anything of it was left to play: nothing to hand over.
            log.info("fallback_nothing_to_play", call_id=call_id, playback_id=request.playback_id)
            return
        streaming = self.settings.streaming
        name = request.playback_id
        path = Path(streaming.fallback_media_dir) / f"{name}.sln{_rate_suffix(call.wire_format.sample_rate)}"
        await asyncio.to_thread(_write_file, path, request.audio)
        media = f"{streaming.fallback_media_uri.rstrip('/')}/{name}"
        channel_id = call.session.caller_channel_id
        ref = PlaybackRef(request.playback_id, call_id, channel_id, "fallback", self._clock())
        call.session.current_playback = ref
        self.coordinator.on_tts_start(call_id, ref.playback_id)
        try:
            await self.ari.play(channel_id, media, playback_id=ref.playback_id)
            log.info("fallback_playback_started", call_id=call_id, playback_id=ref.playback_id,
                     audio_ms=call.wire_format.ms_for_bytes(len(request.audio)))
        except AriError as exc:
            log.error("fallback_playback_failed", call_id=call_id, playback_id=ref.playback_id, error=str(exc))
            self.coordinator.on_tts_end(call_id, ref.playback_id, "fallback-failed")

    async def _stop_call_playback(self, call_id: str) -> None:
        """Barge-in during an ARI playback: stop it (a 404 means it already finished)."""
        call = self._calls.get(call_id)
        ref = call.session.current_playback if call is not None else None
        if ref is None or ref.finished or self.ari is None:
            return
        ref.finished = True  # PlaybackFinished for it will now be ignored: handled once
        try:
            stopped = await self.ari.stop_playback(ref.playback_id)
        except AriError as exc:
            log.warning("stop_playback_failed", call_id=call_id, playback_id=ref.playback_id, error=str(exc))
            stopped = False
        self.coordinator.on_tts_end(call_id, ref.playback_id, "barge-in")
        log.info("playback_stopped", call_id=call_id, playback_id=ref.playback_id, was_playing=stopped)

    def _on_playback_finished(self, event: dict) -> None:
        playback_id = event.get("playback", {}).get("id", "")
        for call in self._calls.values():
            ref = call.session.current_playback
            if ref is not None and ref.playback_id == playback_id and not ref.finished:
                ref.finished = True
                self.coordinator.on_tts_end(call.session.call_id, playback_id, "playback-finished")
                return

    # ------------------------------------------------------------------ teardown

    async def end_call(self, call_id: str, reason: str) -> None:
        """Release everything of the call exactly once; later callers wait for the first."""
        existing = self._ending.get(call_id)
        if existing is not None:
            if existing is not asyncio.current_task():
                await asyncio.shield(existing)
            return
        if call_id not in self._calls:
            return
        task = asyncio.create_task(self._teardown(call_id, reason), name=f"teardown-{call_id}")
        self._ending[call_id] = task
        try:
            await asyncio.shield(task)
        finally:
            if task.done():
                self._ending.pop(call_id, None)

    async def _teardown(self, call_id: str, reason: str) -> None:
        call = self._calls[call_id]
        session = call.session
        session.state = CallState.ENDING
        session.end_reason = reason
        self._awaiting_media.pop(call_id, None)
        await call.close()
        if self.ari is not None:
            await self._release_ari(session)
        session.state = CallState.ENDED
        session.ended_at = time.time()
        self.coordinator.forget(call_id)
        del self._calls[call_id]
        self.store.remove(call_id)
        self.metrics.call_ended(session.provider_name)
        log.info("call_ended", call_id=call_id, reason=reason)
        if self._on_call_ended is not None:
            self._on_call_ended(call)

    async def _release_ari(self, session: CallSession) -> None:
        assert self.ari is not None
        ari = self.ari
        ref = session.current_playback
        steps: list[tuple[str, Callable[[], Awaitable[bool]]]] = []
        if ref is not None and not ref.finished:
            steps.append(("stop_playback", lambda: ari.stop_playback(ref.playback_id)))
        if session.media_channel_id:
            steps.append(("hangup_media", lambda: ari.hangup(session.media_channel_id)))
        if session.bridge_id:
            steps.append(("destroy_bridge", lambda: ari.destroy_bridge(session.bridge_id)))
        if session.caller_channel_id:
            steps.append(("hangup_caller", lambda: ari.hangup(session.caller_channel_id)))
        for step, action in steps:
            try:
                await action()  # a 404 (already gone) comes back as False, not an error
            except AriError as exc:
                log.warning("ari_cleanup_failed", call_id=session.call_id, step=step, error=str(exc))

    async def shutdown(self) -> None:
        for call_id in list(self._calls):
            await self.end_call(call_id, "engine shutting down")


def _rate_suffix(rate: int) -> str:
    # Asterisk names raw slin files by rate: .sln (8 kHz), .sln16, .sln24, .sln48 ...
    return "" if rate == 8000 else str(rate // 1000)


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
