"""AriClient's events websocket against a fake ARI: header auth, dispatch, per-channel ordering,
handler failures, worker retirement, malformed messages."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

import structlog.testing

from ari_fake import (
    APP,
    PASSWORD,
    TIMEOUT_S,
    USERNAME,
    EventRecorder,
    EventsRun,
    FakeAri,
    _basic_header,
    channel_event,
    make_client,
    unused_port,
    wait_for_condition,
)

from voiceline.asterisk.ari import GLOBAL_ORDERING_KEY, AriClient, event_ordering_key


# -- events -------------------------------------------------------------------


async def test_events_websocket_uses_header_auth_and_dispatches(
    client: AriClient, fake_ari: FakeAri, start_events: Callable[..., Awaitable[EventsRun]]
) -> None:
    run = await start_events(client)
    ws = await fake_ari.next_ws()
    assert await client.wait_connected(TIMEOUT_S)
    assert client.connected

    [upgrade] = [r for r in fake_ari.requests if r.route == "/ari/events"]
    assert upgrade.authorization == _basic_header(USERNAME, PASSWORD)
    assert sorted(upgrade.query) == [("app", APP), ("subscribeAll", "false")]
    assert upgrade.url.startswith(f"http://127.0.0.1:{fake_ari.port}/ari/events?")

    sent = [
        channel_event("StasisStart", "chan-1", args=[], test_id="a"),
        {"type": "BridgeCreated", "application": APP, "bridge": {"id": "br-1"}, "test_id": "b"},
        channel_event("ChannelDtmfReceived", "chan-1", digit="5", test_id="c"),
    ]
    for event in sent:
        await ws.send_json(event)
    await run.recorder.wait_until(lambda: len(run.recorder.events) == 3)
    assert sorted(run.recorder.event_ids()) == ["a", "b", "c"]
    assert run.recorder.connection_changes == [True]


async def test_wait_connected_times_out_without_server() -> None:
    ari = make_client(f"http://127.0.0.1:{unused_port()}/ari")
    await ari.open()
    try:
        assert await ari.wait_connected(0.05) is False
        assert not ari.connected
    finally:
        await ari.close()


async def test_per_channel_order_holds_while_channels_run_concurrently(
    client: AriClient, fake_ari: FakeAri, start_events: Callable[..., Awaitable[EventsRun]]
) -> None:
    events_per_channel = 200
    seen: dict[str, list[int]] = {"chan-a": [], "chan-b": []}
    in_flight: dict[str, int] = {"chan-a": 0, "chan-b": 0}
    max_in_flight_per_channel = 0
    both_channels_busy_at_once = asyncio.Event()
    b_started = asyncio.Event()
    done = asyncio.Event()

    async def handler(event: dict[str, Any]) -> None:
        nonlocal max_in_flight_per_channel
        channel_id = event["channel"]["id"]
        in_flight[channel_id] += 1
        max_in_flight_per_channel = max(max_in_flight_per_channel, in_flight[channel_id])
        if all(in_flight.values()):
            both_channels_busy_at_once.set()
        try:
            if event["seq"] == 0 and channel_id == "chan-a":
                # Channel A's first event cannot finish until channel B is being handled: if the
                # dispatcher serialised channels this would never complete.
                await asyncio.wait_for(b_started.wait(), TIMEOUT_S)
            if channel_id == "chan-b":
                b_started.set()
            for _ in range(random.randint(0, 3)):
                await asyncio.sleep(random.uniform(0, 0.001))
            seen[channel_id].append(event["seq"])
        finally:
            in_flight[channel_id] -= 1
        if sum(len(v) for v in seen.values()) == 2 * events_per_channel:
            done.set()

    await start_events(client, handler=handler)
    ws = await fake_ari.next_ws()
    for seq in range(events_per_channel):
        for channel_id in ("chan-a", "chan-b"):
            await ws.send_json(channel_event("ChannelVarset", channel_id, seq=seq, variable="X", value=str(seq)))

    await asyncio.wait_for(done.wait(), TIMEOUT_S)
    assert seen["chan-a"] == list(range(events_per_channel))
    assert seen["chan-b"] == list(range(events_per_channel))
    assert max_in_flight_per_channel == 1
    assert both_channels_busy_at_once.is_set()


async def test_handler_exception_is_logged_and_dispatch_continues(
    client: AriClient, fake_ari: FakeAri, start_events: Callable[..., Awaitable[EventsRun]]
) -> None:
    recorder = EventRecorder()

    async def handler(event: dict[str, Any]) -> None:
        if event.get("explode"):
            raise RuntimeError("handler bug")
        await recorder.on_event(event)

    with structlog.testing.capture_logs() as logs:
        await start_events(client, recorder, handler=handler)
        ws = await fake_ari.next_ws()
        await ws.send_json(channel_event("ChannelDtmfReceived", "chan-1", digit="1", explode=True))
        await ws.send_json(channel_event("ChannelDtmfReceived", "chan-1", digit="2", test_id="after-1"))
        await ws.send_json(channel_event("ChannelDtmfReceived", "chan-2", digit="3", test_id="other"))
        await recorder.wait_until(lambda: len(recorder.events) == 2)

    assert sorted(recorder.event_ids()) == ["after-1", "other"]
    [failure] = [entry for entry in logs if entry["event"] == "ari.event_handler_failed"]
    assert failure["log_level"] == "error"
    assert failure["event_type"] == "ChannelDtmfReceived" and failure["channel_id"] == "chan-1"
    assert failure.get("exc_info") is True
    assert client.connected


async def test_workers_retire_after_channels_end(
    client: AriClient, fake_ari: FakeAri, start_events: Callable[..., Awaitable[EventsRun]]
) -> None:
    run = await start_events(client)
    ws = await fake_ari.next_ws()
    for channel_id in ("chan-1", "chan-2", "chan-3"):
        await ws.send_json(channel_event("StasisStart", channel_id, args=[]))
    await ws.send_json({"type": "BridgeDestroyed", "application": APP, "bridge": {"id": "br-1"}})
    await run.recorder.wait_until(lambda: len(run.recorder.events) == 4)
    assert client.event_worker_count == 4  # three channels + the global key

    await ws.send_json(channel_event("StasisEnd", "chan-1"))
    await ws.send_json(channel_event("ChannelDestroyed", "chan-2", cause=16, cause_txt="Normal Clearing"))
    # chan-3 never ends and the global worker never sees an end: both retire on the idle timeout.
    await wait_for_condition(lambda: client.event_worker_count == 0)

    # A late event for a channel whose worker has retired is still delivered, by a fresh worker.
    await ws.send_json(channel_event("ChannelDestroyed", "chan-1", cause=16, cause_txt="Normal Clearing", test_id="late"))
    await run.recorder.wait_until(lambda: "late" in run.recorder.event_ids())
    await wait_for_condition(lambda: client.event_worker_count == 0)


async def test_malformed_messages_are_skipped(
    client: AriClient, fake_ari: FakeAri, start_events: Callable[..., Awaitable[EventsRun]]
) -> None:
    with structlog.testing.capture_logs() as logs:
        run = await start_events(client)
        ws = await fake_ari.next_ws()
        await ws.send_str("{not json")
        await ws.send_str("[1, 2, 3]")
        await ws.send_json(channel_event("StasisStart", "chan-1", args=[], test_id="good"))
        await run.recorder.wait_until(lambda: len(run.recorder.events) == 1)

    assert run.recorder.event_ids() == ["good"]
    warnings = [entry["event"] for entry in logs if entry["log_level"] == "warning"]
    assert warnings == ["ari.events.bad_json", "ari.events.not_an_event"]
    assert fake_ari.ws_connections.empty()  # no reconnect was needed
    assert run.recorder.connection_changes == [True]


def test_ordering_keys() -> None:
    assert event_ordering_key(channel_event("StasisStart", "c1")) == "c1"
    assert event_ordering_key({"type": "Dial", "peer": {"id": "c2"}, "dialstatus": ""}) == "c2"
    playback = {"id": "pb", "target_uri": "channel:c3", "media_uri": "sound:x", "state": "playing"}
    assert event_ordering_key({"type": "PlaybackStarted", "playback": playback}) == "c3"
    recording = {"name": "r", "target_uri": "channel:c4", "state": "recording"}
    assert event_ordering_key({"type": "RecordingStarted", "recording": recording}) == "c4"
    bridge_playback = {"id": "pb", "target_uri": "bridge:b1", "media_uri": "sound:x", "state": "playing"}
    assert event_ordering_key({"type": "PlaybackStarted", "playback": bridge_playback}) is GLOBAL_ORDERING_KEY
    assert event_ordering_key({"type": "BridgeDestroyed", "bridge": {"id": "b1"}}) is GLOBAL_ORDERING_KEY
    # Global variable sets carry no channel.
    assert event_ordering_key({"type": "ChannelVarset", "variable": "X", "value": "1"}) is GLOBAL_ORDERING_KEY


async def test_playback_events_stay_ordered_with_their_channel(
    client: AriClient, fake_ari: FakeAri, start_events: Callable[..., Awaitable[EventsRun]]
) -> None:
    order: list[str] = []
    done = asyncio.Event()

    async def handler(event: dict[str, Any]) -> None:
        if event["type"] == "StasisStart":
            await asyncio.sleep(0.05)  # a slow handler: later events for this channel must wait for it
        order.append(event["type"])
        if event["type"] == "StasisEnd":
            done.set()

    await start_events(client, handler=handler)
    ws = await fake_ari.next_ws()
    await ws.send_json(channel_event("StasisStart", "chan-1", args=[]))
    await ws.send_json({"type": "PlaybackFinished", "playback": {"id": "pb", "target_uri": "channel:chan-1"}})
    await ws.send_json(channel_event("StasisEnd", "chan-1"))
    await asyncio.wait_for(done.wait(), TIMEOUT_S)
    assert order == ["StasisStart", "PlaybackFinished", "StasisEnd"]
