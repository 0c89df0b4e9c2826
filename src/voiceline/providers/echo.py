"""The diagnostic ``echo`` agent: plays the caller's audio back after a delay.

Like Asterisk's own Echo() application, but through the whole engine path
(AudioSocket in, provider session, jitter buffer and pacer out), so an operator
can hear whether the audio path is healthy before adding an AI provider.
"""

from __future__ import annotations

import asyncio
from collections import deque

from voiceline.audio.formats import SLIN_8K
from voiceline.config import EchoProviderSettings
from voiceline.tasks import cancel_and_wait
from voiceline.providers.base import (
    AgentAudio,
    CallContext,
    Provider,
    ProviderCapabilities,
    ProviderClosed,
    ProviderSession,
)


class EchoSession(ProviderSession):
    def __init__(self, delay_ms: int, *, clock=None) -> None:
        # Full duplex: echo has no turns, and gating the caller while it echoes
        # would cut the very audio it is meant to return.
        super().__init__(
            ProviderCapabilities(input_format=SLIN_8K, output_format=SLIN_8K, full_duplex=True)
        )
        self._delay_s = delay_ms / 1000
        self._pending: deque[tuple[float, bytes]] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._clock = clock or asyncio.get_running_loop().time

    async def start(self) -> None:
        self._task = asyncio.create_task(self._release_loop(), name="echo-release")

    async def send_audio(self, audio: bytes) -> None:
        if self._closed:
            return
        self._pending.append((self._clock() + self._delay_s, audio))
        self._wakeup.set()

    async def _release_loop(self) -> None:
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            due, audio = self._pending[0]
            wait = due - self._clock()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            self._pending.popleft()
            self._emit(AgentAudio(audio))

    async def close(self, reason: str = "call ended") -> None:
        if self._closed:
            return
        self._closed = True
        await cancel_and_wait(self._task)
        self._pending.clear()
        self._emit(ProviderClosed(reason))


class EchoProvider(Provider):
    name = "echo"

    def __init__(self, settings: EchoProviderSettings | None = None) -> None:
        self.settings = settings if settings is not None else EchoProviderSettings()

    def availability(self) -> tuple[bool, str]:
        return True, "always available"

    def create_session(self, ctx: CallContext) -> ProviderSession:
        return EchoSession(self.settings.delay_ms)
