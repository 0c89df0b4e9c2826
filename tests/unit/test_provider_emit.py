"""The one emit policy of ProviderSession: ProviderClosed is never lost, events() always ends."""

from __future__ import annotations

import asyncio

from voiceline.audio.formats import SLIN_8K
from voiceline.providers.base import (
    AgentAudio,
    ProviderCapabilities,
    ProviderClosed,
    ProviderEvent,
    ProviderSession,
    Transcript,
)


class _Session(ProviderSession):
    def __init__(self, queue_size: int) -> None:
        super().__init__(ProviderCapabilities(SLIN_8K, SLIN_8K), queue_size=queue_size)

    async def start(self) -> None:
        pass

    async def send_audio(self, audio: bytes) -> None:
        pass

    async def close(self, reason: str = "call ended") -> None:
        self._emit(ProviderClosed(reason))

    def emit(self, event: ProviderEvent) -> None:
        self._emit(event)


async def _drain(session: ProviderSession) -> list[ProviderEvent]:
    return [event async for event in session.events()]


async def test_closed_is_delivered_when_the_queue_is_full() -> None:
    session = _Session(queue_size=2)
    session.emit(AgentAudio(b"a"))
    session.emit(AgentAudio(b"b"))
    session.emit(ProviderClosed("lost", error=True))  # queue full: must not raise, must not be lost
    events = await asyncio.wait_for(_drain(session), 1.0)
    assert events == [AgentAudio(b"a"), AgentAudio(b"b"), ProviderClosed("lost", error=True)]


async def test_full_queue_drops_and_counts_ordinary_events() -> None:
    session = _Session(queue_size=2)
    for chunk in (b"a", b"b", b"c", b"d"):
        session.emit(AgentAudio(chunk))
    session.emit(Transcript("user", "hi"))
    assert session.events_dropped == 3
    await session.close()
    events = await asyncio.wait_for(_drain(session), 1.0)
    assert events == [AgentAudio(b"a"), AgentAudio(b"b"), ProviderClosed("call ended")]


async def test_nothing_follows_closed() -> None:
    session = _Session(queue_size=5)
    session.emit(ProviderClosed("first"))
    session.emit(AgentAudio(b"late"))
    session.emit(ProviderClosed("second"))
    events = await asyncio.wait_for(_drain(session), 1.0)
    assert events == [ProviderClosed("first")]
    assert session.events_dropped == 0  # events after the end are ignored, not counted as overflow


async def test_queue_frees_room_as_the_consumer_drains() -> None:
    session = _Session(queue_size=1)
    session.emit(AgentAudio(b"a"))
    received: list[ProviderEvent] = []
    async for event in session.events():
        received.append(event)
        if event == AgentAudio(b"a"):
            session.emit(AgentAudio(b"b"))  # room again once "a" was taken
        elif event == AgentAudio(b"b"):
            session.emit(ProviderClosed("done"))
    assert received == [AgentAudio(b"a"), AgentAudio(b"b"), ProviderClosed("done")]
    assert session.events_dropped == 0
