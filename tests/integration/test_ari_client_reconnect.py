"""AriClient reconnecting its events websocket against a fake ARI: dropped connections, an
Asterisk restart, an initial outage, rejected credentials, backoff, a replaced application."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
import structlog.testing

from ari_fake import (
    APP,
    PASSWORD,
    TIMEOUT_S,
    USERNAME,
    EventRecorder,
    EventsRun,
    FakeAri,
    channel_event,
    make_client,
    unused_port,
    wait_for_condition,
)

from voiceline.asterisk.ari import AriClient


# -- reconnect ----------------------------------------------------------------


@pytest.mark.parametrize("abrupt", [False, True], ids=["close-frame", "connection-reset"])
async def test_reconnects_after_server_drops_websocket(
    client: AriClient, fake_ari: FakeAri, start_events: Callable[..., Awaitable[EventsRun]], abrupt: bool
) -> None:
    run = await start_events(client)
    ws = await fake_ari.next_ws()
    await ws.send_json(channel_event("StasisStart", "chan-1", args=[], test_id="before"))
    await run.recorder.wait_until(lambda: "before" in run.recorder.event_ids())

    await fake_ari.drop_websockets(abrupt=abrupt)
    ws = await fake_ari.next_ws()
    await run.recorder.wait_until(lambda: run.recorder.connection_changes == [True, False, True])
    await ws.send_json(channel_event("StasisEnd", "chan-1", test_id="after"))
    await run.recorder.wait_until(lambda: "after" in run.recorder.event_ids())
    assert client.connected


async def test_reconnects_when_asterisk_restarts_on_same_port(
    client: AriClient, fake_ari: FakeAri, start_events: Callable[..., Awaitable[EventsRun]]
) -> None:
    with structlog.testing.capture_logs() as logs:
        run = await start_events(client)
        await fake_ari.next_ws()
        port = fake_ari.port

        await fake_ari.stop()
        await run.recorder.wait_until(lambda: run.recorder.connection_changes == [True, False])
        assert not client.connected
        await asyncio.sleep(0.3)  # the outage itself: several reconnect attempts fail meanwhile

        await fake_ari.start(port=port)
        ws = await fake_ari.next_ws()
        await run.recorder.wait_until(lambda: run.recorder.connection_changes == [True, False, True])
        await ws.send_json(channel_event("StasisStart", "chan-9", args=[], test_id="after-restart"))
        await run.recorder.wait_until(lambda: "after-restart" in run.recorder.event_ids())

    complaints = [e for e in logs if e["log_level"] in ("warning", "error") and e["event"].startswith("ari.events")]
    assert [e["event"] for e in complaints] == ["ari.events.disconnected"]  # once per outage, not per attempt
    [recovered] = [e for e in logs if e["event"] == "ari.events.reconnected"]
    assert recovered["attempts"] >= 3
    # Every failed attempt of the outage is logged, at DEBUG only.
    assert [e["log_level"] for e in logs if e["event"] == "ari.events.reconnect_failed"] == ["debug"] * (
        recovered["attempts"] - 1
    )


async def test_initial_outage_is_reported_once_then_connects(
    start_events: Callable[..., Awaitable[EventsRun]]
) -> None:
    port = unused_port()
    ari = make_client(f"http://127.0.0.1:{port}/ari")
    await ari.open()
    fake = FakeAri()
    try:
        with structlog.testing.capture_logs() as logs:
            run = await start_events(ari)
            await asyncio.sleep(0.2)  # Asterisk not up yet
            await fake.start(port=port)
            await fake.next_ws()
            await run.recorder.wait_until(lambda: run.recorder.connection_changes == [True])
        complaints = [e for e in logs if e["log_level"] in ("warning", "error")]
        assert [e["event"] for e in complaints] == ["ari.events.unavailable"]
        assert complaints[0]["attempt"] == 1
    finally:
        await ari.close()
        await fake.stop()


async def test_rejected_credentials_on_websocket_are_an_error(
    fake_ari: FakeAri, start_events: Callable[..., Awaitable[EventsRun]]
) -> None:
    ari = AriClient(fake_ari.base_url, USERNAME, "wrong", APP, reconnect_initial_s=0.02, reconnect_max_s=0.05)
    await ari.open()
    with structlog.testing.capture_logs() as logs:
        await start_events(ari)
        await wait_for_condition(lambda: sum(r.route == "/ari/events" for r in fake_ari.requests) >= 3)
    [complaint] = [e for e in logs if e["log_level"] in ("warning", "error")]
    assert complaint["event"] == "ari.events.credentials_rejected"
    assert complaint["reason"] == "HTTP 401"
    assert not ari.connected


def test_reconnect_delay_grows_with_jitter_and_is_capped() -> None:
    ari = AriClient("http://127.0.0.1:8088/ari", USERNAME, PASSWORD, APP, reconnect_initial_s=0.5, reconnect_max_s=10.0)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (5, 8.0), (6, 10.0), (60, 10.0)]:
        delays = [ari._reconnect_delay(attempt) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), attempt
        assert len(set(delays)) > 1  # jittered


async def test_connection_callback_failure_is_logged_and_events_still_flow(
    client: AriClient, fake_ari: FakeAri, start_events: Callable[..., Awaitable[EventsRun]]
) -> None:
    recorder = EventRecorder()

    async def broken_callback(connected: bool) -> None:
        raise RuntimeError("callback bug")

    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(client.run_events(recorder.on_event, on_connection_change=broken_callback))
        try:
            ws = await fake_ari.next_ws()
            await ws.send_json(channel_event("StasisStart", "chan-1", args=[]))
            await recorder.wait_until(lambda: len(recorder.events) == 1)
        finally:
            await client.close()
            await asyncio.wait_for(task, TIMEOUT_S)
    assert any(e["event"] == "ari.connection_callback_failed" for e in logs)


async def test_application_replaced_stops_without_reconnecting(
    client: AriClient, fake_ari: FakeAri, start_events: Callable[..., Awaitable[EventsRun]]
) -> None:
    with structlog.testing.capture_logs() as logs:
        run = await start_events(client)
        ws = await fake_ari.next_ws()
        await ws.send_json({"type": "ApplicationReplaced", "application": APP, "timestamp": "2025-01-01T00:00:00Z"})
        await asyncio.wait_for(run.task, TIMEOUT_S)  # run_events returns on its own

    assert client.application_replaced
    assert [e["type"] for e in run.recorder.events] == ["ApplicationReplaced"]
    assert run.recorder.connection_changes == [True, False]
    assert not client.connected
    assert fake_ari.ws_connections.empty()  # it did not take the app back
    [error] = [e for e in logs if e["log_level"] == "error"]
    assert error["event"] == "ari.events.application_replaced" and error["app"] == APP
