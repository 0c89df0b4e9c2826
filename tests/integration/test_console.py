"""The operator console over real loopback HTTP, with a real SQLite call history."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog.testing

from voiceline.config import HttpSettings
from voiceline.telemetry.console import COOKIE_NAME
from voiceline.telemetry.history import CallHistory, record_to_row
from voiceline.telemetry.http import TelemetryServer
from voiceline.telemetry.metrics import Metrics
from voiceline.telemetry.recording import CallRecording, RecordingWriter, write_recording

TOKEN = "console-s3cret"
HOSTILE = '<script>alert("x")</script>'


def live_call(call_id: str, **overrides: Any) -> dict[str, Any]:
    call = {
        "call_id": call_id,
        "provider": "echo",
        "state": "active",
        "codec": {"wire": "slin16@8000"},
        "streaming": {"state": "streaming", "depth_frames": 7, "underflows": 0},
        "conversation": {"barge_ins": 2, "audio_capture_enabled": True},
    }
    call.update(overrides)
    return call


class Engine:
    """Stands in for App.health()/readiness(): the tests set the live calls."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.health_calls = 0
        self.history: CallHistory | None = None

    def health(self) -> dict[str, Any]:
        self.health_calls += 1
        return {"mode": "ari", "ari": {"connected": True}, "active_calls": len(self.calls), "calls": list(self.calls),
                "pacer": {"max_lateness_ms": 1.25}, "history": {"backend": "sqlite", "pending": 0, "failing": False}}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        return True, {}


def record(call_id: str, started: str, *, caller: str = "+15550001", outcome: str = "caller-hangup",
           **extra: Any) -> dict[str, Any]:
    start = datetime.fromisoformat(started).replace(tzinfo=UTC)
    rec = {
        "call_id": call_id,
        "started_at": start,
        "ended_at": start.timestamp() + 8.5,
        "duration_s": 8.5,
        "mode": "ari",
        "provider": "echo",
        "end_reason": outcome,
        "caller_id": caller,
        "tuning_hint": "streaming looks healthy: no change suggested",
        "metrics": {"streaming": {"underflows": 1, "max_depth_frames": 12, "restarts": 0},
                    "call": {"frames_in": 400}},
        "transcript": [{"role": "user", "text": "hello there"}, {"role": "agent", "text": "hi, how can I help"}],
        "timeline": [[0, "turn_start", 1], [120, "agent_on", 1], [200, "depth", 6], [400, "depth", 9],
                     [600, "caller_energy", -30.0], [2500, "barge_in", 900], [2600, "agent_off", 1]],
    }
    rec.update(extra)
    return rec


Serve = Callable[..., Any]


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Serve]:
    servers: list[TelemetryServer] = []

    async def start(token: str = "", records: list[dict[str, Any]] = (), history: bool = True,
                    recordings: RecordingWriter | None = None) -> tuple[str, Engine]:
        engine = Engine()
        store = None
        if history:
            store = CallHistory(f"sqlite:///{tmp_path}/calls-{len(servers)}.db")
            store.store.write([record_to_row(r) for r in records])
            engine.history = store
        server = TelemetryServer(HttpSettings(host="127.0.0.1", port=0, bearer_token=token), metrics=Metrics(),
                                 health=engine.health, ready=engine.readiness, history=store, recordings=recordings)
        await server.start()
        servers.append(server)
        return f"http://127.0.0.1:{server.bound_port}", engine

    yield start
    for server in servers:
        await server.stop()


