"""Composition of the one function-call path: for each call, the executor
(``core.actions.FunctionExecutor``) with the handlers its provider's
``actions`` section enables: the built-in telephony actions over the mode's
``CallActions``, and the HTTP functions (``functions_http``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from voiceline.config import ActionsSettings, Settings
from voiceline.core.actions import CallActions, FunctionExecutor, Handler, TransferTo, telephony_handlers
from voiceline.core.call import Call, EndCall
from voiceline.core.stream_events import StreamState
from voiceline.functions_http import http_handler

__all__ = ["CallSpeech", "build_handlers", "functions_factory"]


class CallSpeech:
    """``AgentSpeech`` of a call: quiet when no agent turn is playing or buffered and
    no file playback runs."""

    def __init__(self, call: Call) -> None:
        self._call = call

    def quiet(self) -> bool:
        call = self._call
        stream = call.stream
        if stream is not None and stream.state is not StreamState.IDLE:
            return False
        return not call.session.tts_playing


def build_handlers(
    cfg: ActionsSettings,
    actions: CallActions | None,
    hangup: Callable[[str], Awaitable[None]],
) -> dict[str, Handler]:
    targets = {
        t.name: TransferTo(context=t.context, extension=t.extension, priority=t.priority, endpoint=t.endpoint)
        for t in cfg.transfer.targets
    } if cfg.transfer.enabled else None
    handlers = telephony_handlers(
        actions,
        transfer_targets=targets,
        hangup=hangup if cfg.hangup.enabled else None,
        send_dtmf=cfg.send_dtmf.enabled,
        call_info_variables=cfg.get_call_info.variables if cfg.get_call_info.enabled else None,
    )
    for fn in cfg.http:
        handlers[fn.name] = http_handler(fn)
    return handlers


def functions_factory(settings: Settings):  # -> core.engine.FunctionsFactory
    # Every provider section with an ``actions`` block offers functions; no names listed here.
    per_provider: dict[str, ActionsSettings] = {
        name: section.actions for name, section in settings.providers if hasattr(section, "actions")
    }

    def make(call: Call, provider: str, actions: CallActions | None,
             end_call: EndCall) -> FunctionExecutor | None:
        cfg = per_provider.get(provider)
        if cfg is None:
            return None  # a provider without functions (echo)
        call_id = call.session.call_id

        async def hangup(reason: str) -> None:
            await end_call(call_id, reason)

        return FunctionExecutor(
            call.provider, call_id, build_handlers(cfg, actions, hangup),
            timeout_s=cfg.timeout_s, speech=CallSpeech(call),
            settle_s=cfg.speech_settle_ms / 1000, max_wait_s=cfg.speech_max_wait_ms / 1000,
        )

    return make
