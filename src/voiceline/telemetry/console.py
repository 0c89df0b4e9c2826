"""The operator console: a few server-rendered pages on the engine's HTTP endpoint.

* ``GET /console/live``          live calls (provider, state, buffer depth, barge-ins);
  with engine worker processes, every worker's calls and how many workers are up;
  a small script polls ``/console/api/live`` every second, and without
  JavaScript the page reloads itself every second.
* ``GET /console/calls``         call history, searchable by caller, UTC date and outcome.
* ``GET /console/calls/{id}``    one call: timeline (the picture ``voiceline report``
  draws, as inline SVG), tuning hint, streaming stats, transcript.
* ``GET /console/calls/{id}/audio/{caller|agent}.wav`` the call's recorded legs
  (only with ``recording.enabled``; the call page plays them).
* ``GET /console/api/live``, ``/console/api/calls``, ``/console/api/calls/{id}``: the same data as JSON.

Off the hot path: nothing here runs unless a request comes in. The live data is
the engine's ``health()`` snapshot (a walk over the live calls, as ``/health``
does); database queries and timeline drawing run in a worker thread, never on
the event loop the 20 ms pacer shares.

Authentication (``http.bearer_token`` set) is enforced by the server's middleware
(``telemetry/http.py``); ``ConsoleAuth`` adds the browser-friendly way in: open any
console URL once with ``?token=<token>`` and the answer is a redirect to the same
URL without the token, setting an HttpOnly, SameSite=Strict session cookie scoped
to ``/console``. The cookie holds an HMAC of the token, not the token itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import json
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import structlog
from aiohttp import web
from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.exc import SQLAlchemyError

from voiceline.telemetry import console_pages as pages
from voiceline.telemetry.history import CallHistory, HistoryStore, calls_table
from voiceline.telemetry.recording import LEGS, recording_files
from voiceline.telemetry.report import render_svg

__all__ = ["CONSOLE_STYLESHEET", "COOKIE_NAME", "Console", "ConsoleAuth", "HealthSource", "is_console_path",
           "resolved", "search_calls"]

log = structlog.get_logger("voiceline.console")

PREFIX = pages.PREFIX
COOKIE_NAME = "voiceline_console"
CONSOLE_STYLESHEET = pages.STYLESHEET_PATH
PAGE_SIZE = 50
_COOKIE_CONTEXT = b"voiceline console session v1"
_TOKEN_QUERY = "token"
# No inline script or style anywhere in the console (see console_pages).
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "media-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_HISTORY_ERRORS = (SQLAlchemyError, OSError)

# The engine's health snapshot: a plain function in one process; a coroutine function in
# the supervisor of engine worker processes, which asks every worker for its calls.
HealthSource = Callable[[], Mapping[str, Any] | Awaitable[Mapping[str, Any]]]


async def resolved(value: Any) -> Any:
    """``value``, awaited first if it is awaitable."""
    return await value if inspect.isawaitable(value) else value


def is_console_path(path: str) -> bool:
    return path == "/" or path == PREFIX or path.startswith(PREFIX + "/")


class ConsoleAuth:
    """The console's cookie login on top of the bearer token (see the module docstring)."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("ConsoleAuth needs a non-empty token")
        self._token = token.encode()
        self._cookie_value = hmac.new(self._token, _COOKIE_CONTEXT, hashlib.sha256).hexdigest()

    def has_session(self, request: web.Request) -> bool:
        given = request.cookies.get(COOKIE_NAME, "")
        return hmac.compare_digest(given.encode(), self._cookie_value.encode())

    def login(self, request: web.Request) -> web.Response | None:
        """A redirect that sets the session cookie when the URL carries the right
        ``?token=``; None when it carries none or a wrong one."""
        given = request.query.get(_TOKEN_QUERY)
        if given is None or not hmac.compare_digest(given.encode(), self._token):
            return None
        rest = [(k, v) for k, v in request.query.items() if k != _TOKEN_QUERY]
        location = request.path + (f"?{urlencode(rest)}" if rest else "")
        response = web.Response(status=303, headers={"Location": location})
        # No Secure flag: the endpoint is plain HTTP on loopback by default (see docs/console.md).
        response.set_cookie(COOKIE_NAME, self._cookie_value, path=PREFIX, httponly=True, samesite="Strict")
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    @staticmethod
    def refusal(request: web.Request) -> web.Response:
        """401 for a console request without credentials: a page for people, JSON for scripts."""
        headers = {"WWW-Authenticate": 'Bearer realm="voiceline"', **_SECURITY_HEADERS}
        if request.path.startswith(f"{PREFIX}/api/"):
            return web.json_response({"error": "unauthorized"}, status=401, headers=headers)
        body = pages.render_message(
            "Unauthorized",
            "This console needs the engine's HTTP token (http.bearer_token). Open this address once "
            "with ?token=<token> appended; the browser then keeps a session cookie for /console.",
        )
        return web.Response(text=body, status=401, content_type="text/html", headers=headers)


