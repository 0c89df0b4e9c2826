"""The one function-call path: a provider's ``FunctionCallRequest`` -> a handler -> the
result back through ``ProviderSession.send_function_result``.

Whatever happens, the model gets an answer for every request it made, so its turn
never hangs: an unknown name, a handler that fails or takes longer than the timeout
all answer ``{"error": "..."}``. Telephony actions (transfer, hangup) answer first
and act after the agent's last sentence has been played (``AgentSpeech.quiet`` for
``settle_s``, at most ``max_wait_s``).

The executor knows nothing of Asterisk, HTTP or the config: handlers are injected
(``telephony_handlers`` builds the built-in ones over a ``CallActions``, which the
mode adapters implement; HTTP functions come from outside the core).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from voiceline.providers.base import FunctionCallRequest, ProviderSession
from voiceline.tasks import cancel_and_wait, spawn

__all__ = [
    "ActionError",
    "AgentSpeech",
    "CallActions",
    "FunctionExecutor",
    "FunctionOutcome",
    "Handler",
    "TransferTo",
    "telephony_handlers",
]

log = structlog.get_logger("voiceline.actions")

QUIET_POLL_S = 0.05
DTMF_DIGITS = frozenset("0123456789*#ABCDabcd")


class ActionError(Exception):
    """A function could not do what the model asked; the message is told to the model."""


@dataclass(frozen=True, slots=True)
class TransferTo:
    """A transfer destination: a dialplan place or an endpoint (exactly one)."""

    context: str | None = None
    extension: str | None = None
    priority: int = 1
    endpoint: str | None = None

    def describe(self) -> str:
        if self.endpoint is not None:
            return self.endpoint
        return f"{self.context or '(current context)'},{self.extension},{self.priority}"


class CallActions(Protocol):
    """Telephony actions on one call, implemented by the call-control mode. Each
    raises ``ActionError`` (with a reason for the model) when it cannot act."""

    async def transfer(self, target: TransferTo) -> None:
        """Hand the caller to ``target``; the engine's leg is released, the call ends as transferred."""
        ...

    async def send_dtmf(self, digits: str) -> None: ...

    async def call_info(self, variables: Sequence[str]) -> dict[str, Any]:
        """Caller id and the values of the channel ``variables`` (missing ones as None)."""
        ...


class AgentSpeech(Protocol):
    def quiet(self) -> bool:
        """Nothing of the agent is playing or waiting to be played."""
        ...


@dataclass(frozen=True, slots=True)
class FunctionOutcome:
    """What a handler returns: the model's result, and what to do once the agent's
    reply to it has been played (a transfer, a hangup)."""

    result: Mapping[str, Any]
    then: Callable[[], Awaitable[None]] | None = None


Handler = Callable[[Mapping[str, Any]], Awaitable[FunctionOutcome | Mapping[str, Any]]]


@dataclass(slots=True)
class FunctionCallRecord:
    """One request and how it went (for the call's log and tests)."""

    call_id: str
    name: str
    ok: bool = False
    error: str | None = None
    delivered: bool = False
    duration_ms: float | None = None
    then: str | None = None  # "done" | "failed: ..." | None


