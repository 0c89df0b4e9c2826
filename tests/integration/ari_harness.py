"""The engine in ari mode on loopback against a fake ARI: real Engine, AriMode,
AudioSocket server, pacer and streams; the fake plays Asterisk's part (the
externalMedia POST connects a simulated AudioSocket leg and sends the media
channel's StasisStart) and records which Asterisk resources exist."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

from ari_fake import wait_for_condition

from voiceline.asterisk.ari import AriError
from voiceline.asterisk.ari_mode import AriMode
from voiceline.asterisk.audiosocket import AudioSocketServer
from voiceline.audio.formats import SLIN_8K
from voiceline.core.conversation_coordinator import ConversationCoordinator
from voiceline.core.engine import Engine
from voiceline.core.pacer import Pacer
from voiceline.core.session_store import SessionStore
from voiceline.core.stream_params import StreamParams
from voiceline.core.streaming_playback_manager import StreamingPlaybackManager
from voiceline.providers import base as pb
from voiceline.providers.registry import ProviderRegistry
from voiceline.sim.audiosocket_caller import CallerLeg
from voiceline.telemetry.call_sink import TelemetrySink
from voiceline.telemetry.metrics import Metrics


class ScriptedSession(pb.ProviderSession):
    """A provider session the test drives: ``emit`` events, see ``audio_in``."""

    def __init__(self, registry: list[ScriptedSession], *, start_error: Exception | None = None,
                 start_delay_s: float = 0.0) -> None:
        super().__init__(pb.ProviderCapabilities(input_format=SLIN_8K, output_format=SLIN_8K, detects_turns=True))
        self.audio_in = 0
        self.closed = False
        self._start_error = start_error
        self._start_delay_s = start_delay_s
        registry.append(self)

    async def start(self) -> None:
        if self._start_delay_s:
            await asyncio.sleep(self._start_delay_s)
        if self._start_error is not None:
            raise self._start_error

    async def send_audio(self, audio: bytes) -> None:
        self.audio_in += 1

    def emit(self, event: pb.ProviderEvent) -> None:
        self._emit(event)

    async def close(self, reason: str = "call ended") -> None:
        self.closed = True
        self._emit(pb.ProviderClosed(reason))


class ScriptedProvider(pb.Provider):
    name = "scripted"

    def __init__(self, **session_kwargs) -> None:
        self.sessions: list[ScriptedSession] = []
        self.session_kwargs = session_kwargs

    def availability(self):
        return True, "ok"

    def create_session(self, ctx):
        return ScriptedSession(self.sessions, **self.session_kwargs)


@dataclass
class FakeAri:
    """Asterisk's side of ARI, in memory. ``slow`` delays chosen methods (seconds)."""

    port: int = 0
    mode: AriMode | None = None
    channels: set[str] = field(default_factory=set)
    bridges: dict[str, str] = field(default_factory=dict)  # id -> name
    playbacks: set[str] = field(default_factory=set)
    legs: list[CallerLeg] = field(default_factory=list)
    slow: dict[str, float] = field(default_factory=dict)
    fail: dict[str, Exception] = field(default_factory=dict)
    log: list[tuple] = field(default_factory=list)
    connected: bool = True
    _ids: itertools.count = field(default_factory=itertools.count)

    async def _step(self, name: str, *args) -> None:
        self.log.append((name, *args))
        if name in self.slow:
            await asyncio.sleep(self.slow[name])
        if name in self.fail:
            raise self.fail[name]

    def new_caller(self) -> str:
        channel_id = f"caller-{next(self._ids)}"
        self.channels.add(channel_id)
        return channel_id

    async def stasis_start(self, channel_id: str, args: list[str] | None = None) -> None:
        await self.mode.on_event({"type": "StasisStart", "channel": {"id": channel_id, "caller": {"number": "100"}},
                                  "args": args or []})

    async def get_variable(self, channel_id: str, name: str):
        await self._step("get_variable", channel_id)
        return None

    async def answer(self, channel_id: str) -> None:
        await self._step("answer", channel_id)

    async def create_bridge(self, kind: str = "mixing", name: str | None = None) -> dict:
        await self._step("create_bridge", name)
        bridge_id = f"bridge-{next(self._ids)}"
        self.bridges[bridge_id] = name or ""
        return {"id": bridge_id}

    async def add_channel(self, bridge_id: str, channel_ids: list[str]) -> None:
        await self._step("add_channel", bridge_id, *channel_ids)
        if bridge_id not in self.bridges:
            raise AriError(404, "POST", f"/bridges/{bridge_id}/addChannel", "Bridge not found")

    async def external_media(self, *, app: str, external_host: str, data: str, format: str) -> dict:
        await self._step("external_media", data)
        media_id = f"media-{next(self._ids)}"
        self.channels.add(media_id)
        # Asterisk connects to the listener during the POST, then the channel enters Stasis.
        leg = CallerLeg("127.0.0.1", self.port, call_uuid=data)
        await leg.connect()
        self.legs.append(leg)
        asyncio.get_running_loop().call_soon(
            lambda: asyncio.ensure_future(self.stasis_start(media_id, [data])))
        return {"id": media_id}

    async def hangup(self, channel_id: str, reason: str = "normal") -> bool:
        await self._step("hangup", channel_id)
        if channel_id in self.channels:
            self.channels.discard(channel_id)
            return True
        return False

    async def destroy_bridge(self, bridge_id: str) -> bool:
        await self._step("destroy_bridge", bridge_id)
        return self.bridges.pop(bridge_id, None) is not None

    async def play(self, channel_id: str, media: str, playback_id: str | None = None) -> dict:
        await self._step("play", channel_id, media)
        self.playbacks.add(playback_id)
        return {"id": playback_id}

    async def stop_playback(self, playback_id: str) -> bool:
        await self._step("stop_playback", playback_id)
        if playback_id in self.playbacks:
            self.playbacks.discard(playback_id)
            return True
        return False

    async def continue_in_dialplan(self, channel_id: str, context=None, extension=None, priority=None) -> bool:
        await self._step("continue_in_dialplan", channel_id)
        return channel_id in self.channels

    async def list_channels(self) -> list[dict]:
        await self._step("list_channels")
        return [{"id": c, "name": f"PJSIP/{c}", "dialplan": {"app_name": "Stasis", "app_data": "voiceline"}}
                for c in sorted(self.channels)]

    async def list_bridges(self) -> list[dict]:
        await self._step("list_bridges")
        return [{"id": b, "name": name, "channels": []} for b, name in self.bridges.items()]

    async def finish_playback(self, playback_id: str) -> None:
        self.playbacks.discard(playback_id)
        await self.mode.on_event({"type": "PlaybackFinished", "playback": {"id": playback_id}})


