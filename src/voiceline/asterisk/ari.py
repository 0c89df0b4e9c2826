"""Asterisk REST Interface (ARI) client: REST calls plus the Stasis event websocket.

``base_url`` must be the ARI root including its ``/ari`` path component, for example
``http://127.0.0.1:8088/ari`` (a trailing slash is accepted). Every REST path below and the
events websocket (``ws://host:port/ari/events``) are derived from it.

Credentials travel only in the ``Authorization: Basic`` header -- for REST calls and for the
websocket upgrade alike. They are never put in a URL (ARI's ``?api_key=`` form would leak them
into proxy and Asterisk access logs).

The client is split by job: ``ari_endpoints`` declares every REST operation exactly as in
ARI's swagger files (``AriClient.REST_ENDPOINTS`` / ``REST_ENDPOINT_PARAMS`` describe what goes
on the wire and are checked against Asterisk's swagger files in
``tests/unit/test_ari_swagger.py``), ``ari_rest`` makes the calls, ``ari_events`` orders event
delivery per channel, and this module owns the session and the events websocket.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ClassVar, TypeVar

import aiohttp
import structlog
from yarl import URL

from voiceline.asterisk import ari_endpoints
from voiceline.asterisk.ari_endpoints import EVENTS_ENDPOINT, AriEndpoint
from voiceline.asterisk.ari_events import (
    CHANNEL_TERMINAL_EVENTS,
    GLOBAL_ORDERING_KEY,
    ChannelEventDispatcher,
    EventHandler,
    event_ordering_key,
)
from voiceline.asterisk.ari_rest import AriError, AriRestCalls

__all__ = [
    "CHANNEL_TERMINAL_EVENTS",
    "EVENTS_ENDPOINT",
    "GLOBAL_ORDERING_KEY",
    "AriClient",
    "AriEndpoint",
    "AriError",
    "ConnectionChangeHandler",
    "EventHandler",
    "event_ordering_key",
]

log = structlog.get_logger("voiceline.ari")

ConnectionChangeHandler = Callable[[bool], Awaitable[None]]
_T = TypeVar("_T")


class AriClient(AriRestCalls):
    """ARI REST calls and the event stream for one Stasis application.

    Usage::

        client = AriClient("http://127.0.0.1:8088/ari", "user", "secret", "voiceline")
        await client.open()
        events = asyncio.create_task(client.run_events(on_event))
        ...
        await client.close()   # also ends run_events
    """

    REST_ENDPOINTS: ClassVar[list[tuple[str, str]]] = [(endpoint.method, endpoint.path) for endpoint in ari_endpoints.REST_ENDPOINTS]
    # (method, path) -> {"path": ..., "query": ..., "query_always": ..., "body": ...} parameter names.
    REST_ENDPOINT_PARAMS: ClassVar[dict[tuple[str, str], dict[str, frozenset[str]]]] = {
        (endpoint.method, endpoint.path): {
            "path": frozenset(endpoint.path_params),
            "query": endpoint.query,
            "query_always": endpoint.query_always,
            "body": endpoint.body,
        }
        for endpoint in ari_endpoints.REST_ENDPOINTS
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

        super().__init__(str(parsed).rstrip("/"), request_timeout_s)
        self._events_url = URL(self._base_url + EVENTS_ENDPOINT.path, encoded=True).with_scheme(
            "wss" if parsed.scheme == "https" else "ws"
        )
        self._authorization = _basic_authorization(username, password)
        self.app_name = app_name
        self._reconnect_initial_s = reconnect_initial_s
        self._reconnect_max_s = reconnect_max_s
        self._ws_heartbeat_s = ws_heartbeat_s
        self._event_worker_idle_s = event_worker_idle_s
        self._event_worker_linger_s = event_worker_linger_s

        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._stop = asyncio.Event()
        self._connected = False
        self._connected_event = asyncio.Event()
        self._dispatcher: ChannelEventDispatcher | None = None
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
            self._dispatcher = ChannelEventDispatcher(
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
        self, dispatcher: ChannelEventDispatcher, on_connection_change: ConnectionChangeHandler | None
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

    async def _read_events(self, ws: aiohttp.ClientWebSocketResponse, dispatcher: ChannelEventDispatcher) -> str:
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

    def _handle_event_text(self, text: str, dispatcher: ChannelEventDispatcher) -> bool:
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


_APPLICATION_REPLACED = "ApplicationReplaced"


def _basic_authorization(username: str, password: str) -> str:
    # Built by hand: aiohttp 3.14 deprecates BasicAuth/auth= in favour of a header anyway, and
    # sending the header ourselves guarantees it is used for the websocket upgrade too.
    if ":" in username:
        raise ValueError("ARI username must not contain ':' (RFC 7617 Basic auth)")
    credentials = f"{username}:{password}".encode()
    return "Basic " + base64.b64encode(credentials).decode("ascii")

