"""The real Deepgram client against the protocol simulator on loopback.

Every test watches the event loop's exception handler: a background task dying with
an unretrieved exception ("Task exception was never retrieved") fails the test.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pydantic
import pytest
from deepgram.agent.v1.types import (
    AgentV1InjectAgentMessage,
    AgentV1InjectUserMessage,
    AgentV1KeepAlive,
    AgentV1SendFunctionCallResponse,
    AgentV1Settings,
    AgentV1UpdatePrompt,
)

from voiceline.config import DeepgramProviderSettings
from voiceline.providers import deepgram as dg
from voiceline.providers.base import (
    AgentAudio,
    AgentAudioDone,
    AgentStartedSpeaking,
    AgentThinking,
    FunctionCallRequest,
    ProviderClosed,
    ProviderError,
    ProviderWarning,
    Transcript,
    UserStartedSpeaking,
)
from voiceline.providers.deepgram import (
    DeepgramAuthError,
    DeepgramError,
    DeepgramSession,
    DeepgramSettingsError,
    build_settings,
)
from voiceline.sim.deepgram_sim import PATTERNS, DeepgramSimulator, delivery_plan
from voiceline.sim.speech import SpeechDetector, encode_pcm, silence, synthesize

from provider_events import EventCollector

GREETING = "Hello there."
CALLER = "Hi, I would like to check my order please."


# ---- fixtures and helpers ----------------------------------------------------------------


def dg_settings(**kw: Any) -> DeepgramProviderSettings:
    """The provider's config model; no greeting unless a test asks for one."""
    kw.setdefault("greeting", None)
    return DeepgramProviderSettings(**kw)


@pytest.fixture(autouse=True)
async def _no_unhandled_loop_errors(loop_errors: list[dict[str, Any]]) -> AsyncIterator[None]:
    yield
    gc.collect()
    await asyncio.sleep(0)
    assert not loop_errors, f"unhandled exceptions in the event loop: {[c.get('message') for c in loop_errors]}"


@pytest.fixture
async def make_sim() -> AsyncIterator[Callable[..., Any]]:
    sims: list[DeepgramSimulator] = []

    async def factory(**kwargs: Any) -> DeepgramSimulator:
        sim = DeepgramSimulator(**kwargs)
        await sim.start()
        sims.append(sim)
        return sim

    yield factory
    for sim in sims:
        await sim.stop()


async def started(cfg: DeepgramProviderSettings) -> tuple[DeepgramSession, EventCollector]:
    session = DeepgramSession(cfg)
    collector = EventCollector(session)
    await session.start()
    return session, collector


async def finish(session: DeepgramSession, collector: EventCollector) -> None:
    await session.close()
    await asyncio.wait_for(collector.task, 5)
    assert isinstance(collector.events[-1], ProviderClosed)


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def caller_mulaw(text: str = CALLER, trailing_ms: int = 900) -> bytes:
    """A caller utterance as μ-law 8 kHz, with silence around it so it ends cleanly."""
    return encode_pcm(silence(200) + synthesize(text, 8000) + silence(trailing_ms), "mulaw")


async def speak(session: DeepgramSession, audio: bytes, frame: int = 160, pause: float = 0.001) -> None:
    """20 ms frames, faster than real time: the simulator counts samples, not seconds."""
    for i in range(0, len(audio), frame):
        await session.send_audio(audio[i : i + frame])
        await asyncio.sleep(pause)


def sdk_strict(model_cls: type[pydantic.BaseModel], data: dict[str, Any]) -> None:
    model = model_cls.model_validate(data, strict=True)
    assert not model.model_extra, f"unknown fields {sorted(model.model_extra or {})}"
    assert model.model_dump(exclude_unset=True, by_alias=True) == data


# ---- pure pieces of the simulator --------------------------------------------------------