class AriRig:
    """Everything of the engine in ari mode, wired like App wires it."""

    def __init__(self, provider: pb.Provider, tmp_path, *, stream_params: StreamParams | None = None) -> None:
        self.provider = provider
        self.tmp_path = tmp_path
        self.params = stream_params or StreamParams()
        self.metrics = Metrics()
        self.store = SessionStore()
        self.coordinator = ConversationCoordinator(self.store, on_gating_change=self.metrics.gating_changed)
        self.ended: list = []
        self.ari = FakeAri()

    async def __aenter__(self) -> AriRig:
        loop = asyncio.get_running_loop()
        self.pacer = Pacer(period_s=self.params.chunk_size_ms / 1000, clock=loop.time)
        self.streaming = StreamingPlaybackManager(self.params, self.pacer, clock=loop.time)
        self.engine = Engine(
            mode="ari", store=self.store, coordinator=self.coordinator,
            providers=ProviderRegistry({"scripted": self.provider}, "scripted"),
            streaming=self.streaming, sink=TelemetrySink(self.metrics), clock=loop.time, wire_rate=8000,
            barge_in=None, on_call_ended=self.ended.append,
        )
        self.mode = AriMode(
            self.engine, self.ari, self.metrics, app_name="voiceline", advertise_host="127.0.0.1",
            fallback_media_dir=str(self.tmp_path / "fallback"), fallback_media_uri="sound:voiceline",
            clock=loop.time,
        )
        self.ari.mode = self.mode
        self.server = AudioSocketServer("127.0.0.1", 0, self.mode.accept, allowed_peers=["127.0.0.0/8"])
        await self.server.start()
        self.ari.port = self.server.bound_port
        self.mode.set_audiosocket_port(self.server.bound_port)
        self.pacer.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.engine.shutdown()
        for leg in self.ari.legs:
            await leg.hangup()
        await self.server.stop()
        await self.pacer.stop()

    async def call(self) -> tuple[str, object]:
        """A caller enters Stasis and its media leg attaches; returns (caller channel, Call)."""
        channel_id = self.ari.new_caller()
        await self.ari.stasis_start(channel_id)
        session = self.store.by_channel(channel_id)
        assert session is not None, "the call did not start"
        call = self.engine.call(session.call_id)
        await wait_for(lambda: call.stream is not None)
        return channel_id, call


async def wait_for(predicate, timeout: float = 3.0) -> None:
    """``ari_fake.wait_for_condition`` with this harness's shorter default timeout."""
    await wait_for_condition(predicate, timeout)
