"""The operator console's pages as plain functions from data to HTML text.

No I/O here: the handlers in ``telemetry/console.py`` fetch the data (health
snapshot, history rows) and hand it to these functions. Everything that comes
from a call (caller id, transcript, provider messages, even call ids) is
untrusted input and goes through ``html.escape`` (text and attribute values) or
``urllib.parse.quote`` (path segments) before it reaches the page.

The pages use no inline script or style, so the console can send a strict
Content-Security-Policy (``script-src 'self'; style-src 'self'``): the stylesheet
and the live page's small polling script are served as ``/console/static/...``.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any
from urllib.parse import quote, urlencode

from voiceline.telemetry.report import flatten_for_display

__all__ = [
    "CONSOLE_CSS",
    "LIVE_JS",
    "HistoryFilter",
    "live_rows",
    "render_call",
    "render_history",
    "render_live",
    "render_message",
]

PREFIX = "/console"
# Where console.py serves CONSOLE_CSS and LIVE_JS; the pages link to them.
STYLESHEET_PATH = f"{PREFIX}/static/console.css"
LIVE_SCRIPT_PATH = f"{PREFIX}/static/live.js"


@dataclass(frozen=True)
class HistoryFilter:
    """The history page's search: caller id substring, UTC day, exact outcome."""

    caller: str = ""
    day: date | None = None
    outcome: str = ""

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> HistoryFilter:
        """Read the search form's fields; a malformed one is a ValueError naming it."""
        caller = query.get("caller", "").strip()
        outcome = query.get("outcome", "").strip()
        day_text = query.get("date", "").strip()
        if len(caller) > 128:
            raise ValueError("caller: at most 128 characters")
        if len(outcome) > 64:
            raise ValueError("outcome: at most 64 characters")
        day = None
        if day_text:
            try:
                day = date.fromisoformat(day_text)
            except ValueError:
                raise ValueError(f"date: expected YYYY-MM-DD, got {day_text!r}") from None
        return cls(caller=caller, day=day, outcome=outcome)

    def query_items(self) -> dict[str, str]:
        items = {"caller": self.caller, "date": self.day.isoformat() if self.day else "", "outcome": self.outcome}
        return {k: v for k, v in items.items() if v}


# ---- live calls -------------------------------------------------------------------------


