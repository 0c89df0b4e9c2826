"""The one function-call path with the real provider clients against the simulators:
the simulated model asks for a declared function, the engine's executor runs it
(HTTP functions against a local server), the result goes back through
``send_function_result`` and the model speaks about it; errors make it apologise."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from deepgram.agent.v1.types import AgentV1InjectUserMessage, AgentV1SendFunctionCallResponse

from provider_events import EventCollector

from voiceline.config import ActionsSettings, DeepgramProviderSettings, HttpFunction
from voiceline.core.actions import ActionError, FunctionExecutor
from voiceline.functions_http import MAX_REDIRECTS, call_http_function
from voiceline.call_functions import build_handlers
from voiceline.providers.base import FunctionCallRequest, Transcript
from voiceline.providers.deepgram import DeepgramSession
from voiceline.sim.deepgram_sim import DeepgramSimulator
from voiceline.sim.sim_intents import APOLOGY


# ---- a local HTTP service ------------------------------------------------------------------


class Service:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.app = web.Application()
        self.app.router.add_post("/time", self.time)
        self.app.router.add_post("/garbage", self.garbage)
        self.app.router.add_post("/big", self.big)
        self.app.router.add_post("/slow", self.slow)
        self.app.router.add_post("/hop", self.hop)
        self.app.router.add_post("/away", self.away)
        self.app.router.add_post("/loop", self.loop)
        self.app.router.add_post("/fail", self.fail)
        self.url = ""

    async def time(self, request: web.Request) -> web.Response:
        self.requests.append({"path": "/time", "json": await request.json(), "auth": request.headers.get("X-Key")})
        return web.json_response({"time": "10:42"})

    async def garbage(self, request: web.Request) -> web.Response:
        return web.Response(text="<html>oops</html>", content_type="text/html")

    async def big(self, request: web.Request) -> web.Response:
        return web.json_response({"blob": "x" * 5000})

    async def slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response({})

    async def hop(self, request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect("/time")

    async def away(self, request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect("http://example.invalid/time")

    async def loop(self, request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect("/loop")

    async def fail(self, request: web.Request) -> web.Response:
        return web.json_response({"message": "down"}, status=503)


@pytest.fixture
async def service() -> AsyncIterator[Service]:
    svc = Service()
    runner = web.AppRunner(svc.app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    svc.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield svc
    await runner.cleanup()


def fn(service: Service, path: str, **kw: Any) -> HttpFunction:
    kw.setdefault("name", "get_time")
    return HttpFunction(url=service.url + path, **kw)


# ---- HTTP functions on their own ------------------------------------------------------------


async def test_http_function_posts_the_arguments_and_returns_the_json(service):
    result = await call_http_function(fn(service, "/time", headers={"X-Key": "k1"}), {"zone": "UTC"})
    assert result == {"time": "10:42"}
    assert service.requests == [{"path": "/time", "json": {"zone": "UTC"}, "auth": "k1"}]


async def test_same_host_redirect_is_followed(service):
    assert await call_http_function(fn(service, "/hop"), {}) == {"time": "10:42"}


@pytest.mark.parametrize(
    ("path", "kw", "message"),
    [
        ("/garbage", {}, "reply is not JSON"),
        ("/big", {"max_response_bytes": 1000}, "larger than 1000 bytes"),
        ("/slow", {"timeout_s": 0.2}, "did not answer within 0.2 s"),
        ("/away", {}, "redirected to another host"),
        ("/loop", {}, f"redirected more than {MAX_REDIRECTS} times"),
        ("/fail", {}, "answered HTTP 503"),
    ],
)
async def test_http_function_failures_are_action_errors_without_the_url(service, path, kw, message):
    with pytest.raises(ActionError, match=message) as info:
        await call_http_function(fn(service, path, **kw), {})
    assert service.url not in str(info.value)


async def test_unreachable_service_is_an_action_error():
    with pytest.raises(ActionError, match="could not be reached"):
        await call_http_function(HttpFunction(name="f", url="http://127.0.0.1:9/x", timeout_s=2), {})


# ---- through the Deepgram client and simulator ---------------------------------------------


async def _deepgram(service: Service, path: str, **actions: Any):
    sim = DeepgramSimulator(think_delay_s=0.0, speed=20.0)
    await sim.start()
    cfg = DeepgramProviderSettings(
        url=sim.url, api_key="k", greeting=None,
        actions=ActionsSettings(http=[fn(service, path, description="the time now")], **actions),
    )
    session = DeepgramSession(cfg)
    events = EventCollector(session, timeout_s=15.0)
    await session.start()

    async def never(reason: str) -> None:
        raise AssertionError("no hangup expected")

    executor = FunctionExecutor(session, "c1", build_handlers(cfg.actions, None, never), timeout_s=2.0)
    return sim, session, events, executor


async def _close(sim, session, events) -> None:
    await session.close()
    await events.task
    await sim.stop()


async def test_deepgram_http_function_answer_is_spoken(service, loop_errors):
    sim, session, events, executor = await _deepgram(service, "/time")
    assert await session.inject_user_message("What time is it?")
    request = await events.wait_for(lambda e: isinstance(e, FunctionCallRequest))
    assert request.name == "get_time" and request.arguments == {"zone": "UTC"}
    record = await executor.run(request)
    assert record.ok and record.delivered
    await events.wait_for(lambda e: e == Transcript("assistant", "It is 10:42 right now."))
    received = {m["type"]: m for m in sim.sessions[0].received_messages}
    AgentV1SendFunctionCallResponse.model_validate(received["FunctionCallResponse"])
    assert json.loads(received["FunctionCallResponse"]["content"]) == {"time": "10:42"}
    assert sim.sessions[0].errors_sent == []
    await _close(sim, session, events)
    loop_errors.assert_clean()


async def test_deepgram_garbage_reply_gives_the_model_an_error_and_the_caller_an_apology(service, loop_errors):
    sim, session, events, executor = await _deepgram(service, "/garbage")
    assert await session.inject_user_message("What time is it?")
    request = await events.wait_for(lambda e: isinstance(e, FunctionCallRequest))
    record = await executor.run(request)
    assert not record.ok and "not JSON" in (record.error or "")
    await events.wait_for(lambda e: e == Transcript("assistant", APOLOGY))
    [call] = sim.sessions[0].function_calls
    assert "error" in json.loads(call["content"])
    await _close(sim, session, events)


async def test_deepgram_timeout_answers_the_model_with_an_error(service, loop_errors):
    sim, session, events, executor = await _deepgram(service, "/slow")
    assert await session.inject_user_message("What time is it?")
    request = await events.wait_for(lambda e: isinstance(e, FunctionCallRequest))
    executor._timeout_s = 0.3  # the function's own timeout is longer: the executor's answers first
    record = await executor.run(request)
    assert record.error == "function 'get_time' did not answer within 0.3 s"
    await events.wait_for(lambda e: e == Transcript("assistant", APOLOGY))
    await _close(sim, session, events)


async def test_deepgram_keypress_is_injected_as_a_user_message(service, loop_errors):
    sim, session, events, _ = await _deepgram(service, "/time")
    await session.send_dtmf("5")
    await events.wait_for(lambda e: e == Transcript("assistant", "You pressed 5."))
    injected = [m for m in sim.sessions[0].received_messages if m["type"] == "InjectUserMessage"]
    assert injected == [{"type": "InjectUserMessage", "content": "The caller pressed 5 on the phone keypad."}]
    AgentV1InjectUserMessage.model_validate(injected[0])
    await _close(sim, session, events)


async def test_deepgram_keypresses_can_be_ignored(service, loop_errors):
    sim, session, events, _ = await _deepgram(service, "/time", dtmf={"mode": "ignore"})
    await session.send_dtmf("5")
    # Sent after the keypress on the same socket: once the simulator answered it,
    # anything the keypress produced would have arrived before it.
    assert await session.inject_user_message("hello")
    await events.wait_for(lambda e: e == Transcript("user", "hello"))
    injected = [m["content"] for m in sim.sessions[0].received_messages if m["type"] == "InjectUserMessage"]
    assert injected == ["hello"]
    await _close(sim, session, events)


async def test_deepgram_declares_the_enabled_actions_and_http_functions(service, loop_errors):
    sim, session, events, _ = await _deepgram(
        service, "/time", hangup={"enabled": True},
        transfer={"enabled": True, "targets": [{"name": "operator", "context": "lab", "extension": "operator"}]},
    )
    functions = sim.sessions[0].settings["agent"]["think"]["functions"]
    assert [f["name"] for f in functions] == ["transfer", "hangup", "get_time"]
    assert functions[0]["parameters"]["properties"]["destination"]["enum"] == ["operator"]
    assert all("endpoint" not in f for f in functions)  # the engine runs them, not Deepgram
    await _close(sim, session, events)


# ---- through the OpenAI Realtime client and simulator --------------------------------------

import typing  # noqa: E402

from pydantic import BaseModel  # noqa: E402
from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent  # noqa: E402

from voiceline.audio import g711  # noqa: E402
from voiceline.config import OpenAIRealtimeProviderSettings  # noqa: E402
from voiceline.providers.openai_realtime import OpenAIRealtimeSession  # noqa: E402
from voiceline.sim.openai_sim import OpenAIRealtimeSimulator  # noqa: E402
from voiceline.sim.speech import synthesize  # noqa: E402


def _by_type(union: Any) -> dict[str, type[BaseModel]]:
    """The union's member models by their ``type`` literal (precise errors, not 100 union ones)."""
    members = typing.get_args(typing.get_args(union)[0]) if typing.get_origin(union) is typing.Annotated \
        else typing.get_args(union)
    return {typing.get_args(m.model_fields["type"].annotation)[0]: m for m in members}