class FunctionExecutor:
    """Runs one call's function requests, each in its own task, and always answers."""

    def __init__(
        self,
        provider: ProviderSession,
        call_id: str,
        handlers: Mapping[str, Handler],
        *,
        timeout_s: float,
        speech: AgentSpeech | None = None,
        settle_s: float = 1.2,
        max_wait_s: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._provider = provider
        self._call_id = call_id
        self._handlers = dict(handlers)
        self._timeout_s = timeout_s
        self._speech = speech
        self._settle_s = settle_s
        self._max_wait_s = max_wait_s
        self._clock = clock
        self._sleep = sleep
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self.records: list[FunctionCallRecord] = []

    @property
    def names(self) -> list[str]:
        return sorted(self._handlers)

    def submit(self, request: FunctionCallRequest) -> None:
        """Handle ``request`` in the background (the provider's events keep flowing)."""
        if self._closed:
            return
        if not request.client_side:
            # The provider runs it itself (a Deepgram server-side function): nothing to answer.
            log.info("function_call_server_side", call_id=self._call_id, function=request.name)
            return
        spawn(self.run(request), name=f"function-{self._call_id}-{request.name}", owner=self._tasks)

    async def run(self, request: FunctionCallRequest) -> FunctionCallRecord:
        record = FunctionCallRecord(call_id=request.call_id, name=request.name)
        self.records.append(record)
        started = self._clock()
        outcome = await self._execute(request, record)
        record.duration_ms = round((self._clock() - started) * 1000, 1)
        try:
            record.delivered = await self._provider.send_function_result(request.call_id, dict(outcome.result))
        except Exception:  # a provider bug must not leave the request unlogged
            log.exception("function_result_send_failed", call_id=self._call_id, function=request.name)
        log.info("function_call", call_id=self._call_id, function=request.name, request_id=request.call_id,
                 ok=record.ok, error=record.error, delivered=record.delivered, duration_ms=record.duration_ms)
        if outcome.then is not None and record.delivered:
            await self._after_speech(record, outcome.then)
        return record

    async def _execute(self, request: FunctionCallRequest, record: FunctionCallRecord) -> FunctionOutcome:
        handler = self._handlers.get(request.name)
        if handler is None:
            return self._error(record, f"unknown function {request.name!r}; available: {', '.join(self.names) or 'none'}")
        try:
            answer = await asyncio.wait_for(handler(request.arguments), self._timeout_s)
        except TimeoutError:
            return self._error(record, f"function {request.name!r} did not answer within {self._timeout_s:g} s")
        except ActionError as exc:
            return self._error(record, f"function {request.name!r} failed: {exc}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("function_handler_crashed", call_id=self._call_id, function=request.name)
            return self._error(record, f"function {request.name!r} failed: internal error ({type(exc).__name__})")
        outcome = answer if isinstance(answer, FunctionOutcome) else FunctionOutcome(answer)
        record.ok = True
        return outcome

    @staticmethod
    def _error(record: FunctionCallRecord, message: str) -> FunctionOutcome:
        record.error = message
        return FunctionOutcome({"error": message})

    async def _after_speech(self, record: FunctionCallRecord, then: Callable[[], Awaitable[None]]) -> None:
        played = await self.wait_quiet()
        if not played:
            log.warning("function_action_speech_wait_timeout", call_id=self._call_id, function=record.name,
                        max_wait_s=self._max_wait_s)
        try:
            await then()
            record.then = "done"
        except ActionError as exc:
            record.then = f"failed: {exc}"
            # The request was already answered; the call goes on with the agent.
            log.warning("function_action_failed", call_id=self._call_id, function=record.name, error=str(exc))

    async def wait_quiet(self) -> bool:
        """Until the agent has been quiet for ``settle_s`` (True) or ``max_wait_s`` passed (False)."""
        if self._speech is None:
            return True
        deadline = self._clock() + self._max_wait_s
        quiet_since: float | None = None
        while True:
            now = self._clock()
            if self._speech.quiet():
                if quiet_since is None:
                    quiet_since = now
                if now - quiet_since >= self._settle_s:
                    return True
            else:
                quiet_since = None
            if now >= deadline:
                return False
            await self._sleep(QUIET_POLL_S)

    async def aclose(self) -> None:
        """Cancel requests still running (the call is ending); idempotent."""
        self._closed = True
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                await cancel_and_wait(task)


# ---- the built-in telephony actions ----------------------------------------------------------


def telephony_handlers(
    actions: CallActions | None,
    *,
    transfer_targets: Mapping[str, TransferTo] | None = None,
    hangup: Callable[[str], Awaitable[None]] | None = None,
    send_dtmf: bool = False,
    call_info_variables: Sequence[str] | None = None,
) -> dict[str, Handler]:
    """Handlers for the enabled built-in actions (``call_info_variables`` None: no
    ``get_call_info``). ``hangup(reason)`` ends the call; the other actions need the
    mode's ``actions`` (None: they answer the model with an error)."""
    handlers: dict[str, Handler] = {}

    def need_actions(name: str) -> CallActions:
        if actions is None:
            raise ActionError(f"{name} is not available in this call-control mode")
        return actions

    if transfer_targets:
        targets = dict(transfer_targets)
        default = next(iter(targets))

        async def transfer(args: Mapping[str, Any]) -> FunctionOutcome:
            mode = need_actions("transfer")
            name = str(args.get("destination") or default)
            if name not in targets:
                raise ActionError(f"unknown destination {name!r}; one of {', '.join(targets)}")
            target = targets[name]

            async def act() -> None:
                await mode.transfer(target)

            return FunctionOutcome({"status": "transferring", "destination": name}, then=act)

        handlers["transfer"] = transfer

    if hangup is not None:
        end = hangup

        async def hang_up(args: Mapping[str, Any]) -> FunctionOutcome:
            async def act() -> None:
                await end("hangup by agent")

            return FunctionOutcome({"status": "ending the call after your goodbye"}, then=act)

        handlers["hangup"] = hang_up

    if send_dtmf:

        async def dtmf(args: Mapping[str, Any]) -> Mapping[str, Any]:
            digits = str(args.get("digits") or "")
            if not digits or any(d not in DTMF_DIGITS for d in digits):
                raise ActionError(f"'digits' must be DTMF digits (0-9, *, #, A-D), got {digits!r}")
            await need_actions("send_dtmf").send_dtmf(digits)
            return {"status": "sent", "digits": digits}

        handlers["send_dtmf"] = dtmf

    if call_info_variables is not None:
        variables = list(call_info_variables)

        async def info(args: Mapping[str, Any]) -> Mapping[str, Any]:
            return await need_actions("get_call_info").call_info(variables)

        handlers["get_call_info"] = info

    return handlers