def live_rows(health: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The live page's rows from the engine's ``/health`` snapshot (missing parts are None)."""
    rows = []
    for call in health.get("calls") or []:
        streaming = call.get("streaming") or {}
        conversation = call.get("conversation") or {}
        rows.append({
            "call_id": call.get("call_id"),
            "caller_id": call.get("caller_id"),
            "provider": call.get("provider"),
            "state": call.get("state"),
            "stream_state": streaming.get("state"),
            "depth_frames": streaming.get("depth_frames"),
            "barge_ins": conversation.get("barge_ins"),
        })
    return rows


# Column key, header. The live script (LIVE_JS) renders the same columns.
_LIVE_COLUMNS = (
    ("call_id", "Call"),
    ("caller_id", "Caller"),
    ("provider", "Provider"),
    ("state", "State"),
    ("stream_state", "Stream"),
    ("depth_frames", "Buffer (frames)"),
    ("barge_ins", "Barge-ins"),
)


def render_live(rows: Sequence[Mapping[str, Any]], *, generated_at: str, summary: str) -> str:
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title in _LIVE_COLUMNS)
    body = "\n".join(
        f'<tr data-call-id="{_attr(row.get("call_id"))}">'
        + "".join(f"<td>{_cell(row.get(key))}</td>" for key, _ in _LIVE_COLUMNS)
        + "</tr>"
        for row in rows
    )
    columns = _attr(json.dumps([key for key, _ in _LIVE_COLUMNS]))
    hidden = " hidden" if rows else ""
    content = f"""<p class="status"><span id="live-summary">{html.escape(summary)}</span>
 · updated <time id="live-updated">{html.escape(generated_at)}</time></p>
<table id="live-calls" class="grid" data-columns="{columns}" data-source="{PREFIX}/api/live">
<thead><tr>{head}</tr></thead>
<tbody>
{body}
</tbody>
</table>
<p id="live-empty" class="empty"{hidden}>No live calls.</p>"""
    # Without JavaScript the page reloads itself every second instead of polling.
    extra_head = ('<noscript><meta http-equiv="refresh" content="1"></noscript>\n'
                  f'<script src="{LIVE_SCRIPT_PATH}" defer></script>')
    return _page("Live calls", "live", content, extra_head=extra_head)


# ---- history ----------------------------------------------------------------------------


def render_history(
    rows: Sequence[Mapping[str, Any]],
    *,
    search: HistoryFilter,
    outcomes: Sequence[str],
    page: int,
    has_more: bool,
    error: str | None = None,
    raw_query: Mapping[str, str] | None = None,
) -> str:
    raw = raw_query or {}
    caller_value = raw.get("caller", search.caller)
    date_value = raw.get("date", search.day.isoformat() if search.day else "")
    options = ['<option value="">any</option>'] + [
        f'<option value="{_attr(o)}"{" selected" if o == search.outcome else ""}>{html.escape(o)}</option>'
        for o in outcomes
    ]
    if search.outcome and search.outcome not in outcomes:
        options.append(f'<option value="{_attr(search.outcome)}" selected>{html.escape(search.outcome)}</option>')
    form = f"""<form class="search" method="get" action="{PREFIX}/calls">
<label>Caller <input type="search" name="caller" value="{_attr(caller_value)}" maxlength="128"></label>
<label>Date (UTC) <input type="date" name="date" value="{_attr(date_value)}"></label>
<label>Outcome <select name="outcome">{"".join(options)}</select></label>
<button type="submit">Search</button> <a href="{PREFIX}/calls">clear</a>
</form>"""
    if error:
        return _page("Call history", "history", form + f'\n<p class="error">{html.escape(error)}</p>')
    body = "\n".join(
        "<tr>"
        f'<td><a href="{_call_href(row.get("call_id"))}">{_cell(row.get("call_id"))}</a></td>'
        f"<td class=\"time\">{_cell(_short_time(row.get('started_at')))}</td>"
        f"<td>{_cell(row.get('caller_id'))}</td>"
        f"<td>{_cell(row.get('provider'))}</td>"
        f"<td class=\"num\">{_cell(_seconds(row.get('duration_s')))}</td>"
        f"<td>{_cell(row.get('end_reason'))}</td>"
        f"<td class=\"hint-cell\">{_cell(_one_line(row.get('tuning_hint'), 90))}</td>"
        "</tr>"
        for row in rows
    )
    table = f"""<table id="history" class="grid">
<thead><tr><th>Call</th><th>Started (UTC)</th><th>Caller</th><th>Provider</th><th>Duration</th>
<th>Outcome</th><th>Tuning hint</th></tr></thead>
<tbody>
{body}
</tbody>
</table>""" if rows else '<p class="empty">No calls match.</p>'
    links = []
    if page > 1:
        links.append(f'<a rel="prev" href="{_history_href(search, page - 1)}">newer</a>')
    if has_more:
        links.append(f'<a rel="next" href="{_history_href(search, page + 1)}">older</a>')
    pager = f'<p class="pager">page {page} {" ".join(links)}</p>'
    return _page("Call history", "history", f"{form}\n{table}\n{pager}")


# ---- one call ---------------------------------------------------------------------------

_SUMMARY_FIELDS = (
    ("started_at", "Started (UTC)"),
    ("ended_at", "Ended (UTC)"),
    ("duration_s", "Duration"),
    ("caller_id", "Caller"),
    ("provider", "Provider"),
    ("mode", "Mode"),
    ("end_reason", "Outcome"),
)


def render_call(record: Mapping[str, Any], *, timeline_svg: str, recordings: Sequence[tuple[str, str]] = ()) -> str:
    """The call page. ``timeline_svg`` is trusted markup from ``report.render_svg``
    (it escapes its own text); ``recordings`` are (leg label, URL) pairs."""
    call_id = str(record.get("call_id") or "?")
    summary_rows = []
    for key, title in _SUMMARY_FIELDS:
        value = record.get(key)
        if key in ("started_at", "ended_at"):
            value = _short_time(value)
        elif key == "duration_s":
            value = _seconds(value)
        summary_rows.append(f"<tr><th>{html.escape(title)}</th><td>{_cell(value)}</td></tr>")
    metrics = record.get("metrics") or {}
    streaming = metrics.get("streaming") if isinstance(metrics, Mapping) else None
    other = {k: v for k, v in metrics.items() if k != "streaming"} if isinstance(metrics, Mapping) else {}
    hint = record.get("tuning_hint") or "none recorded"
    parts = [
        f'<table class="summary">{"".join(summary_rows)}</table>',
        f'<p class="hint"><strong>Tuning hint:</strong> {html.escape(str(hint))}</p>',
        f'<h2>Timeline</h2>\n<figure class="timeline">{timeline_svg}</figure>',
    ]
    if recordings:
        players = "\n".join(
            f'<figure class="leg"><figcaption>{html.escape(label)}</figcaption>'
            f'<audio controls preload="none" src="{_attr(url)}"></audio></figure>'
            for label, url in recordings
        )
        parts.append(f"<h2>Recording</h2>\n{players}")
    parts.append("<h2>Streaming stats</h2>\n" + _kv_table(streaming or {}, "streaming-stats"))
    if other:
        parts.append("<h2>Call metrics</h2>\n" + _kv_table(other, "call-metrics"))
    parts.append("<h2>Transcript</h2>\n" + _transcript(record.get("transcript")))
    parts.append(f'<p><a href="{PREFIX}/api/calls/{quote(call_id, safe="")}">this call as JSON</a></p>')
    return _page(f"Call {call_id}", "history", "\n".join(parts))


def render_message(title: str, message: str, *, section: str = "") -> str:
    """A plain page for errors (not found, history disabled, unauthorized)."""
    return _page(title, section, f'<p class="error">{html.escape(message)}</p>')


def _kv_table(values: Mapping[str, Any], css_id: str) -> str:
    rows = flatten_for_display(values)
    if not rows:
        return '<p class="empty">none recorded</p>'
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f'<table id="{css_id}" class="kv">{body}</table>'


def _transcript(transcript: Any) -> str:
    if not isinstance(transcript, list) or not transcript:
        return '<p class="empty">no transcript recorded</p>'
    items = []
    for entry in transcript:
        if isinstance(entry, Mapping):
            role = str(entry.get("role") or entry.get("speaker") or "?")
            text = str(entry.get("text") or entry.get("content") or "")
        else:
            role, text = "?", str(entry)
        items.append(f'<li class="role-{_attr(_css_word(role))}"><b>{html.escape(role)}</b> {html.escape(text)}</li>')
    return '<ol class="transcript">' + "".join(items) + "</ol>"


# ---- page frame and small formatters ------------------------------------------------------


def _page(title: str, section: str, content: str, *, extra_head: str = "") -> str:
    current = ' aria-current="page"'
    nav = "".join(
        f'<a href="{PREFIX}/{path}"{current if section == key else ""}>{label}</a>'
        for key, path, label in (("live", "live", "Live"), ("history", "calls", "History"))
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} · voiceline</title>
<link rel="stylesheet" href="{STYLESHEET_PATH}">
{extra_head}
</head>
<body>
<header><span class="brand">voiceline</span><nav>{nav}</nav></header>
<main>
<h1>{html.escape(title)}</h1>
{content}
</main>
</body>
</html>
"""


def _attr(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _cell(value: Any) -> str:
    return "–" if value is None or value == "" else html.escape(str(value))


def _css_word(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum() or ch == "-")[:20] or "other"


def _call_href(call_id: Any) -> str:
    return _attr(f"{PREFIX}/calls/{quote(str(call_id or ''), safe='')}")


def _history_href(search: HistoryFilter, page: int) -> str:
    items = search.query_items()
    if page > 1:
        items["page"] = str(page)
    return _attr(f"{PREFIX}/calls" + (f"?{urlencode(items)}" if items else ""))


def _short_time(value: Any) -> str | None:
    if isinstance(value, str) and value:
        return value.replace("T", " ")[:19]
    return None


def _seconds(value: Any) -> str | None:
    return f"{float(value):.1f} s" if isinstance(value, (int, float)) else None


def _one_line(value: Any, limit: int) -> str | None:
    if not value:
        return None
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---- static assets -------------------------------------------------------------------------

CONSOLE_CSS = """\
body { font-family: system-ui, sans-serif; margin: 0; color: #212121; background: #fafafa; }
header { background: #263238; color: #eceff1; padding: 10px 24px; display: flex; gap: 24px; align-items: center; }
header .brand { font-weight: 700; letter-spacing: 0.04em; }
header nav a { color: #cfd8dc; margin-right: 16px; text-decoration: none; }
header nav a[aria-current="page"] { color: #fff; border-bottom: 2px solid #4fc3f7; }
main { padding: 12px 24px 32px; }
h1 { font-size: 22px; word-break: break-all; }
h2 { font-size: 17px; margin-top: 28px; }
table.grid, table.kv, table.summary { border-collapse: collapse; background: #fff; }
table.grid th, table.grid td, table.kv th, table.kv td, table.summary th, table.summary td {
  text-align: left; padding: 4px 12px; border-bottom: 1px solid #e4e4e4; font-size: 13px; }
table.grid thead th { background: #eceff1; }
table.kv th, table.summary th { font-family: monospace; font-weight: 600; }
td.num { text-align: right; white-space: nowrap; }
td.time { white-space: nowrap; }
td.hint-cell { color: #555; max-width: 40em; }
.status { color: #555; font-size: 13px; }
.empty { color: #777; font-style: italic; }
.error { color: #b71c1c; background: #ffebee; padding: 8px 12px; border-left: 4px solid #c62828; }
.hint { background: #fff4e5; padding: 8px 12px; border-left: 4px solid #ff7f0e; }
form.search { display: flex; gap: 16px; align-items: end; flex-wrap: wrap; margin-bottom: 16px; font-size: 13px; }
form.search label { display: flex; flex-direction: column; gap: 2px; }
figure.timeline { margin: 0; }
figure.timeline svg { max-width: 100%; height: auto; border: 1px solid #e0e0e0; }
ol.transcript { background: #fff; padding: 8px 8px 8px 36px; font-size: 14px; }
ol.transcript li { margin: 3px 0; }
ol.transcript li.role-agent b, ol.transcript li.role-assistant b { color: #00796b; }
ol.transcript li.role-user b, ol.transcript li.role-caller b { color: #3949ab; }
.pager a { margin-left: 12px; }
"""

# Polls the live JSON every second and redraws the table with textContent only
# (never innerHTML: caller ids are untrusted). Stops re-polling on 401 and says why.
LIVE_JS = """\
"use strict";
(function () {
  const table = document.getElementById("live-calls");
  if (!table) { return; }
  const columns = JSON.parse(table.dataset.columns);
  const body = table.tBodies[0];
  const empty = document.getElementById("live-empty");
  const summary = document.getElementById("live-summary");
  const updated = document.getElementById("live-updated");
  function text(value) { return value === null || value === undefined || value === "" ? "\\u2013" : String(value); }
  function draw(data) {
    const rows = data.calls.map(function (call) {
      const tr = document.createElement("tr");
      tr.dataset.callId = call.call_id;
      columns.forEach(function (key) {
        const td = document.createElement("td");
        td.textContent = text(call[key]);
        tr.appendChild(td);
      });
      return tr;
    });
    body.replaceChildren.apply(body, rows);
    empty.hidden = rows.length > 0;
    summary.textContent = data.summary;
    updated.textContent = data.generated_at;
    table.dataset.polls = String(Number(table.dataset.polls || "0") + 1);
  }
  function poll() {
    fetch(table.dataset.source, { credentials: "same-origin", cache: "no-store" })
      .then(function (resp) {
        if (resp.status === 401) { throw new Error("unauthorized: open the console with ?token=... again"); }
        if (!resp.ok) { throw new Error("HTTP " + resp.status); }
        return resp.json();
      })
      .then(function (data) { draw(data); setTimeout(poll, 1000); })
      .catch(function (err) {
        summary.textContent = "live updates stopped: " + err.message;
        if (!/unauthorized/.test(err.message)) { setTimeout(poll, 5000); }
      });
  }
  setTimeout(poll, 1000);
})();
"""
