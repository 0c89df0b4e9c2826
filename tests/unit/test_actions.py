"""The one function-call path (core.actions): every request gets an answer, errors
included; telephony actions act after the agent's speech; handlers are injected."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from voiceline.audio.formats import AudioFormat
from voiceline.core.actions import (
    ActionError,
    FunctionExecutor,
    FunctionOutcome,
    TransferTo,
    telephony_handlers,
)
from voiceline.providers.base import FunctionCallRequest, ProviderCapabilities, ProviderSession

FMT = AudioFormat("slin16", 8000)


class RecordingSession(ProviderSession):
    def __init__(self) -> None:
        super().__init__(ProviderCapabilities(FMT, FMT))
        self.results: list[tuple[str, dict[str, Any]]] = []

    async def start(self) -> None: ...

    async def send_audio(self, audio: bytes) -> None: ...

    async def close(self, reason: str = "call ended") -> None: ...

    async def send_function_result(self, call_id: str, result: Mapping[str, Any]) -> bool:
        self.results.append((call_id, dict(result)))
        return True


class FakeActions:
    def __init__(self, fail: str | None = None) -> None:
        self.transfers: list[TransferTo] = []
        self.dtmf: list[str] = []
        self.fail = fail

    async def transfer(self, target: TransferTo) -> None:
        if self.fail:
            raise ActionError(self.fail)
        self.transfers.append(target)

    async def send_dtmf(self, digits: str) -> None:
        self.dtmf.append(digits)

    async def call_info(self, variables):
        return {"caller_id": "100", "variables": {v: None for v in variables}}


class Speech:
    """Agent speech that is busy until the fake clock reaches ``busy_until``."""

    def __init__(self, clock, busy_until: float) -> None:
        self.clock = clock
        self.busy_until = busy_until

    def quiet(self) -> bool:
        return self.clock() >= self.busy_until


def executor(session, handlers, fake_clock, *, speech=None, timeout_s=1.0, settle_s=1.0, max_wait_s=10.0):
    async def sleep(seconds: float) -> None:
        fake_clock.advance(seconds)
        await asyncio.sleep(0)

    return FunctionExecutor(session, "call-1", handlers, timeout_s=timeout_s, speech=speech, settle_s=settle_s,
                            max_wait_s=max_wait_s, clock=fake_clock, sleep=sleep)


def request(name: str, call_id: str = "fc-1", **arguments: Any) -> FunctionCallRequest:
    return FunctionCallRequest(call_id=call_id, name=name, arguments=arguments)


async def test_result_of_a_handler_goes_back_to_the_model(fake_clock):
    session = RecordingSession()

    async def get_time(args):
        return {"time": "10:42", "zone": args.get("zone")}

    record = await executor(session, {"get_time": get_time}, fake_clock).run(request("get_time", zone="UTC"))
    assert session.results == [("fc-1", {"time": "10:42", "zone": "UTC"})]
    assert record.ok and record.delivered and record.error is None


async def test_unknown_function_answers_with_an_error_naming_what_exists(fake_clock):
    session = RecordingSession()

    async def known(args):
        return {}

    record = await executor(session, {"known": known}, fake_clock).run(request("nosuch"))
    [(call_id, result)] = session.results
    assert call_id == "fc-1" and "unknown function 'nosuch'" in result["error"] and "known" in result["error"]
    assert not record.ok


async def test_a_handler_that_never_answers_times_out_with_an_error_result(fake_clock):
    session = RecordingSession()

    async def hangs(args):
        await asyncio.Event().wait()

    # A real (short) timeout: wait_for's own clock, not a test sleep.
    await executor(session, {"slow": hangs}, fake_clock, timeout_s=0.01).run(request("slow"))
    assert session.results == [("fc-1", {"error": "function 'slow' did not answer within 0.01 s"})]


async def test_action_error_and_crash_both_answer_the_model(fake_clock, caplog):
    session = RecordingSession()

    async def refuses(args):
        raise ActionError("the service's reply is not JSON")

    async def crashes(args):
        raise KeyError("boom")

    ex = executor(session, {"refuses": refuses, "crashes": crashes}, fake_clock)
    await ex.run(request("refuses", call_id="a"))
    await ex.run(request("crashes", call_id="b"))
    assert session.results[0] == ("a", {"error": "function 'refuses' failed: the service's reply is not JSON"})
    assert session.results[1] == ("b", {"error": "function 'crashes' failed: internal error (KeyError)"})


async def test_server_side_requests_are_not_answered(fake_clock):
    session = RecordingSession()
    ex = executor(session, {}, fake_clock)
    ex.submit(FunctionCallRequest(call_id="x", name="lookup", client_side=False))
    await asyncio.sleep(0)
    assert session.results == [] and ex.records == []


async def test_transfer_answers_first_then_acts_once_the_agent_was_quiet(fake_clock):
    session = RecordingSession()
    actions = FakeActions()
    operator = TransferTo(context="lab", extension="operator")
    handlers = telephony_handlers(actions, transfer_targets={"operator": operator, "sales": TransferTo(extension="2")})
    speech = Speech(fake_clock, busy_until=3.0)
    record = await executor(session, handlers, fake_clock, speech=speech, settle_s=1.0).run(request("transfer"))
    assert session.results == [("fc-1", {"status": "transferring", "destination": "operator"})]
    assert actions.transfers == [operator]
    assert record.then == "done"
    assert fake_clock() >= 4.0  # busy until 3 s, then quiet for the settle second


async def test_transfer_to_an_unknown_destination_is_an_error_and_nothing_happens(fake_clock):
    session = RecordingSession()
    actions = FakeActions()
    handlers = telephony_handlers(actions, transfer_targets={"operator": TransferTo(extension="op")})
    await executor(session, handlers, fake_clock).run(request("transfer", destination="ceo"))
    assert "unknown destination 'ceo'" in session.results[0][1]["error"]
    assert actions.transfers == []


async def test_speech_that_never_ends_is_waited_for_at_most_max_wait(fake_clock):
    session = RecordingSession()
    ended: list[str] = []

    async def end(reason: str) -> None:
        ended.append(reason)

    handlers = telephony_handlers(None, hangup=end)
    speech = Speech(fake_clock, busy_until=float("inf"))
    record = await executor(session, handlers, fake_clock, speech=speech, max_wait_s=5.0).run(request("hangup"))
    assert ended == ["hangup by agent"] and record.then == "done"
    assert 5.0 <= fake_clock() < 5.2


async def test_failed_transfer_after_the_answer_is_logged_and_the_call_goes_on(fake_clock):
    session = RecordingSession()
    actions = FakeActions(fail="the caller's channel is gone")
    handlers = telephony_handlers(actions, transfer_targets={"operator": TransferTo(extension="op")})
    record = await executor(session, handlers, fake_clock).run(request("transfer"))
    assert record.then == "failed: the caller's channel is gone"


async def test_actions_without_a_mode_answer_with_an_error(fake_clock):
    session = RecordingSession()
    handlers = telephony_handlers(None, transfer_targets={"op": TransferTo(extension="op")}, send_dtmf=True,
                                  call_info_variables=[])
    ex = executor(session, handlers, fake_clock)
    await ex.run(request("send_dtmf", call_id="d", digits="12#"))
    await ex.run(request("get_call_info", call_id="i"))
    errors = dict(session.results)
    assert errors["d"] == {"error": "function 'send_dtmf' failed: send_dtmf is not available in this call-control mode"}
    assert "get_call_info is not available" in errors["i"]["error"]


@pytest.mark.parametrize("digits", ["", "12x", "9 9"])
async def test_send_dtmf_refuses_what_is_not_a_digit(fake_clock, digits):
    session = RecordingSession()
    actions = FakeActions()
    await executor(session, telephony_handlers(actions, send_dtmf=True), fake_clock).run(
        request("send_dtmf", digits=digits))
    assert "must be DTMF digits" in session.results[0][1]["error"] and actions.dtmf == []


async def test_call_info_reports_caller_and_variables(fake_clock):
    session = RecordingSession()
    handlers = telephony_handlers(FakeActions(), call_info_variables=["ACCOUNT"])
    await executor(session, handlers, fake_clock).run(request("get_call_info"))
    assert session.results == [("fc-1", {"caller_id": "100", "variables": {"ACCOUNT": None}})]


async def test_outcome_then_is_skipped_when_the_result_could_not_be_delivered(fake_clock):
    class Gone(RecordingSession):
        async def send_function_result(self, call_id, result):
            return False

    acted: list[bool] = []

    async def act() -> None:
        acted.append(True)

    async def handler(args):
        return FunctionOutcome({"status": "ok"}, then=act)

    record = await executor(Gone(), {"f": handler}, fake_clock).run(request("f"))
    assert not record.delivered and acted == []


async def test_aclose_cancels_requests_still_running(fake_clock, loop_errors):
    session = RecordingSession()
    started = asyncio.Event()

    async def hangs(args):
        started.set()
        await asyncio.Event().wait()

    ex = executor(session, {"slow": hangs}, fake_clock, timeout_s=60)
    ex.submit(request("slow"))
    await started.wait()
    await ex.aclose()
    ex.submit(request("slow", call_id="late"))  # after close: ignored
    await asyncio.sleep(0)
    assert session.results == [] and len(ex.records) == 1
    loop_errors.assert_clean()