class Console:
    """The console's routes. ``health`` is the engine's health snapshot function;
    ``history`` the call history (None when ``history.enabled`` is false);
    ``recordings_dir`` where recorded calls are (None when recording is off)."""

    def __init__(
        self,
        *,
        health: HealthSource,
        history: CallHistory | None,
        recordings_dir: str | Path | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._health = health
        self._history = history
        self._recordings_dir = recordings_dir
        self._now = now

    def add_routes(self, app: web.Application) -> None:
        add = app.router.add_get
        add("/", self._to_live, allow_head=False)
        add(PREFIX, self._to_live, allow_head=False)
        add(f"{PREFIX}/", self._to_live, allow_head=False)
        add(f"{PREFIX}/live", self._live_page, allow_head=False)
        add(f"{PREFIX}/calls", self._history_page, allow_head=False)
        add(f"{PREFIX}/calls/{{call_id}}", self._call_page, allow_head=False)
        add(f"{PREFIX}/calls/{{call_id}}/audio/{{leg}}.wav", self._call_audio, allow_head=False)
        add(f"{PREFIX}/api/live", self._live_json, allow_head=False)
        add(f"{PREFIX}/api/calls", self._history_json, allow_head=False)
        add(f"{PREFIX}/api/calls/{{call_id}}", self._call_json, allow_head=False)
        add(CONSOLE_STYLESHEET, self._css, allow_head=False)
        add(pages.LIVE_SCRIPT_PATH, self._js, allow_head=False)

    # ---- live

    async def _live_snapshot(self) -> dict[str, Any]:
        health = await resolved(self._health())
        rows = pages.live_rows(health)
        return {
            "generated_at": self._now().strftime("%H:%M:%S UTC"),
            "summary": _live_summary(health, len(rows)),
            "active_calls": len(rows),
            "calls": rows,
        }

    async def _to_live(self, _request: web.Request) -> web.Response:
        raise web.HTTPFound(f"{PREFIX}/live")

    async def _live_page(self, _request: web.Request) -> web.Response:
        snap = await self._live_snapshot()
        return _html(pages.render_live(snap["calls"], generated_at=snap["generated_at"], summary=snap["summary"]))

    async def _live_json(self, _request: web.Request) -> web.Response:
        return _json(await self._live_snapshot())

    # ---- history

    async def _history_page(self, request: web.Request) -> web.Response:
        query = dict(request.query)
        if self._history is None:
            return _html(_history_disabled(), 404)
        try:
            search, page = _read_search(query)
        except ValueError as exc:
            return _html(pages.render_history([], search=pages.HistoryFilter(), outcomes=[], page=1,
                                              has_more=False, error=str(exc), raw_query=query), 400)
        try:
            rows, has_more, outcomes = await asyncio.to_thread(self._search, search, page, True)
        except _HISTORY_ERRORS as exc:
            return _history_unavailable(exc)
        return _html(pages.render_history(rows, search=search, outcomes=outcomes, page=page, has_more=has_more))

    async def _history_json(self, request: web.Request) -> web.Response:
        if self._history is None:
            return _json({"error": "call history is disabled (history.enabled: false)"}, 404)
        try:
            search, page = _read_search(dict(request.query))
        except ValueError as exc:
            return _json({"error": str(exc)}, 400)
        try:
            rows, has_more, _ = await asyncio.to_thread(self._search, search, page, False)
        except _HISTORY_ERRORS as exc:
            return _history_unavailable(exc, as_json=True)
        return _json({"calls": rows, "page": page, "has_more": has_more})

    def _search(self, search: pages.HistoryFilter, page: int,
                with_outcomes: bool) -> tuple[list[dict[str, Any]], bool, list[str]]:
        """Worker thread: one page of matching calls, and the outcomes to offer."""
        assert self._history is not None
        store = self._history.store
        rows = search_calls(store, search, limit=PAGE_SIZE + 1, offset=(page - 1) * PAGE_SIZE)
        outcomes = known_outcomes(store) if with_outcomes else []
        return rows[:PAGE_SIZE], len(rows) > PAGE_SIZE, outcomes

    # ---- one call

    async def _call_page(self, request: web.Request) -> web.Response:
        if self._history is None:
            return _html(_history_disabled(), 404)
        call_id = request.match_info["call_id"]
        try:
            found = await asyncio.to_thread(self._load_call, call_id, True)
        except _HISTORY_ERRORS as exc:
            return _history_unavailable(exc)
        if found is None:
            return _html(pages.render_message(
                "Call not found",
                f"No call {call_id!r} in the history (a call is written there when it ends).",
                section="history"), 404)
        record, svg, legs = found
        href = f"{PREFIX}/calls/{quote(call_id, safe='')}/audio"
        players = [(f"{leg} leg", f"{href}/{leg}.wav") for leg in LEGS if leg in legs]
        return _html(pages.render_call(record, timeline_svg=svg, recordings=players))

    async def _call_json(self, request: web.Request) -> web.Response:
        if self._history is None:
            return _json({"error": "call history is disabled (history.enabled: false)"}, 404)
        call_id = request.match_info["call_id"]
        try:
            found = await asyncio.to_thread(self._load_call, call_id, False)
        except _HISTORY_ERRORS as exc:
            return _history_unavailable(exc, as_json=True)
        if found is None:
            return _json({"error": f"no call {call_id!r} in the history"}, 404)
        return _json(found[0])

    def _load_call(self, call_id: str, draw: bool) -> tuple[dict[str, Any], str, dict[str, Path]] | None:
        """Worker thread: the record and, for the page, its timeline SVG and recorded legs."""
        assert self._history is not None
        record = self._history.store.get_call(call_id)
        if record is None:
            return None
        if not draw:
            return record, "", {}
        legs = recording_files(self._recordings_dir, call_id) if self._recordings_dir is not None else {}
        return record, render_svg(record), legs

    async def _call_audio(self, request: web.Request) -> web.StreamResponse:
        call_id, leg = request.match_info["call_id"], request.match_info["leg"]
        if self._recordings_dir is None:
            return _html(pages.render_message("Recording", "Call recording is off (recording.enabled: false).",
                                              section="history"), 404)
        path = (await asyncio.to_thread(recording_files, self._recordings_dir, call_id)).get(leg)
        if path is None:
            return _html(pages.render_message("Recording", f"No {leg!r} recording for call {call_id!r}.",
                                              section="history"), 404)
        # FileResponse streams from a thread pool and answers Range requests (seeking in the player).
        return web.FileResponse(path, headers={**_SECURITY_HEADERS, "Content-Type": "audio/wav"})

    # ---- static

    async def _css(self, _request: web.Request) -> web.Response:
        return _static(pages.CONSOLE_CSS, "text/css")

    async def _js(self, _request: web.Request) -> web.Response:
        return _static(pages.LIVE_JS, "text/javascript")


# ---- history queries (blocking: call them from a worker thread) ---------------------------


def search_calls(store: HistoryStore, search: pages.HistoryFilter, *, limit: int,
                 offset: int = 0) -> list[dict[str, Any]]:
    """Calls matching ``search``, newest first, without transcript and timeline.
    Caller: case-insensitive substring; date: the UTC day the call started; outcome:
    the end reason, or its first word (end reasons may carry details, such as a channel id)."""
    c = calls_table.c
    where: list[ColumnElement[bool]] = []
    if search.caller:
        where.append(func.lower(c.caller_id).contains(search.caller.lower(), autoescape=True))
    if search.day is not None:
        start = datetime(search.day.year, search.day.month, search.day.day, tzinfo=UTC)
        where += [c.started_at >= start, c.started_at < start + timedelta(days=1)]
    if search.outcome:
        where.append(or_(c.end_reason == search.outcome,
                         c.end_reason.startswith(search.outcome + " ", autoescape=True)))
    return store.list_calls(limit, offset, where=where)


def known_outcomes(store: HistoryStore, *, recent: int = 2000, limit: int = 50) -> list[str]:
    """The outcomes (first words of the end reasons) of the ``recent`` latest calls,
    for the search form; bounded, so a large history does not make the page slow."""
    store.ensure_schema()
    c = calls_table.c
    query = select(c.end_reason).where(c.end_reason.is_not(None)).order_by(c.started_at.desc()).limit(recent)
    with store.engine().connect() as conn:
        words = {reason.split(" ", 1)[0] for (reason,) in conn.execute(query) if reason and reason.strip()}
    return sorted(words)[:limit]


# ---- helpers -----------------------------------------------------------------------------------


def _read_search(query: Mapping[str, str]) -> tuple[pages.HistoryFilter, int]:
    search = pages.HistoryFilter.from_query(query)
    page_text = query.get("page", "1").strip() or "1"
    if not page_text.isdigit() or not 1 <= int(page_text) <= 100_000:
        raise ValueError(f"page: expected a whole number from 1, got {page_text!r}")
    return search, int(page_text)


def _live_summary(health: Mapping[str, Any], count: int) -> str:
    parts = [f"{count} live call{'' if count == 1 else 's'}"]
    if health.get("mode"):
        parts.append(f"mode {health['mode']}")
    ari = health.get("ari")
    if isinstance(ari, Mapping):
        parts.append("ARI connected" if ari.get("connected") else "ARI disconnected")
    workers = health.get("workers")
    if isinstance(workers, list):
        parts.append(f"{health.get('workers_up', '?')} of {len(workers)} workers up")
    pacers = [w.get("pacer") for w in workers if isinstance(w, Mapping)] if isinstance(workers, list) else []
    lateness = [p["max_lateness_ms"] for p in [health.get("pacer"), *pacers]
                if isinstance(p, Mapping) and isinstance(p.get("max_lateness_ms"), (int, float))]
    if lateness:
        parts.append(f"pacer max lateness {max(lateness):.1f} ms")
    history = health.get("history")
    if isinstance(history, Mapping):
        state = "failing" if history.get("failing") else "ok"
        parts.append(f"history {history.get('backend', '?')} {state}, {history.get('pending', 0)} pending")
    return " · ".join(parts)


def _history_disabled() -> str:
    return pages.render_message("Call history", "Call history is disabled (history.enabled: false).",
                                section="history")


def _history_unavailable(exc: BaseException, *, as_json: bool = False) -> web.Response:
    # The engine's writer keeps buffering while the database is down; the console just says so.
    reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    log.warning("console: call history unavailable", error=reason)
    if as_json:
        return _json({"error": f"call history unavailable ({reason})"}, 503)
    return _html(pages.render_message("Call history", f"Call history unavailable: {reason}",
                                      section="history"), 503)


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", headers=_SECURITY_HEADERS)


def _json(body: Mapping[str, Any], status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(body, default=str), status=status, content_type="application/json",
                        headers=_SECURITY_HEADERS)


def _static(text: str, content_type: str) -> web.Response:
    headers = {**_SECURITY_HEADERS, "Cache-Control": "private, max-age=300"}
    return web.Response(text=text, content_type=content_type, headers=headers)
