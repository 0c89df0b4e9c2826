"""AriClient against a fake ARI server (aiohttp.web on loopback) that checks auth and records requests."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import structlog.testing
from aiohttp import WSCloseCode, web

from voiceline.asterisk.ari import (
    GLOBAL_ORDERING_KEY,
    AriClient,
    AriError,
    event_ordering_key,
)

TIMEOUT_S = 5.0
USERNAME = "voiceline-user"
PASSWORD = "pw-Zq81-secret"
APP = "voiceline"

# Routes written out by hand from ARI's swagger (not generated from the client's registry), so
# a wrong path in the client shows up as a 404 from the fake.
DEFAULT_RESPONSES: dict[tuple[str, str], tuple[int, Any]] = {
    ("GET", "/ari/asterisk/info"): (200, {"system": {"version": "22.10.1"}}),
    ("POST", "/ari/channels/{channelId}/answer"): (204, None),
    ("DELETE", "/ari/channels/{channelId}"): (204, None),
    ("POST", "/ari/bridges"): (200, {"id": "bridge-1", "bridge_type": "mixing", "channels": []}),
    ("POST", "/ari/bridges/{bridgeId}/addChannel"): (204, None),
    ("DELETE", "/ari/bridges/{bridgeId}"): (204, None),
    ("POST", "/ari/channels/externalMedia"): (200, {"id": "media-1", "name": "AudioSocket/127.0.0.1:9092-1"}),
    ("POST", "/ari/channels/{channelId}/play"): (201, {"id": "pb-auto", "state": "queued"}),
    ("POST", "/ari/channels/{channelId}/play/{playbackId}"): (201, {"id": "pb-1", "state": "queued"}),
    ("DELETE", "/ari/playbacks/{playbackId}"): (204, None),
    ("GET", "/ari/channels/{channelId}/variable"): (200, {"value": "42"}),
    ("POST", "/ari/channels/{channelId}/variable"): (204, None),
    ("POST", "/ari/channels/{channelId}/continue"): (204, None),
    ("GET", "/ari/channels"): (200, [{"id": "chan-1", "name": "PJSIP/alice-1", "state": "Up"}]),
    ("GET", "/ari/bridges"): (200, [{"id": "br-7", "bridge_type": "mixing", "channels": ["chan-1", "media-1"]}]),
}


@dataclass
class RecordedRequest:
    method: str
    route: str | None  # the fake's route template, e.g. "/ari/channels/{channelId}"
    path: str
    query: list[tuple[str, str]]
    body: Any
    url: str
    authorization: str | None


class FakeAri:
    """Just enough of Asterisk's ARI HTTP server: REST routes, Basic auth, the events websocket."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.responses: dict[tuple[str, str], tuple[int, Any]] = dict(DEFAULT_RESPONSES)
        self.stalled_routes: set[tuple[str, str]] = set()
        self.websockets: list[web.WebSocketResponse] = []
        self.ws_connections: asyncio.Queue[web.WebSocketResponse] = asyncio.Queue()
        self._transports: dict[int, asyncio.BaseTransport] = {}
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ari"

    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._record_and_authenticate])
        for method, route in DEFAULT_RESPONSES:
            app.router.add_route(method, route, self._rest)
        app.router.add_get("/ari/events", self._events)
        return app

    async def start(self, port: int = 0) -> None:
        self._runner = web.AppRunner(self._make_app(), shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self, *, abrupt: bool = False) -> None:
        """Go away: close websockets (politely, or by resetting the TCP connection) and stop listening."""
        await self.drop_websockets(abrupt=abrupt)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def drop_websockets(self, *, abrupt: bool = False) -> None:
        for ws in list(self.websockets):
            if abrupt:
                self._transports[id(ws)].abort()
            else:
                await ws.close(code=WSCloseCode.GOING_AWAY, message=b"shutting down")
        self.websockets.clear()

    async def next_ws(self) -> web.WebSocketResponse:
        return await asyncio.wait_for(self.ws_connections.get(), TIMEOUT_S)

    @web.middleware
    async def _record_and_authenticate(self, request: web.Request, handler: Callable[..., Awaitable[Any]]) -> Any:
        raw = await request.read() if request.can_read_body else b""
        resource = request.match_info.route.resource
        self.requests.append(
            RecordedRequest(
                method=request.method,
                route=resource.canonical if resource is not None else None,
                path=request.path,
                query=list(request.query.items()),
                body=json.loads(raw) if raw else None,
                url=str(request.url),
                authorization=request.headers.get("Authorization"),
            )
        )
        if request.headers.get("Authorization") != _basic_header(USERNAME, PASSWORD):
            return web.json_response({"message": "Authentication required"}, status=401)
        return await handler(request)

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        key = (request.method, request.match_info.route.resource.canonical)
        if key in self.stalled_routes:
            await asyncio.Event().wait()  # never answers; the client must time out
        status, body = self.responses[key]
        if body is None:
            return web.Response(status=status)
        if isinstance(body, str):
            return web.Response(status=status, text=body)
        return web.json_response(body, status=status)

    async def _events(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._transports[id(ws)] = request.transport
        self.websockets.append(ws)
        self.ws_connections.put_nowait(ws)
        async for _ in ws:  # ARI clients send nothing; keep the socket open until someone closes it
            pass
        return ws

    def rest_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.route != "/ari/events"]


