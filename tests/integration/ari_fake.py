"""A fake ARI server (aiohttp.web on loopback) that checks auth and records requests, and the
helpers the AriClient tests share (test_ari_client*.py; their fixtures are in conftest.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import WSCloseCode, web

from voiceline.asterisk.ari import AriClient


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
    ("POST", "/ari/channels/{channelId}/dtmf"): (204, None),
    ("POST", "/ari/channels/{channelId}/redirect"): (204, None),
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


class EventsRun:
    def __init__(self, client: AriClient, recorder: EventRecorder, task: asyncio.Task[None]):
        self.client = client
        self.recorder = recorder
        self.task = task
