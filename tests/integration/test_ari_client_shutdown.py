"""AriClient shutdown against a fake ARI: close during backoff, a stalled handshake or busy
workers, close racing the first connect, reopening after close."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import structlog.testing

from ari_fake import (
    TIMEOUT_S,
    EventRecorder,
    EventsRun,
    FakeAri,
    channel_event,
    make_client,
    unused_port,
    wait_for_condition,
)

from voiceline.asterisk.ari import AriClient, AriError


# -- shutdown -----------------------------------------------------------------


async def test_close_ends_run_events_during_backoff(start_events: Callable[..., Awaitable[EventsRun]]) -> None:
    ari = make_client(f"http://127.0.0.1:{unused_port()}/ari", reconnect_initial_s=30.0, reconnect_max_s=60.0)
    await ari.open()
    with structlog.testing.capture_logs() as logs:
        run = await start_events(ari)
        await wait_for_condition(lambda: any(e["event"] == "ari.events.unavailable" for e in logs))
    await ari.close()
    await asyncio.wait_for(run.task, 1.0)


async def test_close_ends_run_events_during_stalled_handshake(
    start_events: Callable[..., Awaitable[EventsRun]]
) -> None:
    accepted = asyncio.Event()
    held: list[asyncio.StreamWriter] = []

    async def black_hole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accept the TCP connection, never answer the HTTP upgrade
        accepted.set()

    server = await asyncio.start_server(black_hole, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    ari = make_client(f"http://127.0.0.1:{port}/ari", request_timeout_s=30.0)
    await ari.open()
    try:
        run = await start_events(ari)
        await asyncio.wait_for(accepted.wait(), TIMEOUT_S)
        await ari.close()
        await asyncio.wait_for(run.task, 1.0)
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_close_cancels_busy_workers(
    client: AriClient, fake_ari: FakeAri, start_events: Callable[..., Awaitable[EventsRun]]
) -> None:
    handler_started = asyncio.Event()
    handler_cancelled = asyncio.Event()

    async def stuck_handler(event: dict[str, Any]) -> None:
        handler_started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            handler_cancelled.set()
            raise

    run = await start_events(client, handler=stuck_handler)
    ws = await fake_ari.next_ws()
    await ws.send_json(channel_event("StasisStart", "chan-1", args=[]))
    await asyncio.wait_for(handler_started.wait(), TIMEOUT_S)

    await client.close()
    await asyncio.wait_for(run.task, TIMEOUT_S)
    assert handler_cancelled.is_set()
    assert client.event_worker_count == 0
    assert run.recorder.connection_changes == [True, False]


async def test_websocket_outlives_the_rest_request_timeout(
    fake_ari: FakeAri, start_events: Callable[..., Awaitable[EventsRun]]
) -> None:
    ari = make_client(fake_ari.base_url, request_timeout_s=0.1)
    await ari.open()
    run = await start_events(ari)
    ws = await fake_ari.next_ws()
    await asyncio.sleep(0.4)  # idle for longer than the REST timeout: the event stream must survive it
    await ws.send_json(channel_event("StasisStart", "chan-1", args=[], test_id="late"))
    await run.recorder.wait_until(lambda: run.recorder.event_ids() == ["late"])
    assert run.recorder.connection_changes == [True]
    assert fake_ari.ws_connections.empty()


@pytest.mark.parametrize("yields_before_close", [0, 1, 2, 3, 5])
async def test_close_racing_the_first_connect_attempt_ends_run_events_cleanly(
    fake_ari: FakeAri, yields_before_close: int
) -> None:
    ari = make_client(fake_ari.base_url)
    await ari.open()
    task = asyncio.create_task(ari.run_events(EventRecorder().on_event))
    for _ in range(yields_before_close):
        await asyncio.sleep(0)
    await ari.close()
    await asyncio.wait_for(task, TIMEOUT_S)  # must return, not raise
    assert not ari.connected


async def test_handler_may_close_the_client(
    client: AriClient, fake_ari: FakeAri, start_events: Callable[..., Awaitable[EventsRun]]
) -> None:
    closed = asyncio.Event()

    async def handler(event: dict[str, Any]) -> None:
        await client.close()  # e.g. a fatal condition detected while handling an event
        closed.set()

    run = await start_events(client, handler=handler)
    ws = await fake_ari.next_ws()
    await ws.send_json(channel_event("StasisStart", "chan-1", args=[]))
    await asyncio.wait_for(closed.wait(), TIMEOUT_S)
    await asyncio.wait_for(run.task, TIMEOUT_S)
    await wait_for_condition(lambda: client.event_worker_count == 0)
    with pytest.raises(AriError, match="not open"):
        await client.answer("chan-1")


async def test_cancelling_run_events_cancels_its_workers(client: AriClient, fake_ari: FakeAri) -> None:
    handler_started = asyncio.Event()

    async def stuck_handler(event: dict[str, Any]) -> None:
        handler_started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(client.run_events(stuck_handler))
    ws = await fake_ari.next_ws()
    await ws.send_json(channel_event("StasisStart", "chan-1", args=[]))
    await asyncio.wait_for(handler_started.wait(), TIMEOUT_S)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert client.event_worker_count == 0
    assert not client.connected


async def test_client_can_be_reopened_after_close(fake_ari: FakeAri, start_events: Callable[..., Awaitable[EventsRun]]) -> None:
    ari = make_client(fake_ari.base_url)
    for round_number in range(2):
        await ari.open()
        run = await start_events(ari)
        ws = await fake_ari.next_ws()
        expected_ids = [f"r{round_number}"]
        await ws.send_json(channel_event("StasisStart", f"chan-{round_number}", args=[], test_id=expected_ids[0]))
        await run.recorder.wait_until(lambda run=run, expected_ids=expected_ids: run.recorder.event_ids() == expected_ids)
        assert await ari.hangup(f"chan-{round_number}") is True
        await ari.close()
        await asyncio.wait_for(run.task, TIMEOUT_S)