async def get(url: str, *, token: str | None = None, cookies: dict[str, str] | None = None,
              redirects: bool = True, binary: bool = False) -> tuple[int, Any, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    jar = aiohttp.CookieJar(unsafe=True)  # unsafe: keep cookies for an IP host
    async with aiohttp.ClientSession(cookie_jar=jar, cookies=cookies) as session, \
            session.get(url, headers=headers, allow_redirects=redirects) as resp:
        return resp.status, resp.headers, await (resp.read() if binary else resp.text())


def table_rows(page: str, table_id: str) -> list[str]:
    body = re.search(rf'<table id="{table_id}".*?<tbody>(.*?)</tbody>', page, re.S)
    assert body, f"no table {table_id} in the page"
    return re.findall(r"<tr.*?</tr>", body.group(1), re.S)


# ---- live calls --------------------------------------------------------------------------------


async def test_live_page_and_json_show_the_engines_live_calls(serve):
    base, engine = await serve()
    engine.calls = [live_call("call-a"), live_call("call-b", provider="deepgram", state="ending",
                                                    conversation={"barge_ins": 0})]
    status, headers, page = await get(f"{base}/console/live")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    rows = table_rows(page, "live-calls")
    assert len(rows) == 2
    cells = re.findall(r"<td>(.*?)</td>", rows[0])
    assert cells == ["call-a", "–", "echo", "active", "streaming", "7", "2"]
    assert "deepgram" in rows[1] and "ending" in rows[1]
    assert "2 live calls" in page and "ARI connected" in page
    assert '<p id="live-empty" class="empty" hidden>' in page  # the script shows it when calls are gone

    status, _, body = await get(f"{base}/console/api/live")
    data = json.loads(body)
    assert status == 200 and data["active_calls"] == 2
    assert data["calls"][0] == {"call_id": "call-a", "caller_id": None, "provider": "echo", "state": "active",
                                "stream_state": "streaming", "depth_frames": 7, "barge_ins": 2}


async def test_live_page_drops_a_call_once_the_engine_no_longer_has_it(serve):
    base, engine = await serve()
    engine.calls = [live_call("call-a")]
    assert "call-a" in (await get(f"{base}/console/live"))[2]
    engine.calls = []
    page = (await get(f"{base}/console/live"))[2]
    assert "call-a" not in page and table_rows(page, "live-calls") == []
    assert '<p id="live-empty" class="empty">No live calls.</p>' in page
    assert json.loads((await get(f"{base}/console/api/live"))[2])["calls"] == []


async def test_untrusted_values_are_escaped_everywhere(serve):
    base, engine = await serve(records=[record(f"id-{HOSTILE}", "2026-12-01T10:00:00", caller=HOSTILE,
                                               transcript=[{"role": HOSTILE, "text": HOSTILE}])])
    engine.calls = [live_call(HOSTILE, caller_id=HOSTILE)]
    live = (await get(f"{base}/console/live"))[2]
    history = (await get(f"{base}/console/calls"))[2]
    link = re.search(r'<a href="(/console/calls/[^"]+)">', history).group(1)
    call = (await get(f"{base}{link.replace('&amp;', '&')}"))[2]
    for page in (live, history, call):
        assert HOSTILE not in page
        assert "&lt;script&gt;" in page
        assert re.findall(r"<script[^>]*>", page) in ([], ['<script src="/console/static/live.js" defer>'])


async def test_pages_forbid_inline_script_and_framing(serve):
    base, _ = await serve(records=[record("c1", "2026-12-01T10:00:00")])
    for path in ("/console/live", "/console/calls", "/console/calls/c1", "/console/api/live"):
        status, headers, _ = await get(f"{base}{path}")
        assert status == 200, path
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert headers["X-Content-Type-Options"] == "nosniff"
    status, headers, js = await get(f"{base}/console/static/live.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    assert "innerHTML" not in js and "textContent" in js
    status, headers, _ = await get(f"{base}/console/static/console.css")
    assert status == 200 and headers["Content-Type"].startswith("text/css")


async def test_console_root_redirects_to_the_live_page(serve):
    base, _ = await serve()
    for path in ("/", "/console", "/console/"):
        status, headers, _ = await get(f"{base}{path}", redirects=False)
        assert (status, headers["Location"]) == (302, "/console/live"), path


# ---- history ----------------------------------------------------------------------------------


HISTORY = [
    record("call-old", "2026-11-30T23:59:00", caller="+15550001", outcome="caller-hangup"),
    record("call-mid", "2026-12-01T00:00:00", caller="Alice <+15550002>", outcome="provider-error"),
    record("call-new", "2026-12-01T18:30:00", caller="+15550003", outcome="caller-hangup"),
    record("call-anon", "2026-12-02T09:00:00", caller=None, outcome="agent-hangup"),
]


def listed(page: str) -> list[str]:
    return [re.search(r'<a href="/console/calls/([^"]+)">', row).group(1) for row in table_rows(page, "history")]


async def test_history_lists_calls_newest_first_with_a_link_to_each(serve):
    base, _ = await serve(records=HISTORY)
    status, _, page = await get(f"{base}/console/calls")
    assert status == 200
    assert listed(page) == ["call-anon", "call-new", "call-mid", "call-old"]
    assert "2026-12-01 18:30:00" in page and "8.5 s" in page and "provider-error" in page
    options = re.findall(r'<option value="([^"]*)"', page)
    assert options == ["", "agent-hangup", "caller-hangup", "provider-error"]


@pytest.mark.parametrize(("query", "expected"), [
    ("caller=alice", ["call-mid"]),                      # case-insensitive substring of the caller id
    ("caller=5550", ["call-new", "call-mid", "call-old"]),
    ("caller=%25", []),                                  # a literal %, not a LIKE wildcard
    ("caller=_", []),
    ("date=2026-12-01", ["call-new", "call-mid"]),       # the UTC day, both edges
    ("date=2026-11-30", ["call-old"]),
    ("outcome=caller-hangup", ["call-new", "call-old"]),
    ("outcome=caller-hangup&date=2026-12-01", ["call-new"]),
    ("caller=+15550003&outcome=provider-error", []),
])
async def test_history_search(serve, query, expected):
    base, _ = await serve(records=HISTORY)
    status, _, page = await get(f"{base}/console/calls?{query.replace('+', '%2B')}")
    assert status == 200
    assert (listed(page) if expected else []) == expected
    if not expected:
        assert "No calls match." in page
    data = json.loads((await get(f"{base}/console/api/calls?{query.replace('+', '%2B')}"))[2])
    assert [c["call_id"] for c in data["calls"]] == expected


async def test_outcome_search_groups_end_reasons_by_their_first_word(serve):
    records = [*HISTORY,
               record("hup-1", "2026-12-03T10:00:00", outcome="ChannelHangupRequest on 1796399058.25"),
               record("hup-2", "2026-12-03T11:00:00", outcome="ChannelHangupRequest on 1796399060.31")]
    base, _ = await serve(records=records)
    page = (await get(f"{base}/console/calls"))[2]
    assert re.findall(r'<option value="([^"]*)"', page) == [
        "", "ChannelHangupRequest", "agent-hangup", "caller-hangup", "provider-error"]
    assert listed((await get(f"{base}/console/calls?outcome=ChannelHangupRequest"))[2]) == ["hup-2", "hup-1"]
    exact = "ChannelHangupRequest on 1796399058.25".replace(" ", "+")
    assert listed((await get(f"{base}/console/calls?outcome={exact}"))[2]) == ["hup-1"]
    assert "No calls match." in (await get(f"{base}/console/calls?outcome=ChannelHangup"))[2]


async def test_history_search_form_keeps_what_was_searched(serve):
    base, _ = await serve(records=HISTORY)
    page = (await get(f"{base}/console/calls?caller=alice&date=2026-12-01&outcome=provider-error"))[2]
    assert 'name="caller" value="alice"' in page and 'name="date" value="2026-12-01"' in page
    assert '<option value="provider-error" selected>' in page


@pytest.mark.parametrize(("query", "field"), [("date=yesterday", "date"), ("page=0", "page"), ("page=x", "page"),
                                              ("caller=" + "x" * 200, "caller")])
async def test_bad_search_input_is_400_naming_the_field(serve, query, field):
    base, _ = await serve(records=HISTORY)
    status, _, page = await get(f"{base}/console/calls?{query}")
    assert status == 400
    assert re.search(rf'<p class="error">{field}: ', page)
    status, _, body = await get(f"{base}/console/api/calls?{query}")
    assert status == 400 and json.loads(body)["error"].startswith(f"{field}: ")


async def test_history_pages_through_many_calls(serve):
    records = [record(f"call-{i:03d}", f"2026-12-01T10:{i // 60:02d}:{i % 60:02d}") for i in range(55)]
    base, _ = await serve(records=records)
    first = (await get(f"{base}/console/calls?outcome=caller-hangup"))[2]
    assert len(listed(first)) == 50 and listed(first)[0] == "call-054"
    older = re.search(r'<a rel="next" href="([^"]+)">older</a>', first).group(1).replace("&amp;", "&")
    assert older == "/console/calls?outcome=caller-hangup&page=2"
    second = (await get(f"{base}{older}"))[2]
    assert listed(second) == [f"call-{i:03d}" for i in range(4, -1, -1)]
    assert 'rel="next"' not in second and 'rel="prev"' in second


async def test_history_disabled_is_said_plainly(serve):
    base, _ = await serve(history=False)
    for path in ("/console/calls", "/console/calls/x"):
        status, _, page = await get(f"{base}{path}")
        assert status == 404 and "history.enabled: false" in page
    assert (await get(f"{base}/console/live"))[0] == 200


# ---- one call ---------------------------------------------------------------------------------


async def test_call_page_shows_timeline_hint_stats_and_transcript(serve):
    base, _ = await serve(records=HISTORY)
    status, _, page = await get(f"{base}/console/calls/call-mid")
    assert status == 200
    assert "<h1>Call call-mid</h1>" in page
    svg = re.search(r'<figure class="timeline">(<svg .*?</svg>)</figure>', page, re.S)
    assert svg, "no timeline SVG"
    assert svg.group(1).count("<polyline") > 3 and "barge-in" in svg.group(1)
    assert "streaming looks healthy" in page
    stats = dict(re.findall(r"<tr><th>([^<]+)</th><td>([^<]*)</td></tr>",
                            re.search(r'<table id="streaming-stats".*?</table>', page, re.S).group(0)))
    assert stats == {"underflows": "1", "max_depth_frames": "12", "restarts": "0"}
    transcript = re.search(r'<ol class="transcript">(.*?)</ol>', page, re.S).group(1)
    assert re.findall(r"<b>(\w+)</b> ([^<]+)</li>", transcript) == [("user", "hello there"),
                                                                    ("agent", "hi, how can I help")]
    assert "Alice &lt;+15550002&gt;" in page and "provider-error" in page

    data = json.loads((await get(f"{base}/console/api/calls/call-mid"))[2])
    assert data["call_id"] == "call-mid" and data["timeline"][0] == [0, "turn_start", 1]


async def test_unknown_call_is_404(serve):
    base, _ = await serve(records=HISTORY)
    status, _, page = await get(f"{base}/console/calls/no-such-call")
    assert status == 404 and "no-such-call" in page
    assert (await get(f"{base}/console/api/calls/no-such-call"))[0] == 404


async def test_call_ids_with_path_characters_round_trip(serve):
    odd = "a/b?c#d e"
    base, _ = await serve(records=[record(odd, "2026-12-01T10:00:00")])
    page = (await get(f"{base}/console/calls"))[2]
    (href,) = re.findall(r'<a href="(/console/calls/[^"]+)">', page)
    assert href == "/console/calls/a%2Fb%3Fc%23d%20e"
    status, _, call = await get(f"{base}{href}")
    assert status == 200 and "<h1>Call a/b?c#d e</h1>" in call


async def test_history_database_down_is_503_and_logged(serve, tmp_path):
    base, engine = await serve(records=HISTORY)
    engine.history.store.close()  # no pooled connection to the old file survives
    for db in tmp_path.glob("calls-*.db"):
        db.unlink()
        db.mkdir()  # an unopenable database: a directory where the file was
    with structlog.testing.capture_logs() as logs:
        status, _, page = await get(f"{base}/console/calls")
    assert status == 503 and "Call history unavailable" in page
    assert any(e["event"] == "console: call history unavailable" for e in logs)


# ---- token ------------------------------------------------------------------------------------


async def test_console_needs_the_token_when_one_is_set(serve):
    base, _ = await serve(token=TOKEN, records=HISTORY)
    for path in ("/console/live", "/console/calls", "/console/calls/call-mid", "/console/static/live.js", "/"):
        status, headers, page = await get(f"{base}{path}", redirects=False)
        assert status == 401, path
        assert headers["WWW-Authenticate"].startswith("Bearer")
        assert "call-mid" not in page
    status, _, body = await get(f"{base}/console/api/live")
    assert status == 401 and json.loads(body) == {"error": "unauthorized"}
    assert (await get(f"{base}/console/static/console.css"))[0] == 200  # no data in it; styles the 401 page
    assert (await get(f"{base}/console/live", token="wrong"))[0] == 401
    assert (await get(f"{base}/console/live", token=TOKEN))[0] == 200
    assert (await get(f"{base}/console/api/calls", token=TOKEN))[0] == 200


async def test_token_query_sets_a_strict_httponly_cookie_and_drops_the_token_from_the_url(serve):
    base, _ = await serve(token=TOKEN, records=HISTORY)
    status, headers, _ = await get(f"{base}/console/calls?caller=alice&token={TOKEN}", redirects=False)
    assert status == 303
    assert headers["Location"] == "/console/calls?caller=alice"
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console" in cookie
    value = re.match(rf"{COOKIE_NAME}=([^;]+);", cookie).group(1)
    assert TOKEN not in value

    # A browser follows the redirect with the cookie and stays in.
    status, _, page = await get(f"{base}/console/calls?caller=alice&token={TOKEN}")
    assert status == 200 and listed(page) == ["call-mid"]
    assert (await get(f"{base}/console/api/live", cookies={COOKIE_NAME: value}))[0] == 200
    # The console cookie is for the console only.
    assert (await get(f"{base}/metrics", cookies={COOKIE_NAME: value}))[0] == 401
    assert (await get(f"{base}/metrics?token={TOKEN}"))[0] == 401


async def test_wrong_token_query_or_foreign_cookie_is_refused(serve):
    base, _ = await serve(token=TOKEN)
    assert (await get(f"{base}/console/live?token=wrong", redirects=False))[0] == 401
    other_base, _ = await serve(token="another-token")
    headers = (await get(f"{other_base}/console/live?token=another-token", redirects=False))[1]
    foreign = re.match(rf"{COOKIE_NAME}=([^;]+);", headers["Set-Cookie"]).group(1)
    assert (await get(f"{base}/console/live", cookies={COOKIE_NAME: foreign}))[0] == 401
    assert (await get(f"{base}/console/live", cookies={COOKIE_NAME: ""}))[0] == 401


async def test_token_in_the_query_is_never_logged(serve):
    with structlog.testing.capture_logs() as logs:
        base, _ = await serve(token=TOKEN)
        await get(f"{base}/console/live?token={TOKEN}x")
        await get(f"{base}/console/live?token={TOKEN}")
    assert any(e["event"].startswith("http request rejected") for e in logs)
    assert TOKEN not in repr(logs)


async def test_without_a_token_the_console_is_open_and_a_token_query_is_ignored(serve):
    base, _ = await serve()
    assert (await get(f"{base}/console/live?token=anything", redirects=False))[0] == 200


async def test_live_page_reads_health_only_when_asked(serve):
    base, engine = await serve(records=HISTORY)
    await get(f"{base}/console/calls")
    await get(f"{base}/console/calls/call-mid")
    assert engine.health_calls == 0
    await get(f"{base}/console/api/live")
    assert engine.health_calls == 1


# ---- recordings -------------------------------------------------------------------------------


def recorded(directory: Path, call_id: str) -> bytes:
    recording = CallRecording(8000, max_seconds=10)
    recording.add_caller(b"\x01\x00" * 800)
    recording.add_agent(b"\x02\x00" * 400)
    write_recording(directory, call_id, recording)
    return b"\x01\x00" * 800


async def test_call_page_plays_both_recorded_legs(serve, tmp_path):
    writer = RecordingWriter(tmp_path / "rec", sample_rate=8000, max_seconds=60)
    caller_pcm = recorded(writer.directory, "call-mid")
    base, _ = await serve(token=TOKEN, records=HISTORY, recordings=writer)
    page = (await get(f"{base}/console/calls/call-mid", token=TOKEN))[2]
    sources = re.findall(r'<audio controls preload="none" src="([^"]+)">', page)
    assert sources == ["/console/calls/call-mid/audio/caller.wav", "/console/calls/call-mid/audio/agent.wav"]
    status, headers, wav = await get(f"{base}{sources[0]}", token=TOKEN, binary=True)
    assert status == 200 and headers["Content-Type"] == "audio/wav"
    assert wav[:4] == b"RIFF" and wav.endswith(caller_pcm)
    assert (await get(f"{base}{sources[0]}"))[0] == 401
    assert (await get(f"{base}/console/calls/call-new/audio/caller.wav", token=TOKEN))[0] == 404
    assert (await get(f"{base}/console/calls/call-mid/audio/other.wav", token=TOKEN))[0] == 404
    assert "<audio" not in (await get(f"{base}/console/calls/call-new", token=TOKEN))[2]


async def test_without_recording_there_is_no_player_and_no_audio(serve, tmp_path):
    recorded(tmp_path / "rec", "call-mid")  # files on disk, but recording is off
    base, _ = await serve(records=HISTORY)
    assert "<audio" not in (await get(f"{base}/console/calls/call-mid"))[2]
    status, _, page = await get(f"{base}/console/calls/call-mid/audio/caller.wav")
    assert status == 404 and "recording.enabled: false" in page