def _basic_header(username: str, password: str) -> str:
    """Written out by hand rather than with aiohttp's helper, so the check is independent of the client."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


class EventRecorder:
    """on_event / on_connection_change callbacks that tests can await conditions on."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.connection_changes: list[bool] = []
        self._changed = asyncio.Condition()

    async def on_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        await self._notify()

    async def on_connection_change(self, connected: bool) -> None:
        self.connection_changes.append(connected)
        await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = TIMEOUT_S) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), timeout)

    def event_ids(self) -> list[str]:
        return [e["test_id"] for e in self.events if "test_id" in e]


def channel_event(event_type: str, channel_id: str, **extra: Any) -> dict[str, Any]:
    return {"type": event_type, "application": APP, "channel": {"id": channel_id, "name": f"PJSIP/{channel_id}"}, **extra}


async def wait_for_condition(predicate: Callable[[], bool], timeout: float = TIMEOUT_S) -> None:
    """For state that has no awaitable hook (e.g. worker retirement): poll briefly."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_client(base_url: str, **overrides: Any) -> AriClient:
    options: dict[str, Any] = {
        "request_timeout_s": 2.0,
        "reconnect_initial_s": 0.02,
        "reconnect_max_s": 0.1,
        "event_worker_linger_s": 0.05,
        "event_worker_idle_s": 0.3,
    }
    options.update(overrides)
    return AriClient(base_url, USERNAME, PASSWORD, APP, **options)


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


class EventsRun:
    def __init__(self, client: AriClient, recorder: EventRecorder, task: asyncio.Task[None]):
        self.client = client
        self.recorder = recorder
        self.task = task


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


# -- REST ---------------------------------------------------------------------

RestCall = Callable[[AriClient], Awaitable[Any]]

# (call, expected method, expected route, expected concrete path, expected query, expected body, expected result)
REST_CASES: list[tuple[str, RestCall, str, str, str, list[tuple[str, str]], Any, Any]] = [
    ("asterisk_info", lambda c: c.asterisk_info(), "GET", "/ari/asterisk/info", "/ari/asterisk/info", [], None,
     {"system": {"version": "22.10.1"}}),
    ("answer", lambda c: c.answer("1700000000.12"), "POST", "/ari/channels/{channelId}/answer",
     "/ari/channels/1700000000.12/answer", [], None, None),
    ("hangup", lambda c: c.hangup("chan-1", reason="busy"), "DELETE", "/ari/channels/{channelId}",
     "/ari/channels/chan-1", [("reason", "busy")], None, True),
    ("hangup_default_reason", lambda c: c.hangup("chan-1"), "DELETE", "/ari/channels/{channelId}",
     "/ari/channels/chan-1", [("reason", "normal")], None, True),
    ("create_bridge", lambda c: c.create_bridge(), "POST", "/ari/bridges", "/ari/bridges", [("type", "mixing")], None,
     {"id": "bridge-1", "bridge_type": "mixing", "channels": []}),
    ("create_bridge_named", lambda c: c.create_bridge("mixing,dtmf_events", name="call-7", bridge_id="br-7"),
     "POST", "/ari/bridges", "/ari/bridges",
     [("type", "mixing,dtmf_events"), ("bridgeId", "br-7"), ("name", "call-7")], None,
     {"id": "bridge-1", "bridge_type": "mixing", "channels": []}),
    ("add_channel", lambda c: c.add_channel("br-7", ["chan-1", "media-1"]), "POST",
     "/ari/bridges/{bridgeId}/addChannel", "/ari/bridges/br-7/addChannel", [("channel", "chan-1,media-1")], None, None),
    ("destroy_bridge", lambda c: c.destroy_bridge("br-7"), "DELETE", "/ari/bridges/{bridgeId}", "/ari/bridges/br-7",
     [], None, True),
    ("external_media",
     lambda c: c.external_media(app=APP, external_host="127.0.0.1:9092", data="0b2f8d1e-6c1a-4a43-9c1e-2b1f3c4d5e6f",
                                channel_id="media-1", variables={"VOICELINE_CALL": "chan-1"}),
     "POST", "/ari/channels/externalMedia", "/ari/channels/externalMedia",
     [("app", APP), ("external_host", "127.0.0.1:9092"), ("data", "0b2f8d1e-6c1a-4a43-9c1e-2b1f3c4d5e6f"),
      ("format", "slin"), ("encapsulation", "audiosocket"), ("transport", "tcp"), ("channelId", "media-1")],
     {"variables": {"VOICELINE_CALL": "chan-1"}},
     {"id": "media-1", "name": "AudioSocket/127.0.0.1:9092-1"}),
    ("external_media_minimal",
     lambda c: c.external_media(app=APP, external_host="127.0.0.1:9092", data="u-1", format="slin16"),
     "POST", "/ari/channels/externalMedia", "/ari/channels/externalMedia",
     [("app", APP), ("external_host", "127.0.0.1:9092"), ("data", "u-1"), ("format", "slin16"),
      ("encapsulation", "audiosocket"), ("transport", "tcp")],
     None, {"id": "media-1", "name": "AudioSocket/127.0.0.1:9092-1"}),
    ("play", lambda c: c.play("chan-1", "sound:hello-world"), "POST", "/ari/channels/{channelId}/play",
     "/ari/channels/chan-1/play", [("media", "sound:hello-world")], None, {"id": "pb-auto", "state": "queued"}),
    ("play_with_id", lambda c: c.play("chan-1", "sound:hello-world", playback_id="pb-1"), "POST",
     "/ari/channels/{channelId}/play/{playbackId}", "/ari/channels/chan-1/play/pb-1",
     [("media", "sound:hello-world")], None, {"id": "pb-1", "state": "queued"}),
    ("stop_playback", lambda c: c.stop_playback("pb-1"), "DELETE", "/ari/playbacks/{playbackId}",
     "/ari/playbacks/pb-1", [], None, True),
    ("get_variable", lambda c: c.get_variable("chan-1", "CALLERID(num)"), "GET", "/ari/channels/{channelId}/variable",
     "/ari/channels/chan-1/variable", [("variable", "CALLERID(num)")], None, "42"),
    ("set_variable", lambda c: c.set_variable("chan-1", "VOICELINE_STATE", "talking"), "POST",
     "/ari/channels/{channelId}/variable", "/ari/channels/chan-1/variable",
     [("variable", "VOICELINE_STATE"), ("value", "talking")], None, None),
    ("continue_in_dialplan", lambda c: c.continue_in_dialplan("chan-1"), "POST",
     "/ari/channels/{channelId}/continue", "/ari/channels/chan-1/continue", [], None, True),
    ("continue_in_dialplan_to", lambda c: c.continue_in_dialplan("chan-1", "after-ai", "s", 3), "POST",
     "/ari/channels/{channelId}/continue", "/ari/channels/chan-1/continue",
     [("context", "after-ai"), ("extension", "s"), ("priority", "3")], None, True),
    ("list_channels", lambda c: c.list_channels(), "GET", "/ari/channels", "/ari/channels", [], None,
     [{"id": "chan-1", "name": "PJSIP/alice-1", "state": "Up"}]),
    ("list_bridges", lambda c: c.list_bridges(), "GET", "/ari/bridges", "/ari/bridges", [], None,
     [{"id": "br-7", "bridge_type": "mixing", "channels": ["chan-1", "media-1"]}]),
]


@pytest.mark.parametrize(
    ("call", "method", "route", "path", "query", "body", "expected"),
    [case[1:] for case in REST_CASES],
    ids=[case[0] for case in REST_CASES],
)
async def test_rest_method_sends_the_swagger_request(
    client: AriClient, fake_ari: FakeAri, call: RestCall, method: str, route: str, path: str,
    query: list[tuple[str, str]], body: Any, expected: Any,
) -> None:
    result = await call(client)

    assert result == expected
    [request] = fake_ari.rest_requests()
    assert (request.method, request.route, request.path) == (method, route, path)
    assert sorted(request.query) == sorted(query)
    assert request.body == body
    assert request.authorization == _basic_header(USERNAME, PASSWORD)


def test_rest_cases_cover_every_registered_endpoint() -> None:
    covered = {(case[2], case[3].removeprefix("/ari")) for case in REST_CASES}
    assert covered == set(AriClient.REST_ENDPOINTS)


@pytest.mark.parametrize(
    ("call", "route", "gone_result"),
    [
        (lambda c: c.hangup("gone"), ("DELETE", "/ari/channels/{channelId}"), False),
        (lambda c: c.destroy_bridge("gone"), ("DELETE", "/ari/bridges/{bridgeId}"), False),
        (lambda c: c.stop_playback("finished"), ("DELETE", "/ari/playbacks/{playbackId}"), False),
        (lambda c: c.get_variable("chan-1", "UNSET_VAR"), ("GET", "/ari/channels/{channelId}/variable"), None),
        (lambda c: c.continue_in_dialplan("gone"), ("POST", "/ari/channels/{channelId}/continue"), False),
    ],
    ids=["hangup", "destroy_bridge", "stop_playback", "get_variable", "continue_in_dialplan"],
)
async def test_not_found_means_already_gone(
    client: AriClient, fake_ari: FakeAri, call: RestCall, route: tuple[str, str], gone_result: Any
) -> None:
    fake_ari.responses[route] = (404, {"message": "Not found"})
    assert await call(client) is gone_result


async def test_continue_for_a_channel_not_in_stasis_raises(client: AriClient, fake_ari: FakeAri) -> None:
    fake_ari.responses[("POST", "/ari/channels/{channelId}/continue")] = (
        409, {"message": "Channel not in Stasis application"}
    )
    with pytest.raises(AriError) as caught:
        await client.continue_in_dialplan("chan-1")
    assert caught.value.status == 409 and "not in Stasis" in caught.value.body


@pytest.mark.parametrize("priority", [0, -1, True, "2"])
async def test_continue_refuses_a_priority_that_is_not_a_positive_integer(
    client: AriClient, fake_ari: FakeAri, priority: Any
) -> None:
    with pytest.raises(ValueError, match="priority"):
        await client.continue_in_dialplan("chan-1", "after-ai", "s", priority)
    assert fake_ari.rest_requests() == []


@pytest.mark.parametrize(
    ("call", "route"),
    [
        (lambda c: c.list_channels(), ("GET", "/ari/channels")),
        (lambda c: c.list_bridges(), ("GET", "/ari/bridges")),
    ],
    ids=["list_channels", "list_bridges"],
)
@pytest.mark.parametrize("body", [{"id": "chan-1"}, ["chan-1"], "null"], ids=["object", "list-of-strings", "null"])
async def test_listing_that_is_not_an_array_of_objects_raises(
    client: AriClient, fake_ari: FakeAri, call: RestCall, route: tuple[str, str], body: Any
) -> None:
    fake_ari.responses[route] = (200, body)
    with pytest.raises(AriError, match="array of objects"):
        await call(client)


async def test_unexpected_status_raises_with_asterisk_text(client: AriClient, fake_ari: FakeAri) -> None:
    fake_ari.responses[("POST", "/ari/channels/{channelId}/answer")] = (500, "Allocation failed: out of cheese")

    with pytest.raises(AriError) as caught:
        await client.answer("chan-1")

    error = caught.value
    assert (error.status, error.method, error.path) == (500, "POST", "/channels/chan-1/answer")
    assert "out of cheese" in error.body
    assert "out of cheese" in str(error) and "500" in str(error)


async def test_not_found_is_an_error_where_not_expected(client: AriClient, fake_ari: FakeAri) -> None:
    fake_ari.responses[("POST", "/ari/channels/{channelId}/answer")] = (404, {"message": "Channel not found"})
    with pytest.raises(AriError) as caught:
        await client.answer("gone")
    assert caught.value.status == 404 and "Channel not found" in caught.value.body


async def test_rejected_credentials_raise_401(fake_ari: FakeAri) -> None:
    ari = AriClient(fake_ari.base_url, USERNAME, "wrong-password", APP)
    await ari.open()
    try:
        with pytest.raises(AriError) as caught:
            await ari.asterisk_info()
    finally:
        await ari.close()
    assert caught.value.status == 401


async def test_unreachable_asterisk_raises_status_zero() -> None:
    ari = make_client(f"http://127.0.0.1:{unused_port()}/ari")
    await ari.open()
    try:
        with pytest.raises(AriError) as caught:
            await ari.hangup("chan-1")
    finally:
        await ari.close()
    assert caught.value.status == 0
    assert "cannot reach Asterisk" in str(caught.value)


async def test_silent_asterisk_raises_status_zero_after_timeout(fake_ari: FakeAri) -> None:
    fake_ari.stalled_routes.add(("GET", "/ari/asterisk/info"))
    ari = make_client(fake_ari.base_url, request_timeout_s=0.2)
    await ari.open()
    try:
        with pytest.raises(AriError) as caught:
            await ari.asterisk_info()
    finally:
        await ari.close()
    assert caught.value.status == 0
    assert "no response within 0.2s" in str(caught.value)


async def test_rest_call_on_unopened_client_raises(fake_ari: FakeAri) -> None:
    ari = make_client(fake_ari.base_url)
    with pytest.raises(AriError) as caught:
        await ari.answer("chan-1")
    assert caught.value.status == 0 and "not open" in str(caught.value)


async def test_base_url_with_trailing_slash_works(fake_ari: FakeAri) -> None:
    ari = make_client(fake_ari.base_url + "/")
    await ari.open()
    try:
        assert await ari.hangup("chan-1") is True
    finally:
        await ari.close()
    assert fake_ari.rest_requests()[0].path == "/ari/channels/chan-1"


@pytest.mark.parametrize(
    ("base_url", "complaint"),
    [
        ("http://127.0.0.1:8088", "/ari"),
        ("http://user:pw@127.0.0.1:8088/ari", "credentials"),
        ("http://127.0.0.1:8088/ari?api_key=user:pw", "query"),
        ("127.0.0.1:8088/ari", "http"),
    ],
)
def test_bad_base_url_is_rejected(base_url: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        AriClient(base_url, USERNAME, PASSWORD, APP)


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
