"""Unexpected failures inside DeepgramSession: caught where they happen, logged with their
traceback, and the call ends or degrades with a reason; never swallowed, never a
"connection failed" that hides a bug, never an unretrieved task exception."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from voiceline.config import DeepgramProviderSettings
from voiceline.providers.base import ProviderClosed, ProviderError, ProviderEvent
from voiceline.providers.deepgram import DeepgramSession
from voiceline.sim.deepgram_sim import DeepgramSimulator


@pytest.fixture(autouse=True)
async def _no_unhandled_loop_errors(loop_errors: list[dict[str, Any]]) -> AsyncIterator[None]:
    yield
    gc.collect()
    await asyncio.sleep(0)
    assert not loop_errors, f"unhandled exceptions in the event loop: {[c.get('message') for c in loop_errors]}"


@pytest.fixture
async def sim() -> AsyncIterator[DeepgramSimulator]:
    simulator = DeepgramSimulator()
    await simulator.start()
    yield simulator
    await simulator.stop()


def settings(url: str, **kw: Any) -> DeepgramProviderSettings:
    return DeepgramProviderSettings(url=url, api_key="k", greeting=None, **kw)


async def drain(session: DeepgramSession) -> list[ProviderEvent]:
    return [event async for event in session.events()]


async def test_a_bug_in_message_handling_ends_the_call_as_an_internal_error(sim: DeepgramSimulator) -> None:
    session = DeepgramSession(settings(sim.url))
    await session.start()

    def broken(raw: str) -> list[Any]:
        raise KeyError("mapping bug")

    session.mapper.handle_text = broken  # type: ignore[method-assign]
    events = asyncio.create_task(drain(session))
    with capture_logs() as logs:
        await sim._send(sim.sessions[0], {"type": "ConversationText", "role": "user", "content": "hi"})
        received = await asyncio.wait_for(events, 5)
    error, closed = received[-2:]
    assert isinstance(error, ProviderError) and error.fatal
    assert "internal error KeyError" in error.message and "mapping bug" in error.message
    assert "connection failed" not in error.message
    assert closed == ProviderClosed(error.message, error=True)
    failures = [entry for entry in logs if entry["event"] == "deepgram reader failed unexpectedly"]
    assert len(failures) == 1 and failures[0]["exc_info"] and failures[0]["log_level"] == "error"


async def test_a_bug_in_the_keepalive_is_logged_with_its_traceback(sim: DeepgramSimulator) -> None:
    session = DeepgramSession(settings(sim.url, keepalive_interval_s=0.05))

    async def broken(message: dict[str, Any]) -> bool:
        raise ZeroDivisionError("keepalive bug")

    with capture_logs() as logs:
        await session.start()
        session._send_control = broken  # type: ignore[method-assign]
        assert session._keepalive is not None
        await asyncio.wait({session._keepalive}, timeout=5)
        await asyncio.sleep(0)  # let the done callback run
    crashed = [entry for entry in logs if entry["event"] == "task_crashed"]
    assert len(crashed) == 1 and crashed[0]["task"] == "deepgram-keepalive"
    assert isinstance(crashed[0]["exc_info"], ZeroDivisionError)
    # The call is degraded (no more keepalives), not over; closing it is still clean.
    assert not session._closed
    events = asyncio.create_task(drain(session))
    await session.close()
    assert (await asyncio.wait_for(events, 5))[-1] == ProviderClosed("call ended")


async def test_expected_send_failures_stop_the_keepalive_quietly(sim: DeepgramSimulator) -> None:
    session = DeepgramSession(settings(sim.url, keepalive_interval_s=0.05))
    await session.start()

    async def gone(message: dict[str, Any]) -> bool:
        return False  # what _send_control answers when the socket is gone

    session._send_control = gone  # type: ignore[method-assign]
    with capture_logs() as logs:
        assert session._keepalive is not None
        await asyncio.wait_for(session._keepalive, 5)
    assert not [entry for entry in logs if entry["log_level"] in ("error", "critical")]
    await session.close()