@pytest.mark.parametrize("pattern", PATTERNS)
def test_delivery_plan_covers_every_byte(pattern: str) -> None:
    total = 8000 * 3 + 7
    plan = delivery_plan(total, pattern, bytes_per_sample=1, sample_rate=8000, speed=1.2, stall_s=3.0, rng=random.Random(1))
    sizes = [s for s, _ in plan]
    times = [t for _, t in plan]
    assert sum(sizes) == total and all(s > 0 for s in sizes)
    assert times == sorted(times)
    if pattern == "tiny":
        assert max(sizes) <= 7
    if pattern == "odd":
        assert all(s % 2 == 1 and 33 <= s <= 999 for s in sizes[:-1])
    if pattern == "burst":
        assert set(times) == {0.0}
    if pattern == "stall":
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert max(gaps) >= 3.0 and times[-1] < 3.0 / 1.2 + 3.0 + 0.1
    if pattern in ("steady", "jitter", "tiny", "odd"):
        # Never slower than speed x real time.
        assert times[-1] <= 3.0 / 1.2 + 0.01


def test_speech_detector_finds_one_utterance() -> None:
    pcm = silence(400) + synthesize(CALLER, 8000) + silence(800)
    detector = SpeechDetector(8000)
    events = []
    for i in range(0, len(pcm), 77):  # arbitrary chunking, odd sizes included
        events += detector.feed(pcm[i : i + 77])
    assert [e.kind for e in events] == ["speech_started", "speech_ended"]
    assert 0.3 <= events[0].at_s <= 0.6
    assert 1.0 < events[1].duration_s < 5.0


# ---- client <-> simulator ----------------------------------------------------------------


async def test_handshake_and_greeting(make_sim: Callable[..., Any]) -> None:
    sim = await make_sim(speed=8)
    cfg = dg_settings(url=sim.url, api_key="test-key", greeting=GREETING)
    session, events = await started(cfg)
    assert session.request_id == sim.sessions[0].id
    await events.wait_for(lambda e: isinstance(e, AgentAudioDone))
    assert events.kinds() == ["Transcript", "AgentStartedSpeaking", "AgentAudio", "AgentAudioDone"]
    assert events.of(Transcript)[0] == Transcript("assistant", GREETING)
    started_ev = events.of(AgentStartedSpeaking)[0]
    assert started_ev.total_latency_ms is not None and started_ev.total_latency_ms >= 0
    expected = encode_pcm(synthesize(GREETING, 8000), "mulaw")
    assert events.audio() == expected
    # The Settings the service got is exactly build_settings(cfg), and the SDK's type takes it.
    wire = sim.sessions[0].received_messages[0]
    assert wire == build_settings(cfg)
    sdk_strict(AgentV1Settings, wire)
    await finish(session, events)
    assert events.events[-1] == ProviderClosed("call ended", error=False)
    await session.close()  # idempotent
    assert len(events.of(ProviderClosed)) == 1


async def test_audio_before_settings_applied_is_not_lost(make_sim: Callable[..., Any]) -> None:
    sim = await make_sim(settings_delay_s=0.4)
    session = DeepgramSession(dg_settings(url=sim.url, api_key="k"))
    events = EventCollector(session)
    rng = random.Random(7)
    sent = bytearray()

    async def feed(n: int) -> None:
        for _ in range(n):
            chunk = bytes(rng.randrange(256) for _ in range(160))
            sent.extend(chunk)
            await session.send_audio(chunk)
            await asyncio.sleep(0.01)

    await feed(3)  # before start() is even called
    start = asyncio.create_task(session.start())
    await feed(25)  # while Settings is being applied
    await start
    assert session.stats["audio_bytes_buffered"] >= 28 * 160
    await feed(10)  # after
    await wait_until(lambda: sim.sessions[0].audio_bytes_received == len(sent))
    simsess = sim.sessions[0]
    assert bytes(simsess.audio_in) == bytes(sent)  # every byte, in order
    assert simsess.audio_bytes_before_settings == 0 and simsess.errors_sent == []
    assert session.stats["audio_bytes_dropped"] == 0
    await finish(session, events)


async def test_pre_settings_buffer_is_bounded(make_sim: Callable[..., Any]) -> None:
    sim = await make_sim(settings_delay_s=0.3)
    session = DeepgramSession(dg_settings(url=sim.url, api_key="k", pre_settings_buffer_ms=100))
    events = EventCollector(session)
    chunks = [bytes([i]) * 160 for i in range(25)]  # 500 ms
    for chunk in chunks:
        await session.send_audio(chunk)
    await session.start()
    assert session.stats["audio_bytes_dropped"] == 20 * 160
    await wait_until(lambda: sim.sessions[0].audio_bytes_received == 5 * 160)
    assert bytes(sim.sessions[0].audio_in) == b"".join(chunks[-5:])  # the newest 100 ms
    await finish(session, events)


