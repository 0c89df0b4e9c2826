"""Caller audio during the Deepgram handshake, through the whole engine: the one hold is the
provider's documented ``pre_settings_buffer_ms`` (5 s by default), not a second, shorter
one in front of it (defect 9.10: the engine held 1 s and forwarded nothing until start()
returned, so 5 s was never reached)."""

from __future__ import annotations

import asyncio
import math

import numpy as np

from voiceline.app import App
from voiceline.config import parse_settings
from voiceline.sim.audiosocket_caller import CallerLeg
from voiceline.sim.deepgram_sim import DeepgramSimulator

HANDSHAKE_S = 3.5  # Settings -> SettingsApplied takes this long at the simulator
CALLER_S = 2.5  # the caller talks this long, all of it before SettingsApplied


def _settings(sim_url: str):
    data = {
        "mode": "audiosocket",
        "default_provider": "deepgram",
        "audiosocket": {"port": 0},
        "http": {"enabled": False},
        "history": {"enabled": False},
        "providers": {"deepgram": {"url": sim_url, "api_key": "test", "greeting": ""}},
    }
    return parse_settings(data, env={})[0]


def _tone(seconds: float, freq: float = 440.0, rate: int = 8000) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    return (np.sin(2 * math.pi * freq * t) * 6000).astype("<i2").tobytes()


async def _wait_for(predicate, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.05)


async def test_audio_during_the_handshake_reaches_deepgram_up_to_the_documented_hold() -> None:
    sim = DeepgramSimulator(settings_delay_s=HANDSHAKE_S)
    await sim.start()
    app = App(_settings(sim.url))
    await app.start()
    try:
        leg = CallerLeg("127.0.0.1", app.audiosocket.bound_port)
        await leg.connect()
        await _wait_for(lambda: bool(sim.sessions) and bool(sim.sessions[0].received_messages), 5.0)
        await leg.play(_tone(CALLER_S))  # real time, all before SettingsApplied
        assert not sim.sessions[0].applied
        simsess = sim.sessions[0]
        await _wait_for(lambda: simsess.applied, HANDSHAKE_S + 2)
        await _wait_for(lambda: simsess.audio_bytes_received >= int(CALLER_S * 8000), 2.0)
        # Every frame of it (μ-law 8 kHz, 160 bytes a frame), nothing before Settings.
        assert simsess.audio_bytes_received == int(CALLER_S * 8000)
        assert simsess.audio_bytes_before_settings == 0
        await leg.hangup()
        await _wait_for(lambda: app.engine.active_calls == 0, 5.0)
    finally:
        await app.stop()
        await sim.stop()
