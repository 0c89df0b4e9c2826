"""The local agent on the function-call path: keypresses answered by the script's
rules, a rule's function (hangup after the goodbye) requested when offered, and a
failed function answered with the apology."""

from __future__ import annotations

import pytest

from test_local_agent import is_transcript, is_type, running, speak_to
from voiceline.config import DEFAULT_APOLOGY, ActionsSettings, LocalProviderSettings
from voiceline.providers.base import AgentAudio, AgentAudioDone, FunctionCallRequest, Transcript

pytestmark = pytest.mark.espeak

GOODBYE = "Goodbye! Thank you for calling."


def config(**actions) -> LocalProviderSettings:
    return LocalProviderSettings(greeting=None, actions=ActionsSettings(**actions))


async def test_a_keypress_is_answered_by_the_scripts_rule() -> None:
    async with running(config()) as (session, rec):
        await session.send_dtmf("5")
        said = await rec.wait_for(is_transcript("assistant"))
        assert rec.events[said][1] == Transcript("assistant", "You pressed 5.")
        assert Transcript("user", "The caller pressed 5 on the phone keypad.") in rec.between(0, said)
        assert rec.audio_seconds(0, said) > 0.5


async def test_keypresses_can_be_ignored() -> None:
    async with running(config(dtmf={"mode": "ignore"})) as (session, rec):
        await session.send_dtmf("5")
        await speak_to(session, "when are you open")
        await rec.wait_for(is_transcript("assistant"))
        assert not any(isinstance(e, Transcript) and "pressed" in e.text for e in rec.between(0))


async def test_goodbye_requests_hangup_after_the_reply_when_offered() -> None:
    async with running(config(hangup={"enabled": True})) as (session, rec):
        await speak_to(session, "goodbye")
        request = await rec.wait_for(is_type(FunctionCallRequest))
        events = rec.between(0, request)
        assert Transcript("assistant", GOODBYE) in events and isinstance(events[-1], Transcript)
        assert any(isinstance(e, AgentAudioDone) for e in events)  # the goodbye was all sent first
        assert rec.events[request][1].name == "hangup"


async def test_goodbye_requests_nothing_when_hangup_is_not_offered() -> None:
    async with running(config()) as (session, rec):
        await speak_to(session, "goodbye")
        said = await rec.wait_for(is_transcript("assistant"))
        assert rec.events[said][1] == Transcript("assistant", GOODBYE)
        await session.send_dtmf("1")  # a later turn: had a request been made, it came before
        await rec.wait_for(lambda e: e == Transcript("assistant", "You pressed 1."), after=said + 1)
        assert not any(isinstance(e, FunctionCallRequest) for e in rec.between(0))


async def test_a_failed_function_is_answered_with_the_apology() -> None:
    async with running(config(hangup={"enabled": True})) as (session, rec):
        assert await session.send_function_result("local-1", {"error": "function 'hangup' failed: boom"})
        said = await rec.wait_for(is_transcript("assistant"))
        assert rec.events[said][1] == Transcript("assistant", DEFAULT_APOLOGY)
        assert any(isinstance(e, AgentAudio) for e in rec.between(0, said))


# ---- the openai_compatible LLM with tools ------------------------------------------------

import json  # noqa: E402
from collections.abc import AsyncIterator  # noqa: E402

from aiohttp import web  # noqa: E402

from voiceline.config import LocalLLMSettings  # noqa: E402


class ToolLLM:
    """First request: a sentence, then a streamed call of get_time; later ones: the time."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.runner: web.AppRunner | None = None
        self.base_url = ""

    @staticmethod
    def _data(delta: dict) -> bytes:
        return b"data: " + json.dumps({"choices": [{"index": 0, "delta": delta}]}).encode() + b"\n\n"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if len(self.requests) == 1:
            await resp.write(self._data({"content": "Let me check."}))
            await resp.write(self._data({"tool_calls": [
                {"index": 0, "id": "call_9", "type": "function", "function": {"name": "get_time", "arguments": ""}}]}))
            for piece in ('{"zone"', ': "UTC"}'):
                await resp.write(self._data({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
        else:
            await resp.write(self._data({"content": "It is ten forty two."}))
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.base_url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/v1"


@pytest.fixture
async def tool_llm() -> AsyncIterator[ToolLLM]:
    server = ToolLLM()
    await server.start()
    yield server
    await server.runner.cleanup()


async def test_llm_calls_a_function_and_answers_with_its_result(tool_llm) -> None:
    settings = LocalProviderSettings(
        greeting=None,
        llm=LocalLLMSettings(kind="openai_compatible", base_url=tool_llm.base_url, model="m", timeout_s=5),
        actions=ActionsSettings(http=[{"name": "get_time", "description": "the time", "url": "http://x.invalid/"}]),
    )
    async with running(settings) as (session, rec):
        await session.send_dtmf("1")  # any user turn
        request = await rec.wait_for(is_type(FunctionCallRequest))
        call = rec.events[request][1]
        assert (call.call_id, call.name, dict(call.arguments)) == ("call_9", "get_time", {"zone": "UTC"})
        assert Transcript("assistant", "Let me check.") in rec.between(0, request)
        assert [t["function"]["name"] for t in tool_llm.requests[0]["tools"]] == ["get_time"]

        assert await session.send_function_result("call_9", {"time": "10:42"})
        await rec.wait_for(lambda e: e == Transcript("assistant", "It is ten forty two."), after=request)
        messages = tool_llm.requests[1]["messages"]
        assert messages[-2] == {"role": "assistant", "content": "Let me check.", "tool_calls": [
            {"id": "call_9", "type": "function", "function": {"name": "get_time", "arguments": '{"zone": "UTC"}'}}]}
        assert messages[-1] == {"role": "tool", "tool_call_id": "call_9", "content": '{"time":"10:42"}'}