async def test_caller_turn_gets_an_answer(make_sim: Callable[..., Any]) -> None:
    sim = await make_sim(speed=8, answer_text="Your order ships tomorrow.")
    session, events = await started(dg_settings(url=sim.url, api_key="k"))
    await speak(session, caller_mulaw())
    await events.wait_for(lambda e: isinstance(e, AgentAudioDone))
    assert events.kinds() == [
        "UserStartedSpeaking",
        "Transcript",
        "AgentThinking",
        "Transcript",
        "AgentStartedSpeaking",
        "AgentAudio",
        "AgentAudioDone",
    ]
    user, assistant = events.of(Transcript)
    assert user.role == "user" and user.text.startswith("(caller spoke ")
    assert assistant == Transcript("assistant", "Your order ships tomorrow.")
    assert events.of(AgentThinking)[0].content
    latency = events.of(AgentStartedSpeaking)[0]
    assert latency.ttt_latency_ms is not None and latency.ttt_latency_ms >= 100  # think_delay 0.15 s
    assert latency.total_latency_ms is not None and latency.total_latency_ms >= latency.ttt_latency_ms
    assert events.audio() == encode_pcm(synthesize("Your order ships tomorrow.", 8000), "mulaw")
    assert len(sim.sessions[0].utterances) == 1
    await finish(session, events)


async def test_barge_in_stops_agent_audio(make_sim: Callable[..., Any]) -> None:
    sim = await make_sim(speed=1.0, long_answer_s=8)
    session, events = await started(dg_settings(url=sim.url, api_key="k", greeting=GREETING))
    await events.wait_for(lambda e: isinstance(e, AgentAudio), count=10)
    await speak(session, caller_mulaw(trailing_ms=100))
    await events.wait_for(lambda e: isinstance(e, UserStartedSpeaking))
    received_at_barge_in = len(events.audio())
    await asyncio.sleep(0.3)
    turn = sim.sessions[0].turns[0]
    assert turn.barged_in and not turn.completed
    assert turn.bytes_sent < turn.audio_bytes
    assert len(events.audio()) - received_at_barge_in < 800  # at most one in-flight chunk or so
    assert not events.of(AgentAudioDone)
    await finish(session, events)


@pytest.mark.parametrize(
    ("pattern", "encoding", "rate"),
    [(p, "mulaw", 8000) for p in PATTERNS] + [("odd", "linear16", 16000), ("tiny", "alaw", 8000)],
)
async def test_every_delivery_pattern_delivers_identical_audio(
    make_sim: Callable[..., Any], pattern: str, encoding: str, rate: int
) -> None:
    sim = await make_sim(speed=1.2)  # pattern chosen per call through the URL
    url = f"{sim.url}?pattern={pattern}&speed=6&stall_s=0.4&seed=3"
    cfg = dg_settings(url=url, api_key="k", greeting=GREETING, output_encoding=encoding, output_sample_rate=rate)
    session, events = await started(cfg)
    await events.wait_for(lambda e: isinstance(e, AgentAudioDone), timeout=15)
    expected = encode_pcm(synthesize(GREETING, rate), encoding)
    assert events.audio() == expected
    assert sim.sessions[0].agent_audio_bytes_sent == len(expected)
    assert sim.sessions[0].options.pattern == pattern
    sizes = [len(e.data) for e in events.of(AgentAudio)]
    if pattern == "tiny":
        assert max(sizes) <= 7
    elif pattern == "odd":
        assert all(s % 2 for s in sizes[:-1])
    elif pattern == "burst":
        assert max(sizes) == min(len(expected), rate * (2 if encoding == "linear16" else 1))
    assert not events.of(ProviderError)
    await finish(session, events)


async def test_bad_settings_make_start_raise(make_sim: Callable[..., Any]) -> None:
    sim = await make_sim(error_on_settings="Invalid think model for this project")
    session = DeepgramSession(dg_settings(url=sim.url, api_key="k"))
    events = EventCollector(session)
    with pytest.raises(DeepgramSettingsError, match="Invalid think model for this project"):
        await session.start()
    await asyncio.wait_for(events.task, 5)
    # No ProviderError on top: start() raising is the report. The session is over.
    assert len(events.events) == 1 and isinstance(events.events[0], ProviderClosed)
    assert events.events[0].error and "Invalid think model" in events.events[0].reason


