"""The ``ari`` call-control mode: Stasis events in, ARI REST out.

A caller's channel entering our Stasis app is a call: answer it, put it in a mixing
bridge, create an externalMedia channel (AudioSocket encapsulation) carrying the
call's UUID; Asterisk connects that channel to our AudioSocket listener (during the
POST) and the channel enters Stasis with its own StasisStart, after which it joins
the bridge. StasisEnd/hangup of either channel ends the call. This module also
plays stalled turns as files (the call's ``PlaybackControl``) and releases every
ARI resource of a call at its end.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timezone
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from voiceline.asterisk.ari import AriClient, AriError
from voiceline.asterisk.ari_actions import AriCallActions, transfer_reason
from voiceline.asterisk.audiosocket import AudioSocketConnection
from voiceline.asterisk.audiosocket_mode import AudioSocketLeg, attach_leg
from voiceline.audio.formats import SLIN_FORMAT_NAMES
from voiceline.core.actions import TransferTo
from voiceline.core.call import Call
from voiceline.core.engine import Engine
from voiceline.core.stream_events import FallbackRequested
from voiceline.telemetry.metrics import Metrics

__all__ = ["AriMode", "PROVIDER_VARIABLE"]

log = structlog.get_logger("voiceline.ari_mode")

PROVIDER_VARIABLE = "AI_PROVIDER"
# How long the externalMedia channel may take to enter Stasis and connect to us.
MEDIA_SETUP_TIMEOUT_S = 5.0


@dataclass(slots=True)
class Playback:
    """A file playback started on the caller's channel (a stalled turn's audio)."""

    playback_id: str
    path: Path
    finished: bool = False


@dataclass(slots=True)
class _CallResources:
    """What the setup created on the Asterisk side for one call."""

    call: Call
    channel_id: str
    bridge_id: str | None = None
    media_channel_id: str | None = None
    # Every file playback of the call: a stalled turn can hand over two (-fallback
    # and -fallback-rest), and capture stays gated until the last one finishes.
    playbacks: dict[str, Playback] = field(default_factory=dict)
    # Set when the call's teardown released its resources; whatever the setup still
    # creates afterwards, the setup removes itself.
    released: bool = False
    # Set once the caller was sent to the dialplan (ari_actions): the teardown leaves
    # the caller's channel alone and the call ends as transferred.
    transfer_to: TransferTo | None = None

    def unfinished(self) -> list[Playback]:
        return [p for p in self.playbacks.values() if not p.finished]


class _SetupAbandoned(Exception):
    """The call ended while its ARI setup was still running."""


class AriMode:
    def __init__(
        self,
        engine: Engine,
        ari: AriClient,
        metrics: Metrics,
        *,
        app_name: str,
        advertise_host: str,
        fallback_media_dir: str,
        fallback_media_uri: str,
        clock: Callable[[], float],
    ) -> None:
        self.engine = engine
        self.ari = ari
        self._metrics = metrics
        self._app_name = app_name
        self._advertise_host = advertise_host
        self._fallback_dir = Path(fallback_media_dir)
        self._fallback_uri = fallback_media_uri.rstrip("/")
        self._clock = clock
        self._bound_port = 0
        self._calls: dict[str, _CallResources] = {}
        self._awaiting_media: dict[str, Call] = {}
        self._media_stasis: dict[str, asyncio.Future[str]] = {}
        self._playback_owner: dict[str, str] = {}  # playback id -> call id

    def set_audiosocket_port(self, port: int) -> None:
        self._bound_port = port

    # ------------------------------------------------------------------ AudioSocket side

    def accept(self, connection: AudioSocketConnection) -> AudioSocketLeg | None:
        """AcceptFn: the externalMedia channel of a call being set up connected."""
        conn_uuid = connection.uuid or ""
        call = self._awaiting_media.pop(conn_uuid, None)
        if call is None:
            log.warning("audiosocket_unexpected_uuid", uuid=conn_uuid, peer=connection.peer[0])
            self._metrics.audiosocket_refused("unknown-uuid")
            return None
        # Keys come from ARI (ChannelDtmfReceived on the caller's channel); the bridge
        # also copies them to the media leg as 0x03 frames, which would count them twice.
        return attach_leg(call, connection, forward_dtmf=False)

    # ------------------------------------------------------------------ events

    async def on_event(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "StasisStart":
            await self._on_stasis_start(event)
        elif kind in ("StasisEnd", "ChannelDestroyed", "ChannelHangupRequest"):
            channel_id = event.get("channel", {}).get("id", "")
            session = self.engine.store.by_channel(channel_id)
            if session is not None:
                resources = self._calls.get(session.call_id)
                transferred = resources.transfer_to if resources is not None else None
                reason = transfer_reason(transferred) if transferred else f"{kind} on {channel_id}"
                await self.engine.end_call(session.call_id, reason)
        elif kind == "ChannelDtmfReceived":
            self._on_dtmf(event)
        elif kind == "PlaybackFinished":
            await self._on_playback_finished(event)
        elif kind == "ApplicationReplaced":
            log.error("ari_application_replaced", app=self._app_name)

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
        if self.engine.store.by_channel(channel_id) is not None:
            return  # a channel of a call we already handle
        if not self.engine.accepting:
            await self._send_back_to_dialplan(channel_id)
            return
        call_id = str(uuid.uuid4())
        try:
            requested = await self.ari.get_variable(channel_id, PROVIDER_VARIABLE)
        except AriError as exc:
            log.warning("ari_get_variable_failed", channel_id=channel_id, error=str(exc))
            requested = None
        caller = channel.get("caller", {}) or {}
        call = self.engine.start_call(
            call_id, requested_provider=requested, caller_channel_id=channel_id,
            caller_id=caller.get("number"), variables={PROVIDER_VARIABLE: requested} if requested else {},
            playback=self, release=self._release, actions=AriCallActions(self, call_id),
        )
        resources = _CallResources(call, channel_id)
        self._calls[call_id] = resources
        try:
            await self._connect_media(call, resources)
        except _SetupAbandoned:
            log.info("call_setup_abandoned", call_id=call_id, channel_id=channel_id,
                     reason=call.session.end_reason)
        except (AriError, asyncio.TimeoutError) as exc:
            why = str(exc) or f"media channel not ready within {MEDIA_SETUP_TIMEOUT_S:.0f} s"
            log.error("call_setup_failed", call_id=call_id, channel_id=channel_id, error=why)
            await self.engine.end_call(call_id, f"setup failed: {why}")

    async def _send_back_to_dialplan(self, channel_id: str) -> None:
        """Draining: hand a new caller back to the dialplan (which can route it to
        another node); hang up if that is not possible."""
        try:
            if await self.ari.continue_in_dialplan(channel_id):
                log.info("call_refused_draining", channel_id=channel_id, action="continue_in_dialplan")
                return
            why = "channel gone"
        except AriError as exc:
            why = str(exc)
        log.warning("call_refused_draining", channel_id=channel_id, action="hangup", continue_failed=why)
        try:
            await self.ari.hangup(channel_id)
        except AriError as exc:
            log.warning("ari_cleanup_failed", channel_id=channel_id, step="hangup_refused_caller", error=str(exc))

    async def _connect_media(self, call: Call, resources: _CallResources) -> None:
        """Each step first checks that the call still lives; each resource is recorded
        the moment it exists, so a teardown at any point removes it (and one created
        after the teardown ran is removed here)."""
        session = call.session
        channel_id = resources.channel_id

        def check_alive() -> None:
            if call.ended or resources.released:
                raise _SetupAbandoned()

        await self.ari.answer(channel_id)
        check_alive()
        bridge = await self.ari.create_bridge("mixing", name=f"voiceline-{session.call_id}")
        session.bridge_id = resources.bridge_id = bridge["id"]
        if resources.released:
            await self._remove(session.call_id, "destroy_bridge", self.ari.destroy_bridge, bridge["id"])
        check_alive()
        await self.ari.add_channel(bridge["id"], [channel_id])
        check_alive()
        self._awaiting_media[session.call_id] = call
        in_stasis = asyncio.get_running_loop().create_future()
        self._media_stasis[session.call_id] = in_stasis
        try:
            media = await self.ari.external_media(
                app=self._app_name,
                external_host=f"{self._advertise_host}:{self._bound_port}",
                data=session.call_id,
                format=SLIN_FORMAT_NAMES[call.wire_format.sample_rate],
            )
            session.media_channel_id = resources.media_channel_id = media["id"]
            if resources.released:
                await self._remove(session.call_id, "hangup_media", self.ari.hangup, media["id"])
            check_alive()
            self.engine.store.link_channel(session.call_id, media["id"])
            # The channel can only join the bridge once it is in our Stasis app, and
            # its StasisStart may come before or after the POST returns.
            await asyncio.wait_for(in_stasis, MEDIA_SETUP_TIMEOUT_S)
            await asyncio.wait_for(call.connected.wait(), MEDIA_SETUP_TIMEOUT_S)
        finally:
            self._media_stasis.pop(session.call_id, None)
        check_alive()
        await self.ari.add_channel(bridge["id"], [media["id"]])

    def resources(self, call_id: str) -> _CallResources | None:
        return self._calls.get(call_id)

    def _on_dtmf(self, event: dict) -> None:
        """A keypress on the caller's channel (ChannelDtmfReceived) goes to the call's provider."""
        channel_id = event.get("channel", {}).get("id", "")
        session = self.engine.store.by_channel(channel_id)
        call = self.engine.call(session.call_id) if session is not None else None
        resources = self._calls.get(session.call_id) if session is not None else None
        digit = event.get("digit")
        # Only the caller's channel: the same key may also reach us through the media leg.
        if call is None or resources is None or channel_id != resources.channel_id or not isinstance(digit, str):
            return
        call.on_dtmf(digit)

    # ------------------------------------------------------------------ file playback (PlaybackControl)

    async def play_fallback(self, call_id: str, request: FallbackRequested) -> None:
        """Play the rest of a stalled turn through ARI file playback on the caller's channel."""
        resources = self._calls.get(call_id)
        if resources is None or resources.call.ended:
            return
        call = resources.call
        if not request.audio:
            # The turn stalled before anything of it was left to play: nothing to hand over.
            log.info("fallback_nothing_to_play", call_id=call_id, playback_id=request.playback_id)
            return
        name = request.playback_id
        path = self._fallback_dir / f"{name}.sln{_rate_suffix(call.wire_format.sample_rate)}"
        await asyncio.to_thread(_write_file, path, request.audio)
        playback = Playback(name, path)
        resources.playbacks[name] = playback
        self._playback_owner[name] = call_id
        coordinator = self.engine.coordinator
        coordinator.on_tts_start(call_id, name)
        try:
            await self.ari.play(resources.channel_id, f"{self._fallback_uri}/{name}", playback_id=name)
            log.info("fallback_playback_started", call_id=call_id, playback_id=name,
                     audio_ms=call.wire_format.ms_for_bytes(len(request.audio)))
        except AriError as exc:
            log.error("fallback_playback_failed", call_id=call_id, playback_id=name, error=str(exc))
            coordinator.on_tts_end(call_id, name, "fallback-failed")

    def playing(self, call_id: str) -> bool:
        resources = self._calls.get(call_id)
        return resources is not None and bool(resources.unfinished())

    async def stop_playbacks(self, call_id: str) -> None:
        """Barge-in during ARI playback: stop every playback of the call still running
        (a 404 means it already finished)."""
        resources = self._calls.get(call_id)
        if resources is None:
            return
        for playback in resources.unfinished():
            playback.finished = True  # PlaybackFinished for it will now be ignored: handled once
            try:
                stopped = await self.ari.stop_playback(playback.playback_id)
            except AriError as exc:
                log.warning("stop_playback_failed", call_id=call_id, playback_id=playback.playback_id,
                            error=str(exc))
                stopped = False
            self.engine.coordinator.on_tts_end(call_id, playback.playback_id, "barge-in")
            log.info("playback_stopped", call_id=call_id, playback_id=playback.playback_id, was_playing=stopped)
            await self._delete_files(call_id, [playback.path])

    async def _delete_files(self, call_id: str, paths: list[Path]) -> None:
        """Fallback audio files are only needed while Asterisk plays them."""
        try:
            await asyncio.to_thread(_unlink_all, paths)
        except OSError:
            log.exception("fallback_file_delete_failed", call_id=call_id, paths=[str(p) for p in paths])

    def remove_stale_fallback_files(self) -> int:
        """At start: fallback files a previous run left (it crashed or was killed mid-call)."""
        if not self._fallback_dir.is_dir():
            return 0
        stale = [p for p in self._fallback_dir.iterdir() if p.is_file() and p.name.startswith("voiceline-")]
        _unlink_all(stale)
        if stale:
            log.info("fallback_stale_files_removed", count=len(stale), dir=str(self._fallback_dir))
        return len(stale)

    async def _on_playback_finished(self, event: dict) -> None:
        playback_id = event.get("playback", {}).get("id", "")
        call_id = self._playback_owner.pop(playback_id, None)
        resources = self._calls.get(call_id) if call_id is not None else None
        playback = resources.playbacks.get(playback_id) if resources is not None else None
        if playback is None:
            return
        if not playback.finished:
            playback.finished = True
            self.engine.coordinator.on_tts_end(call_id, playback_id, "playback-finished")
        await self._delete_files(call_id, [playback.path])

    # ------------------------------------------------------------------ leftovers of an earlier run

    async def on_connection_change(self, connected: bool) -> None:
        if connected:
            await self.clean_up_leftovers()

    async def clean_up_leftovers(self) -> tuple[int, int]:
        """Remove what calls of a previous engine process left in Asterisk: bridges named
        ``voiceline-*`` and channels in our Stasis app that belong to no live call.
        Channels that entered the app after this connection came up are new calls whose
        StasisStart is on its way, and are left alone. Returns (bridges, channels)."""
        connected_at = datetime.now(timezone.utc)
        try:
            bridges = await self.ari.list_bridges()
            channels = await self.ari.list_channels()
        except AriError as exc:
            log.warning("ari_leftovers_not_checked", error=str(exc))
            return 0, 0
        live_bridges = {r.bridge_id for r in self._calls.values() if r.bridge_id}
        live_channels = {c for r in self._calls.values() for c in (r.channel_id, r.media_channel_id) if c}
        stale_bridges = [b for b in bridges if str(b.get("name", "")).startswith("voiceline-")
                         and b.get("id") not in live_bridges]
        in_stale_bridge = {c for b in stale_bridges for c in b.get("channels") or ()}
        stale_channels = [
            c for c in channels
            if c.get("id") not in live_channels
            and (c.get("id") in in_stale_bridge
                 or (self._in_our_app(c) and _created_before(c, connected_at)))
        ]
        for step, action, items in (("hangup_leftover_channel", self.ari.hangup, stale_channels),
                                    ("destroy_leftover_bridge", self.ari.destroy_bridge, stale_bridges)):
            for item in items:
                try:
                    await action(item["id"])
                except AriError as exc:
                    log.warning("ari_cleanup_failed", step=step, resource_id=item["id"], error=str(exc))
        log.info("ari_leftovers_cleaned", bridges=len(stale_bridges), channels=len(stale_channels))
        return len(stale_bridges), len(stale_channels)

    def _in_our_app(self, channel: dict) -> bool:
        dialplan = channel.get("dialplan") or {}
        app_data = str(dialplan.get("app_data", ""))
        return dialplan.get("app_name") == "Stasis" and app_data.split(",")[0] == self._app_name

    # ------------------------------------------------------------------ teardown

    async def _release(self, call: Call) -> None:
        call_id = call.session.call_id
        self._awaiting_media.pop(call_id, None)
        resources = self._calls.pop(call_id, None)
        if resources is None:
            return
        resources.released = True
        ari = self.ari
        steps: list[tuple[str, Callable[[], Awaitable[object]]]] = []
        for playback in resources.unfinished():
            steps.append(("stop_playback", lambda p=playback.playback_id: ari.stop_playback(p)))
        for playback_id in resources.playbacks:
            self._playback_owner.pop(playback_id, None)
        files = [p.path for p in resources.playbacks.values()]
        if files:
            steps.append(("delete_fallback_files", lambda: self._delete_files(call_id, files)))
        if resources.media_channel_id:
            steps.append(("hangup_media", lambda: ari.hangup(resources.media_channel_id)))
        if resources.bridge_id:
            steps.append(("destroy_bridge", lambda: ari.destroy_bridge(resources.bridge_id)))
        if resources.transfer_to is None:  # a transferred caller belongs to the dialplan now
            steps.append(("hangup_caller", lambda: ari.hangup(resources.channel_id)))
        for step, action in steps:
            await _cleanup_step(call_id, step, action)

    async def _remove(self, call_id: str, step: str, action: Callable[[str], Awaitable[bool]], resource_id: str) -> None:
        """Remove a resource the setup created after the call's teardown had run."""
        if await _cleanup_step(call_id, step, lambda: action(resource_id)):
            log.info("ari_late_resource_removed", call_id=call_id, step=step, resource_id=resource_id)


async def _cleanup_step(call_id: str, step: str, action: Callable[[], Awaitable[object]]) -> bool:
    """Run one cleanup step; a failure is logged (the other steps still run). True if it ran."""
    try:
        await action()  # a 404 (already gone) comes back as False, not an error
    except AriError as exc:
        log.warning("ari_cleanup_failed", call_id=call_id, step=step, error=str(exc))
    except Exception:
        log.exception("ari_cleanup_failed", call_id=call_id, step=step)
    else:
        return True
    return False


def _rate_suffix(rate: int) -> str:
    # Asterisk names raw slin files by rate: .sln (8 kHz), .sln16, .sln24, .sln48 ...
    return "" if rate == 8000 else str(rate // 1000)


def _created_before(channel: dict, moment: datetime) -> bool:
    """Whether ARI's ``creationtime`` ("2026-12-04T15:47:00.123+0000") is before ``moment``;
    a channel without a readable one counts as old."""
    try:
        created = datetime.strptime(str(channel.get("creationtime", "")), "%Y-%m-%dT%H:%M:%S.%f%z")
    except ValueError:
        return True
    return created < moment


def _unlink_all(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
