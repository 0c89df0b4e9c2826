"""Fixtures of the AriClient tests (test_ari_client*.py): a fake ARI, an open client on it, and
a starter for client.run_events that checks on teardown that the loop ended cleanly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from ari_fake import PASSWORD, TIMEOUT_S, USERNAME, EventRecorder, EventsRun, FakeAri, make_client

from voiceline.asterisk.ari import AriClient


@pytest.fixture
async def fake_ari() -> AsyncIterator[FakeAri]:
    fake = FakeAri()
    await fake.start()
    yield fake
    await fake.stop()
    # Whatever a test did, the credentials must only ever have travelled in the header.
    for request in fake.requests:
        assert USERNAME not in request.url and PASSWORD not in request.url, request.url
        assert "api_key" not in request.url, request.url


@pytest.fixture
async def client(fake_ari: FakeAri) -> AsyncIterator[AriClient]:
    ari = make_client(fake_ari.base_url)
    await ari.open()
    yield ari
    await ari.close()


@pytest.fixture
async def start_events() -> AsyncIterator[Callable[..., Awaitable[EventsRun]]]:
    """Starts client.run_events in a task; on teardown closes the client and checks the loop ended cleanly."""
    runs: list[EventsRun] = []

    async def start(client: AriClient, recorder: EventRecorder | None = None, handler: Any = None) -> EventsRun:
        recorder = recorder or EventRecorder()
        task = asyncio.create_task(
            client.run_events(handler or recorder.on_event, on_connection_change=recorder.on_connection_change)
        )
        run = EventsRun(client, recorder, task)
        runs.append(run)
        return run

    yield start
    for run in runs:
        await run.client.close()
        await asyncio.wait_for(run.task, TIMEOUT_S)  # re-raises if run_events raised
