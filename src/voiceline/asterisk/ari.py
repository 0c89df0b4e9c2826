"""Asterisk REST Interface (ARI) client: REST calls plus the Stasis event websocket.

``base_url`` must be the ARI root including its ``/ari`` path component, for example
``http://127.0.0.1:8088/ari`` (a trailing slash is accepted). Every REST path below and the
events websocket (``ws://host:port/ari/events``) are derived from it.

Credentials travel only in the ``Authorization: Basic`` header -- for REST calls and for the
websocket upgrade alike. They are never put in a URL (ARI's ``?api_key=`` form would leak them
into proxy and Asterisk access logs).

Every REST call the client can make is declared once as an :class:`AriEndpoint` (method, the
swagger path template and the parameter names it sends). The request code refuses parameters
that are not declared there, so ``AriClient.REST_ENDPOINTS`` / ``REST_ENDPOINT_PARAMS`` are an
exact description of what goes on the wire and can be checked against Asterisk's swagger files
(``tests/unit/test_ari_swagger.py``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import re
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar
from urllib.parse import quote

import aiohttp
import structlog
from yarl import URL

log = structlog.get_logger("voiceline.ari")

EventHandler = Callable[[dict[str, Any]], Awaitable[None]]
ConnectionChangeHandler = Callable[[bool], Awaitable[None]]

_T = TypeVar("_T")

# Events after which Asterisk sends nothing more for that channel, so its worker may retire
# soon instead of waiting out the general idle timeout.
CHANNEL_TERMINAL_EVENTS = frozenset({"StasisEnd", "ChannelDestroyed"})

# Ordering key for events that concern no channel (bridge events, ApplicationReplaced, ...).
# None cannot collide with a channel id, whereas a string such as "global" could.
GLOBAL_ORDERING_KEY: str | None = None


class AriError(Exception):
    """An ARI request failed.

    ``status`` is the HTTP status Asterisk answered with, or 0 when no HTTP answer was
    obtained (connection refused, timeout, client not open). ``body`` is Asterisk's response
    text (usually JSON like ``{"message": "Channel not found"}``) or the transport error.
    """

    def __init__(self, status: int, method: str, path: str, body: str, message: str | None = None):
        self.status = status
        self.method = method
        self.path = path
        self.body = body
        if message is None:
            message = f"ARI {method} {path} failed with HTTP {status}: {body[:500]}"
        super().__init__(message)


@dataclass(frozen=True)
class AriEndpoint:
    """One ARI operation as the client uses it, named exactly as in ARI's swagger files."""

    method: str
    path: str  # swagger template, e.g. "/channels/{channelId}/play/{playbackId}"
    query_always: frozenset[str] = frozenset()  # query parameters sent on every call
    query_optional: frozenset[str] = frozenset()  # query parameters sent only when given
    body: frozenset[str] = frozenset()  # top-level keys of the JSON body, when one is sent

    @property
    def path_params(self) -> tuple[str, ...]:
        return tuple(re.findall(r"\{(\w+)\}", self.path))

    @property
    def query(self) -> frozenset[str]:
        return self.query_always | self.query_optional

    def render_path(self, path_params: Mapping[str, str]) -> str:
        if set(path_params) != set(self.path_params):
            raise ValueError(f"{self.path} needs path parameters {self.path_params}, got {sorted(path_params)}")
        path = self.path
        for name, value in path_params.items():
            if not value:
                raise ValueError(f"{self.path}: path parameter {name} must not be empty")
            # Quote everything (including "/") so an id can never change which resource is addressed.
            path = path.replace("{" + name + "}", quote(str(value), safe=""))
        return path

    def check_request(self, query: Mapping[str, str], body: Mapping[str, Any] | None) -> None:
        """Guard against drift between the declared parameters and what the code sends."""
        undeclared = set(query) - self.query
        missing = self.query_always - set(query)
        undeclared_body = set(body or ()) - self.body
        if undeclared or missing or undeclared_body:
            raise ValueError(
                f"{self.method} {self.path}: request does not match its declaration "
                f"(undeclared query {sorted(undeclared)}, missing query {sorted(missing)}, "
                f"undeclared body {sorted(undeclared_body)})"
            )


