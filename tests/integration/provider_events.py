"""Drains a provider session's ``events()`` the way the engine does, into a list the
test can wait on (shared by the provider client and simulator tests)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from voiceline.providers.base import AgentAudio, ProviderEvent


class EventCollector:
    def __init__(self, session: Any, *, timeout_s: float = 10.0) -> None:
        self.session = session
        self.events: list[ProviderEvent] = []
        self.timeout_s = timeout_s
        self._changed = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for event in self.session.events():
            self.events.append(event)
            self._changed.set()

    async def wait_for(self, predicate: Callable[[ProviderEvent], bool], timeout: float | None = None,
                       count: int = 1) -> ProviderEvent:
        """The ``count``-th event matching ``predicate``, once it has arrived."""

        async def loop() -> ProviderEvent:
            while True:
                matching = [e for e in self.events if predicate(e)]
                if len(matching) >= count:
                    return matching[count - 1]
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(loop(), self.timeout_s if timeout is None else timeout)

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def audio(self) -> bytes:
        return b"".join(e.data for e in self.of(AgentAudio))

    def kinds(self) -> list[str]:
        """Event names in order, with runs of AgentAudio collapsed to one."""
        out: list[str] = []
        for e in self.events:
            name = type(e).__name__
            if not (name == "AgentAudio" and out and out[-1] == name):
                out.append(name)
        return out