async def test_unknown_settings_field_is_named(make_sim: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    sim = await make_sim()
    real = dg.build_settings

    def with_typo(cfg: DeepgramProviderSettings) -> dict[str, Any]:
        settings = real(cfg)
        settings["agent"]["think"]["provider"]["temprature"] = 0.5
        return settings

    monkeypatch.setattr(dg, "build_settings", with_typo)
    session = DeepgramSession(dg_settings(url=sim.url, api_key="k"))
    with pytest.raises(DeepgramSettingsError, match=r"agent\.think\.provider\.temprature"):
        await session.start()
    await session.close()


async def test_simulator_is_strict_on_the_wire(make_sim: Callable[..., Any]) -> None:
    """Raw protocol: audio before Settings and a string sample rate are errors."""
    sim = await make_sim()
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(sim.url, headers={"Authorization": "Token k"}) as ws,
    ):
        assert (await ws.receive_json())["type"] == "Welcome"
        await ws.send_bytes(b"\xff" * 160)
        err = await ws.receive_json()
        assert err["type"] == "Error" and "before Settings" in err["description"]
        settings = build_settings(dg_settings(api_key="k"))
        settings["audio"]["input"]["sample_rate"] = "8000"
        await ws.send_str(json.dumps(settings))
        err = await ws.receive_json()
        assert err["type"] == "Error" and "audio.input.sample_rate" in err["description"]
        assert (await ws.receive()).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)


async def test_missing_or_refused_token(make_sim: Callable[..., Any]) -> None:
    sim = await make_sim(api_keys=["right-key"])
    # No key configured: refused before any network I/O, with a message that says what to set.
    session = DeepgramSession(dg_settings(url=sim.url))
    with pytest.raises(DeepgramAuthError, match="DEEPGRAM_API_KEY"):
        await session.start()
    # No Authorization header at all: HTTP 401, like the real service.
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(sim.url)
        assert info.value.status == 401
    # A key the service does not accept.
    session = DeepgramSession(dg_settings(url=sim.url, api_key="wrong-key"))
    with pytest.raises(DeepgramAuthError, match="401"):
        await session.start()
    assert sim.sessions == []


async def test_unreachable_service_raises() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    session = DeepgramSession(dg_settings(url=f"ws://127.0.0.1:{port}/v1/agent/converse", api_key="k"))
    with pytest.raises(DeepgramError, match="cannot connect"):
        await session.start()


async def test_settings_applied_timeout(make_sim: Callable[..., Any]) -> None:
    sim = await make_sim(settings_delay_s=1.0)
    session = DeepgramSession(dg_settings(url=sim.url, api_key="k", settings_timeout_s=0.2))
    with pytest.raises(DeepgramSettingsError, match="SettingsApplied"):
        await session.start()


async def test_close_during_start(make_sim: Callable[..., Any]) -> None:
    """The caller hangs up while Settings is being applied: start() fails cleanly."""
    sim = await make_sim(settings_delay_s=0.5)
    session = DeepgramSession(dg_settings(url=sim.url, api_key="k"))
    events = EventCollector(session)
    start = asyncio.create_task(session.start())
    await wait_until(lambda: bool(sim.sessions) and bool(sim.sessions[0].received_messages))
    await session.send_audio(b"\xff" * 160)
    await session.close("caller hung up")
    with pytest.raises(DeepgramError, match="closed during start"):
        await start
    await asyncio.wait_for(events.task, 5)
    assert events.events == [ProviderClosed("caller hung up", error=False)]
    assert session._keepalive is None


async def test_server_closing_mid_call_is_reported_not_raised(make_sim: Callable[..., Any]) -> None:
    sim = await make_sim(close_after_s=0.3, speed=1.0, long_answer_s=5)
    session, events = await started(dg_settings(url=sim.url, api_key="k", greeting=GREETING))
    await speak(session, b"\xff" * 1600, pause=0.02)  # keep streaming while it dies
    await asyncio.wait_for(events.task, 5)
    errors = events.of(ProviderError)
    assert len(errors) == 1 and errors[0].fatal
    assert "1011" in errors[0].message and "simulated provider failure" in errors[0].message
    assert errors[0].code == "1011"
    assert events.events[-1] == ProviderClosed(errors[0].message, error=True)
    # The engine may keep calling in after the loss: nothing raises.
    await session.send_audio(b"\xff" * 160)
    assert await session.update_prompt("still there?") is False
    await session.close()
    assert len(events.of(ProviderClosed)) == 1