_ASTERISK_INFO = AriEndpoint("GET", "/asterisk/info")
_CHANNEL_ANSWER = AriEndpoint("POST", "/channels/{channelId}/answer")
_CHANNEL_HANGUP = AriEndpoint("DELETE", "/channels/{channelId}", query_always=frozenset({"reason"}))
_BRIDGE_CREATE = AriEndpoint(
    "POST", "/bridges", query_always=frozenset({"type"}), query_optional=frozenset({"bridgeId", "name"})
)
_BRIDGE_ADD_CHANNEL = AriEndpoint("POST", "/bridges/{bridgeId}/addChannel", query_always=frozenset({"channel"}))
_BRIDGE_DESTROY = AriEndpoint("DELETE", "/bridges/{bridgeId}")
_CHANNEL_EXTERNAL_MEDIA = AriEndpoint(
    "POST",
    "/channels/externalMedia",
    query_always=frozenset({"app", "external_host", "data", "format", "encapsulation", "transport"}),
    query_optional=frozenset({"channelId"}),
    body=frozenset({"variables"}),
)
_CHANNEL_PLAY = AriEndpoint("POST", "/channels/{channelId}/play", query_always=frozenset({"media"}))
_CHANNEL_PLAY_WITH_ID = AriEndpoint(
    "POST", "/channels/{channelId}/play/{playbackId}", query_always=frozenset({"media"})
)
_PLAYBACK_STOP = AriEndpoint("DELETE", "/playbacks/{playbackId}")
_CHANNEL_VARIABLE_GET = AriEndpoint("GET", "/channels/{channelId}/variable", query_always=frozenset({"variable"}))
_CHANNEL_VARIABLE_SET = AriEndpoint(
    "POST", "/channels/{channelId}/variable", query_always=frozenset({"variable", "value"})
)

_REST_ENDPOINTS: tuple[AriEndpoint, ...] = (
    _ASTERISK_INFO,
    _CHANNEL_ANSWER,
    _CHANNEL_HANGUP,
    _BRIDGE_CREATE,
    _BRIDGE_ADD_CHANNEL,
    _BRIDGE_DESTROY,
    _CHANNEL_EXTERNAL_MEDIA,
    _CHANNEL_PLAY,
    _CHANNEL_PLAY_WITH_ID,
    _PLAYBACK_STOP,
    _CHANNEL_VARIABLE_GET,
    _CHANNEL_VARIABLE_SET,
)

# The websocket upgrade is a GET on /events (swagger: "upgrade": "websocket").
EVENTS_ENDPOINT = AriEndpoint("GET", "/events", query_always=frozenset({"app", "subscribeAll"}))


def event_ordering_key(event: Mapping[str, Any]) -> str | None:
    """The channel id whose other events this event must stay ordered with.

    Channel events carry ``channel``; ``Dial`` carries the dialled channel as ``peer``;
    playback and recording events name their target as ``target_uri`` ("channel:<id>" or
    "bridge:<id>"). Anything else is ordered on a shared global key.
    """
    for field_name in ("channel", "peer"):
        channel = event.get(field_name)
        if isinstance(channel, dict) and isinstance(channel.get("id"), str) and channel["id"]:
            return channel["id"]
    for field_name in ("playback", "recording"):
        media_operation = event.get(field_name)
        if isinstance(media_operation, dict):
            target_uri = media_operation.get("target_uri")
            if isinstance(target_uri, str) and target_uri.startswith("channel:") and len(target_uri) > 8:
                return target_uri[len("channel:") :]
    return GLOBAL_ORDERING_KEY


