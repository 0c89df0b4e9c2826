"""ari mode's telephony actions over a fake ARI: transfer marks the call before sending
the caller on (so a racing StasisEnd ends it as transferred), failures become
ActionErrors for the model and leave the call as it was."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from voiceline.asterisk.ari import AriError
from voiceline.asterisk.ari_actions import AriCallActions, transfer_reason
from voiceline.core.actions import ActionError, TransferTo


class FakeAri:
    def __init__(self, *, found: bool = True, error: int | None = None) -> None:
        self.found = found
        self.error = error
        self.calls: list[tuple] = []
        self.marked_when_called: list[object] = []
        self.resources = None

    async def _answer(self, *call) -> bool:
        self.calls.append(call)
        self.marked_when_called.append(self.resources.transfer_to if self.resources else None)
        if self.error is not None:
            raise AriError(self.error, "POST", "/channels/x", "{}")
        return self.found

    async def continue_in_dialplan(self, channel_id, context=None, extension=None, priority=None):
        return await self._answer("continue", channel_id, context, extension, priority)

    async def redirect(self, channel_id, endpoint):
        return await self._answer("redirect", channel_id, endpoint)

    async def send_dtmf(self, channel_id, digits):
        return await self._answer("dtmf", channel_id, digits)

    async def get_variable(self, channel_id, name):
        self.calls.append(("get", channel_id, name))
        return {"ACCOUNT": "A-17"}.get(name)


@dataclass
class FakeMode:
    ari: FakeAri
    ended: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        call = SimpleNamespace(ended=False, session=SimpleNamespace(caller_id="100"))
        self.res = SimpleNamespace(call=call, channel_id="chan-1", transfer_to=None)
        self.ari.resources = self.res
        self.engine = SimpleNamespace(end_call=self._end_call)

    async def _end_call(self, call_id: str, reason: str) -> None:
        self.ended.append((call_id, reason))

    def resources(self, call_id: str):
        return self.res if call_id == "c1" else None


OPERATOR = TransferTo(context="voiceline", extension="operator")


async def test_transfer_to_an_extension_continues_and_ends_the_call_as_transferred():
    mode = FakeMode(FakeAri())
    await AriCallActions(mode, "c1").transfer(OPERATOR)
    assert mode.ari.calls == [("continue", "chan-1", "voiceline", "operator", 1)]
    assert mode.ari.marked_when_called == [OPERATOR]  # marked before Asterisk could answer
    assert mode.ended == [("c1", "transferred to voiceline,operator,1")]
    assert transfer_reason(OPERATOR).split()[0] == "transferred"


async def test_transfer_to_an_endpoint_redirects():
    mode = FakeMode(FakeAri())
    await AriCallActions(mode, "c1").transfer(TransferTo(endpoint="PJSIP/desk"))
    assert mode.ari.calls == [("redirect", "chan-1", "PJSIP/desk")]
    assert mode.ended == [("c1", "transferred to PJSIP/desk")]


@pytest.mark.parametrize(("ari", "message"), [
    (FakeAri(error=409), "Asterisk refused the transfer \\(409\\)"),
    (FakeAri(found=False), "the caller's channel is gone"),
])
async def test_failed_transfer_is_an_action_error_and_the_call_stays(ari, message):
    mode = FakeMode(ari)
    with pytest.raises(ActionError, match=message):
        await AriCallActions(mode, "c1").transfer(OPERATOR)
    assert mode.res.transfer_to is None and mode.ended == []


async def test_actions_on_a_call_that_is_over_are_refused():
    mode = FakeMode(FakeAri())
    with pytest.raises(ActionError, match="the call is over"):
        await AriCallActions(mode, "gone").transfer(OPERATOR)
    assert mode.ari.calls == []


async def test_send_dtmf_and_call_info():
    mode = FakeMode(FakeAri())
    actions = AriCallActions(mode, "c1")
    await actions.send_dtmf("12#")
    info = await actions.call_info(["ACCOUNT", "MISSING"])
    assert mode.ari.calls[0] == ("dtmf", "chan-1", "12#")
    assert info == {"caller_id": "100", "variables": {"ACCOUNT": "A-17", "MISSING": None}}