CLIENT_EVENT = _by_type(RealtimeClientEvent)
SERVER_EVENT = _by_type(RealtimeServerEvent)


def _extras(value: Any, path: str = "") -> list[str]:
    """Fields the openai types do not know, anywhere in a validated model."""
    found: list[str] = []
    if isinstance(value, BaseModel):
        found += [f"{path}.{k}" for k in (value.model_extra or {})]
        for name in type(value).model_fields:
            found += _extras(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found += _extras(item, f"{path}[{i}]")
    return found


# What the real service sends but the openai package's GA types do not model: the
# session object's "object" and "id" (documented in the API reference's examples).
UNMODELLED = {".session.object", ".session.id"}


def openai_strict(types: dict[str, type[BaseModel]], event: dict[str, Any]) -> None:
    assert event["type"] in types, f"{event['type']!r} is not an event type of the openai package"
    model = types[event["type"]].model_validate(event)
    extras = [e for e in _extras(model) if not (event["type"].startswith("session.") and e in UNMODELLED)]
    assert extras == [], (event["type"], extras)


async def _openai(service: Service, path: str, transcript: str):
    sim = OpenAIRealtimeSimulator(user_transcript=transcript, delta_interval_s=0.0)
    await sim.start()
    cfg = OpenAIRealtimeProviderSettings(
        url=sim.url, api_key="sk-sim", connect_timeout_s=5.0,
        actions=ActionsSettings(http=[fn(service, path, description="the time now")],
                                hangup={"enabled": True}),
    )
    session = OpenAIRealtimeSession(cfg)
    events = EventCollector(session, timeout_s=15.0)
    await session.start()

    async def hangup(reason: str) -> None:
        raise AssertionError("no hangup expected")

    executor = FunctionExecutor(session, "c1", build_handlers(cfg.actions, None, hangup), timeout_s=2.0)
    return sim, session, events, executor


async def _say(session: OpenAIRealtimeSession, text: str) -> None:
    """Caller speech then 800 ms of silence, in 20 ms mu-law frames (server VAD hears it)."""
    wire = g711.slin_to_mulaw(synthesize(text, sample_rate=8000) + b"\x00\x00" * 6400)
    for i in range(0, len(wire), 160):
        await session.send_audio(wire[i:i + 160])
        if i % 4000 == 0:
            await asyncio.sleep(0)


def _check_types(sim: OpenAIRealtimeSimulator) -> None:
    """Every client message and every simulator event is a valid openai realtime type."""
    conn = sim.connections[0]
    problems: dict[str, str] = {}
    received = [{**e, "audio": ""} if e["type"] == "input_audio_buffer.append" else e for e in conn.received]
    for types, events in ((CLIENT_EVENT, received), (SERVER_EVENT, conn.sent)):
        for event in events:
            try:
                openai_strict(types, event)
            except (AssertionError, ValueError) as exc:
                problems.setdefault(event["type"], str(exc)[:600])
    assert problems == {}


async def test_openai_http_function_answer_is_spoken_and_every_message_is_a_valid_type(service, loop_errors):
    sim, session, events, executor = await _openai(service, "/time", "What time is it?")
    await _say(session, "What time is it?")
    request = await events.wait_for(lambda e: isinstance(e, FunctionCallRequest))
    assert request.name == "get_time" and request.arguments == {"zone": "UTC"}
    assert (await executor.run(request)).delivered
    await events.wait_for(lambda e: e == Transcript("assistant", "It is 10:42 right now."))
    conn = sim.connections[0]
    assert conn.functions.calls == [{"name": "get_time", "call_id": request.call_id,
                                    "output": '{"time":"10:42"}'}]
    assert conn.errors_sent == []
    tools = conn.session.tools
    assert [t["name"] for t in tools] == ["hangup", "get_time"] and all(t["type"] == "function" for t in tools)
    _check_types(sim)
    await _close(sim, session, events)
    loop_errors.assert_clean()


async def test_openai_garbage_reply_makes_the_agent_apologise(service, loop_errors):
    sim, session, events, executor = await _openai(service, "/garbage", "What time is it?")
    await _say(session, "What time is it?")
    request = await events.wait_for(lambda e: isinstance(e, FunctionCallRequest))
    await executor.run(request)
    await events.wait_for(lambda e: e == Transcript("assistant", APOLOGY))
    assert "error" in json.loads(sim.connections[0].functions.calls[0]["output"])
    assert sim.connections[0].errors_sent == []
    _check_types(sim)
    await _close(sim, session, events)


async def test_openai_keypress_becomes_a_user_item_and_is_answered(service, loop_errors):
    sim, session, events, _ = await _openai(service, "/time", "unused")
    await session.send_dtmf("7")
    await events.wait_for(lambda e: e == Transcript("assistant", "You pressed 7."))
    items = [e["item"] for e in sim.connections[0].received if e["type"] == "conversation.item.create"]
    assert items == [{"type": "message", "role": "user",
                      "content": [{"type": "input_text", "text": "The caller pressed 7 on the phone keypad."}]}]
    _check_types(sim)
    await _close(sim, session, events)


async def test_openai_barge_in_messages_are_valid_types(service, loop_errors):
    """Greeting, then the caller interrupts: response.cancel and a truncate at the played ms."""
    sim = OpenAIRealtimeSimulator(reply_text="Thank you for calling. " * 8, delta_interval_s=0.01)
    await sim.start()
    cfg = OpenAIRealtimeProviderSettings(url=sim.url, api_key="sk-sim", greeting="Hello there.")
    session = OpenAIRealtimeSession(cfg)
    events = EventCollector(session, timeout_s=15.0)
    await session.start()
    await events.wait_for(lambda e: type(e).__name__ == "AgentAudio")
    await session.interrupt(played_ms=100)
    # Sent after the interruption on the same socket: once it is answered, the
    # simulator has handled the cancel and the truncate.
    await session.send_dtmf("1")
    await events.wait_for(lambda e: e == Transcript("assistant", "You pressed 1."))
    conn = sim.connections[0]
    assert [e["type"] for e in conn.received if e["type"] in ("response.cancel", "conversation.item.truncate")] == [
        "response.cancel", "conversation.item.truncate"]
    truncate = next(e for e in conn.received if e["type"] == "conversation.item.truncate")
    assert truncate["audio_end_ms"] == 100
    _check_types(sim)
    await _close(sim, session, events)


async def test_openai_keypress_after_a_cancel_the_server_rejected_is_still_answered(service, loop_errors):
    """A cancel for a response that already ended gets an error and no response.done:
    the keypress's response.create must not wait for one forever."""
    sim = OpenAIRealtimeSimulator(reply_text="Hi.", delta_interval_s=0.0)
    await sim.start()
    session = OpenAIRealtimeSession(OpenAIRealtimeProviderSettings(url=sim.url, api_key="sk-sim", greeting="Hi."))
    events = EventCollector(session, timeout_s=15.0)
    await session.start()
    await events.wait_for(lambda e: type(e).__name__ == "AgentAudioDone")
    session.mapper.response_in_progress = True  # as if the done had not arrived yet
    await session.interrupt(played_ms=None)
    await session.send_dtmf("2")
    await events.wait_for(lambda e: e == Transcript("assistant", "You pressed 2."))
    await _close(sim, session, events)