async def test_keepalive_only_when_idle(make_sim: Callable[..., Any]) -> None:
    sim = await make_sim()
    session, events = await started(dg_settings(url=sim.url, api_key="k", keepalive_interval_s=0.2))
    await asyncio.sleep(0.7)
    received = sim.sessions[0].received_messages
    keepalives = [m for m in received if m["type"] == "KeepAlive"]
    assert 2 <= len(keepalives) <= 4
    sdk_strict(AgentV1KeepAlive, keepalives[0])
    # While audio flows, no KeepAlive is needed.
    before = len(keepalives)
    for _ in range(20):
        await session.send_audio(b"\xff" * 160)
        await asyncio.sleep(0.04)
    during = [m for m in sim.sessions[0].received_messages if m["type"] == "KeepAlive"]
    assert len(during) == before
    assert session.stats["keepalives_sent"] == before
    await finish(session, events)


async def test_control_messages_and_function_calls(make_sim: Callable[..., Any]) -> None:
    sim = await make_sim(speed=8, call_function="lookup_order", answer_text="Found it.")
    cfg = dg_settings(
        url=sim.url,
        api_key="k",
        functions=[{"name": "lookup_order", "description": "Find an order", "parameters": {"type": "object"}}],
    )
    session, events = await started(cfg)
    assert await session.update_prompt("Be brief.")
    assert await session.inject_agent_message("One moment please.")
    await events.wait_for(lambda e: isinstance(e, AgentAudioDone))
    assert Transcript("assistant", "One moment please.") in events.events

    assert await session.inject_user_message("Where is order 42?")
    await events.wait_for(lambda e: isinstance(e, FunctionCallRequest))
    call = events.of(FunctionCallRequest)[0]
    assert call.name == "lookup_order" and call.client_side
    assert call.arguments["utterance"] == "Where is order 42?"
    assert await session.send_function_result(call.call_id, {"status": "shipped"})
    await events.wait_for(lambda e: isinstance(e, AgentAudioDone), count=2)
    assert Transcript("assistant", "Found it.") in events.events

    by_type = {m["type"]: m for m in sim.sessions[0].received_messages}
    sdk_strict(AgentV1UpdatePrompt, by_type["UpdatePrompt"])
    sdk_strict(AgentV1InjectAgentMessage, by_type["InjectAgentMessage"])
    sdk_strict(AgentV1InjectUserMessage, by_type["InjectUserMessage"])
    sdk_strict(AgentV1SendFunctionCallResponse, by_type["FunctionCallResponse"])
    assert by_type["FunctionCallResponse"] == {
        "type": "FunctionCallResponse",
        "id": call.call_id,
        "name": "lookup_order",
        "content": json.dumps({"status": "shipped"}, separators=(",", ":")),
    }
    assert sim.sessions[0].errors_sent == []
    await finish(session, events)


async def test_runtime_errors_and_warnings_become_events(make_sim: Callable[..., Any]) -> None:
    sim = await make_sim()
    session, events = await started(dg_settings(url=sim.url, api_key="k"))
    simsess = sim.sessions[0]
    # Server-side pushes the client must map: a non-fatal Error, a Warning, an unknown type.
    await sim._send(simsess, {"type": "Warning", "description": "slow think provider", "code": "W1"})
    await sim._send(simsess, {"type": "Error", "message": "function failed", "code": "E1"})
    await sim._send(simsess, {"type": "SomethingNew", "x": 1})
    await sim._send(simsess, {"type": "InjectionRefused", "message": "busy"})
    await events.wait_for(lambda e: isinstance(e, ProviderError))
    await events.wait_for(lambda e: isinstance(e, ProviderWarning), count=2)
    assert ProviderWarning("slow think provider", code="W1") in events.events
    assert ProviderError("function failed", code="E1", fatal=False) in events.events
    assert not session._closed  # a non-fatal error does not end the call
    await finish(session, events)
