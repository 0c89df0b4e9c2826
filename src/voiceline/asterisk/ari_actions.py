"""Telephony actions of an ari-mode call (``core.actions.CallActions``).

``transfer`` sends the caller's channel out of our Stasis app to a dialplan place (ARI
``continue``) or to an endpoint (ARI ``redirect``); Asterisk takes it out of the call's
bridge, and the call then ends with reason ``transferred to ...``: the engine's leg
(externalMedia channel, bridge) is released, the caller's channel is left alone (the
dialplan owns it now). ``send_dtmf`` plays digits on the caller's channel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import structlog

from voiceline.asterisk.ari import AriError
from voiceline.core.actions import ActionError, TransferTo

if TYPE_CHECKING:
    from voiceline.asterisk.ari_mode import AriMode, _CallResources

__all__ = ["AriCallActions", "transfer_reason"]

log = structlog.get_logger("voiceline.ari_actions")


def transfer_reason(target: TransferTo) -> str:
    """The end reason of a transferred call (its first word is the outcome)."""
    return f"transferred to {target.describe()}"


class AriCallActions:
    def __init__(self, mode: AriMode, call_id: str) -> None:
        self._mode = mode
        self._call_id = call_id

    def _live(self) -> _CallResources:
        """The call's ARI resources; ActionError if the call is over."""
        resources = self._mode.resources(self._call_id)
        if resources is None or resources.call.ended:
            raise ActionError("the call is over")
        return resources

    async def transfer(self, target: TransferTo) -> None:
        resources = self._live()
        channel_id = resources.channel_id
        # Marked first: the caller's StasisEnd may arrive before continue() returns.
        resources.transfer_to = target
        ari = self._mode.ari
        try:
            if target.endpoint is not None:
                found = await ari.redirect(channel_id, target.endpoint)
            else:
                found = await ari.continue_in_dialplan(
                    channel_id, context=target.context, extension=target.extension, priority=target.priority
                )
        except AriError as exc:
            resources.transfer_to = None
            raise ActionError(f"Asterisk refused the transfer ({exc.status})") from None
        if not found:
            resources.transfer_to = None
            raise ActionError("the caller's channel is gone")
        log.info("call_transferred", call_id=self._call_id, channel_id=channel_id, target=target.describe())
        await self._mode.engine.end_call(self._call_id, transfer_reason(target))

    async def send_dtmf(self, digits: str) -> None:
        try:
            found = await self._mode.ari.send_dtmf(self._live().channel_id, digits)
        except AriError as exc:
            raise ActionError(f"Asterisk refused the DTMF ({exc.status})") from None
        if not found:
            raise ActionError("the caller's channel is gone")

    async def call_info(self, variables: Sequence[str]) -> dict[str, Any]:
        resources = self._live()
        values: dict[str, str | None] = {}
        for name in variables:
            try:
                values[name] = await self._mode.ari.get_variable(resources.channel_id, name)
            except AriError as exc:
                raise ActionError(f"could not read channel variable {name} ({exc.status})") from None
        return {"caller_id": resources.call.session.caller_id, "variables": values}