class _ChannelEventDispatcher:
    """Delivers events in order per channel and concurrently across channels.

    One queue plus one worker task per ordering key. A worker retires once its queue has been
    empty for ``linger_s`` after the channel ended (StasisEnd/ChannelDestroyed) or for
    ``idle_s`` otherwise; an event arriving later simply starts a new worker, so retiring never
    loses or reorders events.
    """

    def __init__(self, handler: EventHandler, *, idle_s: float, linger_s: float):
        self.handler = handler
        self._idle_s = idle_s
        self._linger_s = linger_s
        self._queues: dict[str | None, asyncio.Queue[dict[str, Any]]] = {}
        self._workers: dict[str | None, asyncio.Task[None]] = {}
        self._cancelling = False

    @property
    def worker_count(self) -> int:
        return len(self._workers)

    @property
    def cancelled(self) -> bool:
        return self._cancelling

    def submit(self, event: dict[str, Any]) -> None:
        key = event_ordering_key(event)
        queue = self._queues.get(key)
        if queue is None:
            queue = asyncio.Queue()
            self._queues[key] = queue
            self._workers[key] = asyncio.create_task(self._work(key, queue), name=f"ari-events:{key or 'global'}")
        queue.put_nowait(event)

    async def _work(self, key: str | None, queue: asyncio.Queue[dict[str, Any]]) -> None:
        channel_ended = False
        try:
            while True:
                try:
                    async with asyncio.timeout(self._linger_s if channel_ended else self._idle_s):
                        event = await queue.get()
                except TimeoutError:
                    # No await between this check and the deregistration in `finally`, so submit()
                    # cannot slip an event into a queue whose worker is leaving.
                    if queue.empty():
                        return
                    continue
                if key is not GLOBAL_ORDERING_KEY and event.get("type") in CHANNEL_TERMINAL_EVENTS:
                    channel_ended = True
                await self._deliver(key, event)
                if self._cancelling:
                    # Only reachable by the worker whose handler called close(): it was spared
                    # cancellation so close() could finish, and must not linger afterwards.
                    return
        finally:
            if self._workers.get(key) is asyncio.current_task():
                del self._workers[key]
                del self._queues[key]

    async def _deliver(self, key: str | None, event: dict[str, Any]) -> None:
        try:
            await self.handler(event)
        except asyncio.CancelledError:
            # Shutting down: let the cancellation end the worker.
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            # The handler leaked a CancelledError from something it awaited; that is a handler
            # failure like any other and must not kill this channel's worker.
            log.error("ari.event_handler_cancelled", event_type=event.get("type"), channel_id=key)
        except Exception:
            log.exception("ari.event_handler_failed", event_type=event.get("type"), channel_id=key)

    async def cancel_workers(self) -> None:
        self._cancelling = True
        current = asyncio.current_task()
        # A handler may itself be the one calling close(); it must not cancel itself.
        to_cancel = [task for task in self._workers.values() if task is not current]
        for task in to_cancel:
            task.cancel()
        if to_cancel:
            await asyncio.gather(*to_cancel, return_exceptions=True)


