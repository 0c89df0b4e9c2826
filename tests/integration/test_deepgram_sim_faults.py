"""The simulator's fault modes against the real DeepgramSession client: what the engine sees.

Each fault is chosen per connection through the URL (``?fault=NAME``), the way the e2e
suite and the benchmarks choose it, and once through the constructor (``--fault``'s path).
"""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from voiceline.config import DeepgramProviderSettings
from voiceline.providers.base import (
    AgentAudio,
    AgentAudioDone,
    AgentStartedSpeaking,
    ProviderClosed,
    ProviderError,
    ProviderWarning,
    Transcript,
)
from voiceline.providers.deepgram import DeepgramError, DeepgramSession
from voiceline.providers.deepgram_events import MALFORMED_JSON
from voiceline.sim.deepgram_sim import FAULTS, DeepgramSimulator
from voiceline.sim.speech import encode_pcm, silence, synthesize

from provider_events import EventCollector

GREETING = "Hello there."
CALLER = "Hi, I would like to check my order please."


@pytest.fixture(autouse=True)
async def _no_unhandled_loop_errors(loop_errors: list[dict[str, Any]]) -> AsyncIterator[None]:
    yield
    gc.collect()
    await asyncio.sleep(0)
    assert not loop_errors, f"unhandled exceptions in the event loop: {[c.get('message') for c in loop_errors]}"


@pytest.fixture
async def sim() -> AsyncIterator[DeepgramSimulator]:
    simulator = DeepgramSimulator(speed=8, think_delay_s=0.05)
    await simulator.start()
    yield simulator
    await simulator.stop()


def settings(url: str, **kw: Any) -> DeepgramProviderSettings:
    kw.setdefault("greeting", None)
    return DeepgramProviderSettings(url=url, api_key="k", **kw)


async def speak(session: DeepgramSession) -> None:
    audio = encode_pcm(silence(200) + synthesize(CALLER, 8000) + silence(900), "mulaw")
    for i in range(0, len(audio), 160):
        await session.send_audio(audio[i : i + 160])
        await asyncio.sleep(0.001)


def test_every_fault_is_tested_here() -> None:
    assert set(FAULTS) == {"close-mid-turn", "malformed-json", "error", "no-welcome"}


async def test_close_mid_turn_ends_the_session_with_an_error(sim: DeepgramSimulator) -> None:
    session = DeepgramSession(settings(f"{sim.url}?fault=close-mid-turn&speed=1&long_answer_s=4"))
    events = EventCollector(session)
    await session.start()
    await speak(session)
    await events.wait_for(lambda e: isinstance(e, AgentAudio))
    await asyncio.wait_for(events.task, 10)  # events() ends on its own
    assert not events.of(AgentAudioDone)
    assert events.of(AgentStartedSpeaking)
    closed = events.events[-1]
    assert isinstance(closed, ProviderClosed) and closed.error
    fatal = events.of(ProviderError)
    assert len(fatal) == 1 and fatal[0].fatal and fatal[0].message == closed.reason
    turn = sim.sessions[0].turns[-1]
    assert turn.kind == "answer" and not turn.completed and 0 < turn.bytes_sent < turn.audio_bytes
    await session.close()  # the engine still closes: harmless
    assert len(events.of(ProviderClosed)) == 1


async def test_malformed_json_gives_a_warning_and_no_audio_done(sim: DeepgramSimulator) -> None:
    session = DeepgramSession(settings(f"{sim.url}?fault=malformed-json", greeting=GREETING))
    events = EventCollector(session)
    await session.start()
    await events.wait_for(lambda e: isinstance(e, ProviderWarning) and e.code == MALFORMED_JSON)
    await speak(session)
    await events.wait_for(lambda e: isinstance(e, ProviderWarning) and e.code == MALFORMED_JSON, count=2)
    assert not events.of(AgentAudioDone)
    assert len(events.of(AgentStartedSpeaking)) == 2  # greeting and answer both played
    assert not events.of(ProviderError) and not session._closed  # the call goes on
    assert session.mapper.malformed_messages == 2
    assert len(sim.sessions[0].sent_raw) == 2
    with pytest.raises(ValueError):
        json.loads(sim.sessions[0].sent_raw[0])
    await session.close()
    await asyncio.wait_for(events.task, 5)
    assert events.events[-1] == ProviderClosed("call ended")


async def test_error_after_greeting_is_reported_and_the_session_goes_on(sim: DeepgramSimulator) -> None:
    session = DeepgramSession(settings(f"{sim.url}?fault=error", greeting=GREETING))
    events = EventCollector(session)
    await session.start()
    await events.wait_for(lambda e: isinstance(e, ProviderError))
    (error,) = events.of(ProviderError)
    assert not error.fatal and error.code == "SIMULATED_FAULT" and "Simulated fault" in error.message
    # After the greeting turn.
    assert events.events.index(events.of(AgentAudioDone)[0]) < events.events.index(error)
    await speak(session)
    await events.wait_for(lambda e: isinstance(e, AgentAudioDone), count=2)
    assert Transcript("assistant", sim.defaults.answer_text) in events.events
    assert len(events.of(ProviderError)) == 1
    await session.close()
    await asyncio.wait_for(events.task, 5)
    assert events.events[-1] == ProviderClosed("call ended")


async def test_error_without_greeting_comes_after_settings_applied(sim: DeepgramSimulator) -> None:
    session = DeepgramSession(settings(f"{sim.url}?fault=error"))
    events = EventCollector(session)
    await session.start()  # the Error follows SettingsApplied: not a refused session
    await events.wait_for(lambda e: isinstance(e, ProviderError))
    assert not events.of(ProviderError)[0].fatal
    await session.close()


async def test_no_welcome_makes_start_raise_within_the_timeout(sim: DeepgramSimulator) -> None:
    session = DeepgramSession(settings(f"{sim.url}?fault=no-welcome", connect_timeout_s=0.5))
    events = EventCollector(session)
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(DeepgramError, match=r"no Welcome within 0\.5s"):
        await session.start()
    assert loop.time() - began < 2.0
    await asyncio.wait_for(events.task, 5)
    assert len(events.events) == 1 and isinstance(events.events[0], ProviderClosed) and events.events[0].error
    assert sim.sessions[0].sent_messages == []


async def test_fault_from_the_constructor_applies_to_every_call() -> None:
    simulator = DeepgramSimulator(fault="no-welcome")
    await simulator.start()
    try:
        for _ in range(2):
            with pytest.raises(DeepgramError, match="Welcome"):
                await DeepgramSession(settings(simulator.url, connect_timeout_s=0.3)).start()
    finally:
        await simulator.stop()
    assert len(simulator.sessions) == 2


def test_unknown_fault_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown fault 'explode'"):
        DeepgramSimulator(fault="explode")


def test_cli_takes_fault() -> None:
    """``python -m voiceline.sim.deepgram_sim --fault NAME`` starts and names the fault."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "voiceline.sim.deepgram_sim", "--port", "0", "--fault", "malformed-json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        line = ""
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if "deepgram simulator on" in line or not line:
                break
        assert "fault malformed-json" in line, line
    finally:
        proc.terminate()
        proc.wait(10)
    bad = subprocess.run(
        [sys.executable, "-m", "voiceline.sim.deepgram_sim", "--fault", "explode"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "--fault" in bad.stderr
