"""The whole engine (audiosocket mode, loopback) with the Deepgram simulator: the call's
function executor is wired in, keypresses (AudioSocket 0x03) reach the model, an HTTP
function is answered, the agent hangs up after its goodbye, and an action the mode
cannot do (transfer without ARI) makes the agent apologise while the call goes on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from voiceline.app import App
from voiceline.config import parse_settings
from voiceline.sim.audiosocket_caller import CallerLeg
from voiceline.sim.deepgram_sim import DeepgramSimulator
from voiceline.sim.sim_intents import APOLOGY, GOODBYE_LINE, TRANSFER_LINE

pytestmark = pytest.mark.espeak


@pytest.fixture
async def time_url() -> AsyncIterator[str]:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"time": "10:42"})

    app = web.Application()
    app.router.add_post("/time", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/time"
    await runner.cleanup()


@pytest.fixture
async def sim() -> AsyncIterator[DeepgramSimulator]:
    simulator = DeepgramSimulator(think_delay_s=0.0, speed=4.0)
    await simulator.start()
    yield simulator
    await simulator.stop()


async def _app(sim: DeepgramSimulator, time_url: str, transcript: str, **actions: Any) -> App:
    url = f"{sim.url}?transcript={transcript.replace(' ', '+')}"
    settings = parse_settings({
        "mode": "audiosocket", "default_provider": "deepgram", "audiosocket": {"port": 0},
        "http": {"enabled": False}, "history": {"enabled": False},
        "providers": {"deepgram": {
            "url": url, "api_key": "k", "greeting": None,
            "actions": {"speech_settle_ms": 300,
                        "http": [{"name": "get_time", "description": "the time", "url": time_url}], **actions},
        }},
    }, env={})[0]
    app = App(settings)
    await app.start()
    return app


async def _wait_for(predicate, timeout=10.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := predicate()):
        if loop.time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)
    return value


def _speech(seconds: float = 1.0) -> bytes:
    """Something the simulator's speech detector takes for words."""
    t = np.arange(int(8000 * seconds)) / 8000
    return (np.sin(2 * np.pi * 300 * t) * np.sin(2 * np.pi * 3 * t) * 8000).astype("<i2").tobytes()


def _said(app: App, call_id: str) -> list[str]:
    session = app.store.get(call_id)
    return [line["text"] for line in session.transcript if line["role"] == "assistant"] if session else []


async def _call(app: App) -> CallerLeg:
    leg = CallerLeg("127.0.0.1", app.audiosocket.bound_port)
    await leg.connect()
    await _wait_for(lambda: app.engine.active_calls == 1)
    return leg


async def test_keypress_over_audiosocket_reaches_the_model(sim, time_url):
    app = await _app(sim, time_url, "hello")
    try:
        leg = await _call(app)
        await leg.send_silence(0.2)
        leg.send_dtmf("5")
        await _wait_for(lambda: "You pressed 5." in _said(app, leg.call_uuid))
        injected = [m["content"] for m in sim.received_messages if m["type"] == "InjectUserMessage"]
        assert injected == ["The caller pressed 5 on the phone keypad."]
        await leg.hangup()
    finally:
        await app.stop()


async def test_http_function_is_answered_through_the_engine(sim, time_url):
    app = await _app(sim, time_url, "What time is it")
    try:
        leg = await _call(app)
        await leg.play(_speech())
        await leg.send_silence(1.0)
        await _wait_for(lambda: "It is 10:42 right now." in _said(app, leg.call_uuid))
        [call] = sim.sessions[0].function_calls
        assert call["name"] == "get_time" and call["content"] == '{"time":"10:42"}'
        await leg.hangup()
    finally:
        await app.stop()


async def test_agent_hangs_up_after_its_goodbye(sim, time_url):
    app = await _app(sim, time_url, "ok goodbye", hangup={"enabled": True})
    ended: dict[str, str] = {}
    end_call = app.engine.end_call

    async def record_reason(call_id: str, reason: str) -> None:
        ended.setdefault(call_id, reason)
        await end_call(call_id, reason)

    app.engine.end_call = record_reason  # what the call's hangup action ends it with
    try:
        leg = await _call(app)
        call_id = leg.call_uuid
        await leg.play(_speech())
        await leg.send_silence(1.0)
        assert await leg.wait_closed(15.0), "the engine did not hang up"
        assert leg.closed_reason == "engine closed"
        assert [f.kind for f in leg.received][-1] == 0x00  # AudioSocket hangup frame
        await _wait_for(lambda: app.engine.active_calls == 0)
        assert ended[call_id] == "hangup by agent"
        assert GOODBYE_LINE in sim.sessions[0].turns[-1].text
        # Hung up only once the goodbye had been played: it was sent in full.
        assert sim.sessions[0].turns[-1].completed
    finally:
        await app.stop()


async def test_transfer_without_ari_is_an_error_the_agent_apologises_and_the_call_goes_on(sim, time_url):
    app = await _app(sim, time_url, "operator please",
                     transfer={"enabled": True, "targets": [{"name": "operator", "extension": "operator"}]})
    try:
        leg = await _call(app)
        await leg.play(_speech())
        await leg.send_silence(1.0)
        await _wait_for(lambda: APOLOGY in _said(app, leg.call_uuid), timeout=20)
        said = _said(app, leg.call_uuid)
        assert said.index(TRANSFER_LINE) < said.index(APOLOGY)
        [call] = sim.sessions[0].function_calls
        assert "not available in this call-control mode" in call["content"]
        assert app.engine.active_calls == 1  # the call goes on
        await leg.hangup()
    finally:
        await app.stop()