class AriClient:
    """ARI REST calls and the event stream for one Stasis application.

    Usage::

        client = AriClient("http://127.0.0.1:8088/ari", "user", "secret", "voiceline")
        await client.open()
        events = asyncio.create_task(client.run_events(on_event))
        ...
        await client.close()   # also ends run_events
    """

    REST_ENDPOINTS: ClassVar[list[tuple[str, str]]] = [(endpoint.method, endpoint.path) for endpoint in _REST_ENDPOINTS]
    # (method, path) -> {"path": ..., "query": ..., "query_always": ..., "body": ...} parameter names.
    REST_ENDPOINT_PARAMS: ClassVar[dict[tuple[str, str], dict[str, frozenset[str]]]] = {
        (endpoint.method, endpoint.path): {
            "path": frozenset(endpoint.path_params),
            "query": endpoint.query,
            "query_always": endpoint.query_always,
            "body": endpoint.body,
        }
        for endpoint in _REST_ENDPOINTS
    }
    EVENTS_ENDPOINT = EVENTS_ENDPOINT

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        app_name: str,
        *,
        request_timeout_s: float = 5.0,
        reconnect_initial_s: float = 0.5,
        reconnect_max_s: float = 10.0,
        ws_heartbeat_s: float = 10.0,
        event_worker_idle_s: float = 60.0,
        event_worker_linger_s: float = 2.0,
    ):
        parsed = URL(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"ARI base_url must be an http(s) URL such as http://127.0.0.1:8088/ari, got {base_url!r}")
        if parsed.user is not None or parsed.password is not None:
            raise ValueError("ARI base_url must not contain credentials; pass username/password instead")
        if parsed.query_string or parsed.fragment:
            raise ValueError(f"ARI base_url must not have a query or fragment: {base_url!r}")
        if not parsed.path.rstrip("/").endswith("/ari"):
            raise ValueError(
                f"ARI base_url must include the /ari path, e.g. http://127.0.0.1:8088/ari; got {base_url!r}"
            )
        if not app_name:
            raise ValueError("app_name must not be empty")
        if reconnect_initial_s <= 0 or reconnect_max_s < reconnect_initial_s:
            raise ValueError("need 0 < reconnect_initial_s <= reconnect_max_s")

        # Kept as already-encoded text so REST paths can be appended without re-quoting.
        self._base_url = str(parsed).rstrip("/")
        self._events_url = URL(self._base_url + EVENTS_ENDPOINT.path, encoded=True).with_scheme(
            "wss" if parsed.scheme == "https" else "ws"
        )
        self._authorization = _basic_authorization(username, password)
        self.app_name = app_name
        self._request_timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self._request_timeout_s = request_timeout_s
        self._reconnect_initial_s = reconnect_initial_s
        self._reconnect_max_s = reconnect_max_s
        self._ws_heartbeat_s = ws_heartbeat_s
        self._event_worker_idle_s = event_worker_idle_s
        self._event_worker_linger_s = event_worker_linger_s

        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._stop = asyncio.Event()
        self._connected = False
        self._connected_event = asyncio.Event()
        self._dispatcher: _ChannelEventDispatcher | None = None
        self._events_running = False
        self._events_stopped = asyncio.Event()
        self._events_stopped.set()
        self._events_task: asyncio.Task[Any] | None = None
        self._application_replaced = False
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        if self._session is not None:
            return
        self._stop.clear()
        self._closed = False
        self._application_replaced = False
        self._session = aiohttp.ClientSession(
            headers={"Authorization": self._authorization},
            timeout=self._request_timeout,
        )

    async def close(self) -> None:
        """Stop the event loop, cancel event workers and close the HTTP session. Idempotent."""
        self._closed = True
        self._stop.set()
        ws = self._ws
        if ws is not None and not ws.closed:
            await ws.close()
        if self._dispatcher is not None:
            await self._dispatcher.cancel_workers()
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        # When run_events runs in another task, wait for it to notice, so nothing of this
        # client is still running once close() returns.
        if self._events_task is not None and self._events_task is not asyncio.current_task():
            try:
                async with asyncio.timeout(self._request_timeout_s):
                    await self._events_stopped.wait()
            except TimeoutError:
                log.warning("ari.close_events_loop_still_running", timeout_s=self._request_timeout_s)

    @property
    def connected(self) -> bool:
        """True while the events websocket is up."""
        return self._connected

    @property
    def application_replaced(self) -> bool:
        """True once Asterisk reported that another client took over this Stasis app."""
        return self._application_replaced

    @property
    def event_worker_count(self) -> int:
        return self._dispatcher.worker_count if self._dispatcher is not None else 0

    async def wait_connected(self, timeout: float) -> bool:
        if self._connected:
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._connected_event.wait()
        except TimeoutError:
            return False
        return True

    # ------------------------------------------------------------------ REST

    async def asterisk_info(self) -> dict[str, Any]:
        return _expect_object(await self._call(_ASTERISK_INFO), _ASTERISK_INFO)

    async def answer(self, channel_id: str) -> None:
        await self._call(_CHANNEL_ANSWER, path_params={"channelId": channel_id})

    async def hangup(self, channel_id: str, reason: str = "normal") -> bool:
        """Hang up a channel. Returns False when it was already gone (404)."""
        found = await self._call(
            _CHANNEL_HANGUP, path_params={"channelId": channel_id}, query={"reason": reason}, not_found_ok=True
        )
        return found is not _NOT_FOUND

    async def create_bridge(
        self, bridge_type: str = "mixing", name: str | None = None, bridge_id: str | None = None
    ) -> dict[str, Any]:
        query = {"type": bridge_type}
        if bridge_id is not None:
            query["bridgeId"] = bridge_id
        if name is not None:
            query["name"] = name
        return _expect_object(await self._call(_BRIDGE_CREATE, query=query), _BRIDGE_CREATE)

    async def add_channel(self, bridge_id: str, channel_ids: list[str]) -> None:
        if not channel_ids:
            raise ValueError("add_channel needs at least one channel id")
        # ARI takes multi-valued query parameters as one comma-separated value.
        await self._call(
            _BRIDGE_ADD_CHANNEL, path_params={"bridgeId": bridge_id}, query={"channel": ",".join(channel_ids)}
        )

    async def destroy_bridge(self, bridge_id: str) -> bool:
        """Destroy a bridge. Returns False when it was already gone (404)."""
        found = await self._call(_BRIDGE_DESTROY, path_params={"bridgeId": bridge_id}, not_found_ok=True)
        return found is not _NOT_FOUND

    async def external_media(
        self,
        *,
        app: str,
        external_host: str,
        data: str,
        format: str = "slin",
        encapsulation: str = "audiosocket",
        transport: str = "tcp",
        channel_id: str | None = None,
        variables: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Create an external media channel. For AudioSocket, ``data`` is the session UUID that
        Asterisk sends in the AudioSocket ID frame."""
        query = {
            "app": app,
            "external_host": external_host,
            "data": data,
            "format": format,
            "encapsulation": encapsulation,
            "transport": transport,
        }
        if channel_id is not None:
            query["channelId"] = channel_id
        body = {"variables": dict(variables)} if variables else None
        return _expect_object(
            await self._call(_CHANNEL_EXTERNAL_MEDIA, query=query, body=body), _CHANNEL_EXTERNAL_MEDIA
        )

    async def play(self, channel_id: str, media: str, playback_id: str | None = None) -> dict[str, Any]:
        """Start playing ``media`` (e.g. "sound:hello-world") and return the Playback object."""
        if playback_id is None:
            endpoint, path_params = _CHANNEL_PLAY, {"channelId": channel_id}
        else:
            endpoint, path_params = _CHANNEL_PLAY_WITH_ID, {"channelId": channel_id, "playbackId": playback_id}
        return _expect_object(await self._call(endpoint, path_params=path_params, query={"media": media}), endpoint)

    async def stop_playback(self, playback_id: str) -> bool:
        """Stop a playback. Returns False when it had already finished (404), which is normal."""
        found = await self._call(_PLAYBACK_STOP, path_params={"playbackId": playback_id}, not_found_ok=True)
        return found is not _NOT_FOUND

    async def get_variable(self, channel_id: str, name: str) -> str | None:
        """Read a channel variable; None when unset.

        ARI answers 404 both for an unset variable and for an unknown channel, so a vanished
        channel also reads as None.
        """
        result = await self._call(
            _CHANNEL_VARIABLE_GET, path_params={"channelId": channel_id}, query={"variable": name}, not_found_ok=True
        )
        if result is _NOT_FOUND:
            return None
        value = _expect_object(result, _CHANNEL_VARIABLE_GET).get("value")
        if not isinstance(value, str):
            raise AriError(
                200, "GET", _CHANNEL_VARIABLE_GET.path, json.dumps(result), "ARI variable response has no string 'value'"
            )
        return value

    async def set_variable(self, channel_id: str, name: str, value: str) -> None:
        await self._call(
            _CHANNEL_VARIABLE_SET, path_params={"channelId": channel_id}, query={"variable": name, "value": value}
        )

    async def _call(
        self,
        endpoint: AriEndpoint,
        *,
        path_params: Mapping[str, str] | None = None,
        query: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
        not_found_ok: bool = False,
    ) -> Any:
        """Perform one REST call; returns the decoded JSON (None for an empty body), or
        ``_NOT_FOUND`` for a 404 when ``not_found_ok``."""
        query = dict(query or {})
        endpoint.check_request(query, body)
        path = endpoint.render_path(path_params or {})
        session = self._session
        if session is None or session.closed:
            raise AriError(0, endpoint.method, path, "", f"ARI {endpoint.method} {path}: client is not open")
        url = URL(self._base_url + path, encoded=True)
        try:
            async with session.request(
                endpoint.method, url, params=query or None, json=body, timeout=self._request_timeout
            ) as response:
                status = response.status
                text = await response.text()
        except TimeoutError as exc:
            raise AriError(
                0, endpoint.method, path, repr(exc),
                f"ARI {endpoint.method} {path}: no response within {self._request_timeout_s}s",
            ) from exc
        except aiohttp.ClientError as exc:
            raise AriError(
                0, endpoint.method, path, repr(exc),
                f"ARI {endpoint.method} {path}: cannot reach Asterisk at {self._base_url}: {exc}",
            ) from exc

        log.debug("ari.rest", method=endpoint.method, path=path, status=status)
        if status == 404 and not_found_ok:
            return _NOT_FOUND
        if not 200 <= status < 300:
            raise AriError(status, endpoint.method, path, text)
        if not text.strip():
            return None
        try:
            return json.loads(text)
        except ValueError as exc:
            raise AriError(
                status, endpoint.method, path, text, f"ARI {endpoint.method} {path}: response is not JSON: {exc}"
            ) from exc

    # ------------------------------------------------------------------ events

    async def run_events(
        self,
        on_event: EventHandler,
        *,
        on_connection_change: ConnectionChangeHandler | None = None,
    ) -> None:
        """Receive Stasis events until close(), reconnecting with backoff whenever the
        websocket drops. Never raises for network errors.

        Events for one channel reach ``on_event`` in order; different channels run
        concurrently. ``on_connection_change`` is awaited on every transition (initial state:
        disconnected).

        Returns early -- without reconnecting -- if Asterisk reports ``ApplicationReplaced``:
        another client now owns the app, and reconnecting would just steal it back and forth.
        """
        if self._events_running:
            raise RuntimeError("run_events is already running for this client")
        if self._closed:
            # close() won a race with the task that runs us; there is nothing to do.
            return
        if self._session is None:
            raise RuntimeError("AriClient.open() must be called before run_events()")
        if self._dispatcher is None or self._dispatcher.cancelled:
            self._dispatcher = _ChannelEventDispatcher(
                on_event, idle_s=self._event_worker_idle_s, linger_s=self._event_worker_linger_s
            )
        else:
            self._dispatcher.handler = on_event
        self._events_running = True
        self._events_stopped.clear()
        self._events_task = asyncio.current_task()
        try:
            await self._event_loop(self._dispatcher, on_connection_change)
        except asyncio.CancelledError:
            # The owner cancelled run_events instead of calling close(): stop the workers too.
            await self._dispatcher.cancel_workers()
            raise
        finally:
            self._connected = False
            self._connected_event.clear()
            self._events_running = False
            self._events_task = None
            self._events_stopped.set()

    async def _event_loop(
        self, dispatcher: _ChannelEventDispatcher, on_connection_change: ConnectionChangeHandler | None
    ) -> None:
        loop = asyncio.get_running_loop()
        failed_attempts = 0
        outage_started_at: float | None = None
        while not self._stop.is_set():
            if failed_attempts or outage_started_at is not None:
                # Wait before every reconnect (not only after failures) so a server that accepts
                # and immediately drops cannot make us spin.
                delay = self._reconnect_delay(max(failed_attempts, 1))
                await self._unless_stopped(asyncio.sleep(delay))
                if self._stop.is_set():
                    return

            ws, failure = await self._connect_events()
            if ws is None:
                if self._stop.is_set():
                    return
                failed_attempts += 1
                if outage_started_at is None:
                    outage_started_at = loop.time()
                    self._log_outage_start(failure, failed_attempts)
                else:
                    log.debug("ari.events.reconnect_failed", attempt=failed_attempts, reason=failure)
                continue

            if outage_started_at is not None:
                log.info(
                    "ari.events.reconnected",
                    attempts=failed_attempts + 1,
                    outage_s=round(loop.time() - outage_started_at, 1),
                )
            else:
                log.info("ari.events.connected", app=self.app_name, url=str(self._events_url))
            failed_attempts = 0
            outage_started_at = None

            self._ws = ws
            try:
                await self._set_connected(True, on_connection_change)
                end_reason = await self._read_events(ws, dispatcher)
            finally:
                self._ws = None
                if not ws.closed:
                    await ws.close()
            await self._set_connected(False, on_connection_change)

            if end_reason == _APPLICATION_REPLACED or self._stop.is_set():
                return
            outage_started_at = loop.time()
            log.warning("ari.events.disconnected", app=self.app_name, reason=end_reason)

    def _log_outage_start(self, failure: str, attempt: int) -> None:
        fields = {"app": self.app_name, "url": str(self._events_url), "attempt": attempt, "reason": failure,
                  "retry_max_s": self._reconnect_max_s}
        if failure in ("HTTP 401", "HTTP 403"):
            # Retrying cannot fix this on its own, but the operator may fix ari.conf meanwhile.
            log.error("ari.events.credentials_rejected", **fields)
        else:
            log.warning("ari.events.unavailable", **fields)

    def _reconnect_delay(self, failed_attempts: int) -> float:
        ceiling = min(self._reconnect_max_s, self._reconnect_initial_s * 2 ** min(failed_attempts - 1, 30))
        # "Equal jitter": keep at least half the ceiling, randomise the rest, so many clients
        # do not hit a restarted Asterisk in lockstep; never exceeds reconnect_max_s.
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    async def _connect_events(self) -> tuple[aiohttp.ClientWebSocketResponse | None, str]:
        session = self._session
        if session is None or session.closed:
            return None, "client closed"
        params = {"app": self.app_name, "subscribeAll": "false"}
        EVENTS_ENDPOINT.check_request(params, None)
        try:
            ws = await self._unless_stopped(
                session.ws_connect(
                    self._events_url,
                    params=params,
                    heartbeat=self._ws_heartbeat_s,
                    timeout=aiohttp.ClientWSTimeout(ws_close=self._request_timeout_s),
                )
            )
        except aiohttp.WSServerHandshakeError as exc:
            return None, f"HTTP {exc.status}"
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return None, f"{type(exc).__name__}: {exc}"
        if ws is None:
            return None, "client closed"
        if self._stop.is_set():
            # close() ran while the handshake was finishing and could not see this websocket.
            await ws.close()
            return None, "client closed"
        return ws, ""

    async def _read_events(self, ws: aiohttp.ClientWebSocketResponse, dispatcher: _ChannelEventDispatcher) -> str:
        """Feed messages to the dispatcher until the websocket ends; returns why it ended."""
        while True:
            try:
                message = await ws.receive()
            except (aiohttp.ClientError, OSError) as exc:
                return f"websocket failed: {type(exc).__name__}: {exc}"
            if message.type == aiohttp.WSMsgType.TEXT:
                if self._handle_event_text(message.data, dispatcher):
                    return _APPLICATION_REPLACED
            elif message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                return f"websocket closed (code {ws.close_code})"
            elif message.type == aiohttp.WSMsgType.ERROR:
                return f"websocket error: {ws.exception()!r}"
            else:
                log.warning("ari.events.unexpected_frame", frame_type=message.type.name)

    def _handle_event_text(self, text: str, dispatcher: _ChannelEventDispatcher) -> bool:
        """Dispatch one event; returns True if it says another client replaced this app."""
        try:
            event = json.loads(text)
        except ValueError as exc:
            log.warning("ari.events.bad_json", error=str(exc), sample=text[:200])
            return False
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            log.warning("ari.events.not_an_event", sample=text[:200])
            return False
        if self._stop.is_set():
            # close() has already cancelled the workers; a new one would outlive the client.
            log.debug("ari.event_dropped_after_close", event_type=event["type"])
            return False
        log.debug("ari.event", event_type=event["type"], channel_id=event_ordering_key(event))
        dispatcher.submit(event)
        if event["type"] == "ApplicationReplaced":
            self._application_replaced = True
            log.error(
                "ari.events.application_replaced",
                app=self.app_name,
                detail="another ARI client subscribed to this Stasis app; this client receives no more "
                "events for it and will not reconnect (check for a second voiceline instance using the same app)",
            )
            return True
        return False

    async def _set_connected(self, connected: bool, on_connection_change: ConnectionChangeHandler | None) -> None:
        if connected == self._connected:
            return
        self._connected = connected
        if connected:
            self._connected_event.set()
        else:
            self._connected_event.clear()
        if on_connection_change is None:
            return
        try:
            await on_connection_change(connected)
        except Exception:
            log.exception("ari.connection_callback_failed", connected=connected)

    async def _unless_stopped(self, awaitable: Coroutine[Any, Any, _T]) -> _T | None:
        """Await ``awaitable`` unless close() is called first; then cancel it and return None."""
        work = asyncio.ensure_future(awaitable)
        stop_waiter = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({work, stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_waiter.cancel()
            if not work.done():
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
        if work.cancelled():
            return None
        failure = work.exception()
        if failure is not None and self._stop.is_set():
            # close() raced the work and closed the session under it (aiohttp then raises
            # "Session is closed"); that outcome is the shutdown itself, not a fault.
            log.debug("ari.interrupted_by_close", error=repr(failure))
            return None
        return work.result()


class _NotFound:
    def __repr__(self) -> str:
        return "<ARI 404>"


_NOT_FOUND: Any = _NotFound()
_APPLICATION_REPLACED = "ApplicationReplaced"


def _basic_authorization(username: str, password: str) -> str:
    # Built by hand: aiohttp 3.14 deprecates BasicAuth/auth= in favour of a header anyway, and
    # sending the header ourselves guarantees it is used for the websocket upgrade too.
    if ":" in username:
        raise ValueError("ARI username must not contain ':' (RFC 7617 Basic auth)")
    credentials = f"{username}:{password}".encode()
    return "Basic " + base64.b64encode(credentials).decode("ascii")


def _expect_object(result: Any, endpoint: AriEndpoint) -> dict[str, Any]:
    if not isinstance(result, dict):
        raise AriError(
            200, endpoint.method, endpoint.path, json.dumps(result),
            f"ARI {endpoint.method} {endpoint.path}: expected a JSON object, got {type(result).__name__}",
        )
    return result
