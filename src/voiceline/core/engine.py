"""Call lifecycle: create calls, end each exactly once, release everything of it.

Call control lives in the mode adapters (``voiceline.asterisk.ari_mode`` and
``voiceline.asterisk.audiosocket_mode``): they decide when a call starts, attach
its media leg and give the engine a ``release`` step for what they set up on the
phone side. The engine never compares provider names beyond asking the chooser.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

import structlog

from voiceline.audio.formats import AudioFormat
from voiceline.core.actions import CallActions, FunctionExecutor
from voiceline.core.barge_in import BargeInParams
from voiceline.core.call import Call, EndCall
from voiceline.core.conversation_coordinator import ConversationCoordinator
from voiceline.core.media import PlaybackControl
from voiceline.core.models import CallSession, CallState
from voiceline.core.session_store import SessionStore
from voiceline.core.sink import EngineEventSink
from voiceline.core.streaming_playback_manager import StreamingPlaybackManager
from voiceline.providers.base import CallContext, Provider

log = structlog.get_logger("voiceline.engine")

ReleaseStep = Callable[[Call], Awaitable[None]]
# (call, provider name, the mode's telephony actions or None, end_call) -> the call's
# function executor, or None when its provider offers no functions (core.actions).
FunctionsFactory = Callable[[Call, str, "CallActions | None", EndCall], "FunctionExecutor | None"]


class ProviderChoice(Protocol):
    provider: Provider
    requested: str | None
    fallback_reason: str | None


class ProviderChooser(Protocol):
    def choose(self, requested: str | None) -> ProviderChoice: ...


class Engine:
    def __init__(
        self,
        *,
        mode: str,
        store: SessionStore,
        coordinator: ConversationCoordinator,
        providers: ProviderChooser,
        streaming: StreamingPlaybackManager,
        sink: EngineEventSink,
        clock: Callable[[], float],
        wire_rate: int,
        barge_in: BargeInParams | None,
        on_call_ended: Callable[[Call], None] | None = None,
        functions: FunctionsFactory | None = None,
    ) -> None:
        self.mode = mode
        self.store = store
        self.coordinator = coordinator
        self.providers = providers
        self.streaming = streaming
        self.sink = sink
        self.wire_format = AudioFormat("slin16", wire_rate)
        self._barge_in = barge_in
        self._clock = clock
        self._calls: dict[str, Call] = {}
        self._release: dict[str, ReleaseStep] = {}
        self._ending: dict[str, asyncio.Task[None]] = {}
        self._on_call_ended = on_call_ended
        self._functions = functions
        self._accepting = True
        self._no_calls = asyncio.Event()
        self._no_calls.set()

    # ------------------------------------------------------------------ introspection

    @property
    def active_calls(self) -> int:
        return len(self._calls)

    def call(self, call_id: str) -> Call | None:
        return self._calls.get(call_id)

    def calls(self) -> list[Call]:
        return list(self._calls.values())

    @property
    def accepting(self) -> bool:
        """False once draining started: the mode adapters refuse new calls."""
        return self._accepting

    def stop_accepting(self) -> None:
        self._accepting = False

    def knows(self, call_id: str) -> bool:
        """The call is live or still being torn down."""
        return call_id in self._calls or call_id in self._ending

    # ------------------------------------------------------------------ call creation

    def start_call(
        self,
        call_id: str,
        *,
        requested_provider: str | None = None,
        caller_channel_id: str | None = None,
        caller_id: str | None = None,
        variables: Mapping[str, str] | None = None,
        playback: PlaybackControl | None = None,
        release: ReleaseStep | None = None,
        actions: CallActions | None = None,
    ) -> Call:
        choice = self.providers.choose(requested_provider)
        if choice.fallback_reason:
            log.warning("provider_fallback", call_id=call_id, reason=choice.fallback_reason,
                        using=choice.provider.name)
            self.sink.provider_fallback(choice.requested or "")
        session = CallSession(
            call_id=call_id, mode=self.mode, provider_name=choice.provider.name,
            started_at=time.time(), started_monotonic=self._clock(),
            caller_channel_id=caller_channel_id, caller_id=caller_id,
            provider_fallback_reason=choice.fallback_reason,
        )
        self.store.add(session)
        provider_session = choice.provider.create_session(
            CallContext(call_id=call_id, caller_id=caller_id, variables=dict(variables or {}))
        )
        call = Call(
            session, provider_session,
            wire_format=self.wire_format,
            streaming=self.streaming, coordinator=self.coordinator,
            end_call=self.end_call, playback=playback, clock=self._clock,
            sink=self.sink.for_call(call_id, choice.provider.name, self._clock()),
            barge_in=self._barge_in,
            # Capture follows audio really played (see CallPolicy): a turn whose end
            # message never came stops gating after the stream's grace.
            starvation_s=self.streaming.params.provider_grace_ms / 1000,
        )
        if self._functions is not None:
            call.functions = self._functions(call, choice.provider.name, actions, self.end_call)
        self._calls[call_id] = call
        self._no_calls.clear()
        if release is not None:
            self._release[call_id] = release
        self.sink.call_started(call_id, choice.provider.name)
        log.info("call_started", call_id=call_id, mode=self.mode, provider=choice.provider.name,
                 caller_id=caller_id, channel_id=caller_channel_id)
        call.start_provider()
        return call

    # ------------------------------------------------------------------ teardown

    async def end_call(self, call_id: str, reason: str) -> None:
        """Release everything of the call exactly once; later callers wait for the first."""
        existing = self._ending.get(call_id)
        if existing is not None:
            if existing is not asyncio.current_task():
                await asyncio.shield(existing)
            return
        if call_id not in self._calls:
            return
        task = asyncio.create_task(self._teardown(call_id, reason), name=f"teardown-{call_id}")
        self._ending[call_id] = task
        try:
            await asyncio.shield(task)
        finally:
            if task.done():
                self._ending.pop(call_id, None)

    async def _teardown(self, call_id: str, reason: str) -> None:
        """Every step runs whatever an earlier one raised (each failure is logged with
        its traceback); the call always leaves the engine and its record is written."""
        call = self._calls[call_id]
        session = call.session
        session.state = CallState.ENDING
        session.end_reason = reason
        await self._step(call_id, "close_call", call.close)
        release = self._release.pop(call_id, None)
        if release is not None:
            await self._step(call_id, "release_media", lambda: release(call))
        session.state = CallState.ENDED
        session.ended_at = time.time()
        self._calls.pop(call_id, None)
        if not self._calls:
            self._no_calls.set()
        for step, action in (
            ("forget_gating", lambda: self.coordinator.forget(call_id)),
            ("remove_session", lambda: self.store.remove(call_id)),
            ("count_call_end", lambda: self.sink.call_ended(call_id, session.provider_name)),
        ):
            try:
                action()
            except Exception:
                log.exception("call_teardown_step_failed", call_id=call_id, step=step)
        log.info("call_ended", call_id=call_id, reason=reason)
        if self._on_call_ended is not None:
            try:
                self._on_call_ended(call)
            except Exception:
                log.exception("call_teardown_step_failed", call_id=call_id, step="on_call_ended")

    @staticmethod
    async def _step(call_id: str, step: str, action: Callable[[], Awaitable[object]]) -> None:
        try:
            await action()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("call_teardown_step_failed", call_id=call_id, step=step)

    async def drain(self, timeout_s: float, abort: asyncio.Event | None = None) -> int:
        """Take no new calls, let live ones finish for up to ``timeout_s`` (or until
        ``abort`` is set), then end the rest cleanly (records written). Returns how
        many calls had to be ended."""
        self.stop_accepting()
        log.info("drain_started", live_calls=len(self._calls), timeout_s=timeout_s)
        waits = [asyncio.ensure_future(self._no_calls.wait())]
        if abort is not None:
            waits.append(asyncio.ensure_future(abort.wait()))
        try:
            await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()
        left = list(self._calls)
        reason = "shutdown: second signal" if abort is not None and abort.is_set() else "shutdown: drain timeout"
        await asyncio.gather(*(self.end_call(call_id, reason) for call_id in left))
        log.info("drain_finished", ended_by_timeout=len(left))
        return len(left)

    async def shutdown(self, reason: str = "engine shutting down") -> None:
        for call_id in list(self._calls):
            await self.end_call(call_id, reason)
