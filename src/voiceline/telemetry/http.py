"""The engine's operator HTTP endpoint: liveness, readiness, health and metrics.

* ``GET /live``    200 ``ok`` whenever the event loop answers (never needs a token:
  a process supervisor has none).
* ``GET /ready``   200 or 503 with the JSON checks from ``ready()``.
* ``GET /health``  200 with the JSON from ``health()`` plus ``status`` ("ok" when
  ready, otherwise "not_ready"). ``health`` may be a coroutine function: the
  supervisor of engine worker processes asks each worker first.
* ``GET /metrics`` Prometheus text exposition (format 0.0.4, which every
  Prometheus version scrapes) of ``metrics.registry``.
* ``GET /console/...`` the operator console (``telemetry/console.py``, docs/console.md).

With ``http.bearer_token`` set, every endpoint except ``/live`` (and the console's
stylesheet) needs
``Authorization: Bearer <token>`` (compared in constant time; the token is never
logged). Console paths also take the console's session cookie, which a browser
gets by opening a console URL once with ``?token=<token>``. Unknown paths are 404, methods other than GET 405. Binds
``http.host`` (127.0.0.1 by default): exposing it wider is an explicit choice.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from voiceline.config import HttpSettings
from voiceline.telemetry.console import (
    CONSOLE_STYLESHEET,
    Console,
    ConsoleAuth,
    HealthSource,
    is_console_path,
    resolved,
)
from voiceline.telemetry.history import CallHistory
from voiceline.telemetry.metrics import AggregateMetrics, Metrics
from voiceline.telemetry.recording import RecordingWriter

__all__ = ["PROMETHEUS_CONTENT_TYPE", "TelemetryServer"]

log = structlog.get_logger("voiceline.http")

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# The console stylesheet carries no data; open, so the console's 401 page is styled too.
_UNAUTHENTICATED_PATHS = frozenset({"/live", CONSOLE_STYLESHEET})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class TelemetryServer:
    def __init__(
        self,
        settings: HttpSettings,
        *,
        metrics: Metrics | AggregateMetrics,
        health: HealthSource,
        ready: Callable[[], tuple[bool, dict[str, Any]]],
        history: CallHistory | None = None,
        recordings: RecordingWriter | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._health = health
        self._ready = ready
        self._console = Console(health=health, history=history,
                                recordings_dir=recordings.directory if recordings is not None else None)
        token = settings.bearer_token.get_secret_value()
        self._expected_auth = f"Bearer {token}".encode() if token else None
        self._console_auth = ConsoleAuth(token) if token else None
        self._runner: web.AppRunner | None = None
        self._bound_port: int | None = None

    @property
    def bound_port(self) -> int | None:
        """The port actually bound (useful with port 0); None when not serving."""
        return self._bound_port

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth_middleware])
        app.router.add_get("/live", self._live, allow_head=False)
        app.router.add_get("/ready", self._ready_handler, allow_head=False)
        app.router.add_get("/health", self._health_handler, allow_head=False)
        app.router.add_get("/metrics", self._metrics_handler, allow_head=False)
        self._console.add_routes(app)
        return app

    async def start(self) -> None:
        """Serve until ``stop()``. Does nothing when ``http.enabled`` is false."""
        if not self._settings.enabled:
            log.info("http endpoint disabled")
            return
        if self._runner is not None:
            raise RuntimeError("telemetry server already started")
        # access_log=None: a scrape every few seconds is not worth a log line.
        runner = web.AppRunner(self.build_app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self._settings.host, self._settings.port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        self._bound_port = runner.addresses[0][1]
        log.info("http endpoint listening", host=self._settings.host, port=self._bound_port,
                 auth="bearer" if self._expected_auth else "none")

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        self._bound_port = None
        if runner is not None:
            await runner.cleanup()

    # ---- middleware and handlers

    @web.middleware
    async def _auth_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self._expected_auth is None or request.path in _UNAUTHENTICATED_PATHS:
            return await handler(request)
        given = request.headers.get("Authorization", "").encode()
        if hmac.compare_digest(given, self._expected_auth):
            return await handler(request)
        console = self._console_auth is not None and is_console_path(request.path)
        if console and self._console_auth.has_session(request):
            return await handler(request)
        login = self._console_auth.login(request) if console else None
        if login is not None:
            return login
        # request.path carries no query string, so a wrong ?token= is not logged either.
        log.warning("http request rejected: missing or wrong bearer token",
                    path=request.path, remote=request.remote)
        if console:
            return ConsoleAuth.refusal(request)
        return web.json_response(
            {"error": "unauthorized"}, status=401, headers={"WWW-Authenticate": 'Bearer realm="voiceline"'}
        )

    async def _live(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _ready_handler(self, _request: web.Request) -> web.Response:
        try:
            is_ready, checks = self._ready()
        except Exception as exc:
            # A failing check means "not ready", which is exactly what /ready reports.
            log.exception("readiness check raised")
            return _json({"ready": False, "error": f"{type(exc).__name__}: {exc}"}, 503)
        return _json({"ready": bool(is_ready), "checks": checks}, 200 if is_ready else 503)

    async def _health_handler(self, _request: web.Request) -> web.Response:
        try:
            body = dict(await resolved(self._health()))
            is_ready, _checks = self._ready()
        except Exception as exc:
            log.exception("health report raised")
            return _json({"status": "error", "error": f"{type(exc).__name__}: {exc}"}, 500)
        body["status"] = "ok" if is_ready else "not_ready"
        return _json(body, 200)

    async def _metrics_handler(self, _request: web.Request) -> web.Response:
        return web.Response(body=self._metrics.render(), headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})


def _json(body: dict[str, Any], status: int) -> web.Response:
    # default=str: health data may carry datetimes or enums; show them, don't fail.
    return web.Response(text=json.dumps(body, default=str), status=status, content_type="application/json")
