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
