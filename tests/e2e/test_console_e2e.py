"""The operator console in a real browser: headless Chromium (Debian package, installed
by scripts/setup.sh) against `voiceline serve` with a bearer token, during and after a
real lab call, with call recording on. Screenshots go to artifacts/console/."""

from __future__ import annotations

import array
import html
import io
import json
import re
import shutil
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import wave
from pathlib import Path

import labkit
import pytest
from conftest import REPO

HTTP = "http://127.0.0.1:9091"
TOKEN = "console-e2e-token"
ARTIFACTS = REPO / "artifacts" / "console"
CALL_S = 10.0


class Browser:
    """One fresh headless Chromium per page (no shared profile, so every visit goes
    through the ?token= login the way a first visit does)."""

    def __init__(self, work: Path) -> None:
        binary = shutil.which("chromium")
        if binary is None:
            pytest.fail("chromium is not installed: scripts/setup.sh installs the Debian package 'chromium'")
        self.binary = binary
        self.work = work
        self.visits = 0

    def _run(self, url: str, *extra: str, height: int) -> subprocess.CompletedProcess[str]:
        self.visits += 1
        args = [
            self.binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
            "--disable-extensions", f"--user-data-dir={self.work / f'profile-{self.visits}'}",
            f"--window-size=1280,{height}",
            # Virtual time: the page's scripts run this long (the live page polls every second).
            "--virtual-time-budget=2500", *extra, url,
        ]
        done = subprocess.run(args, capture_output=True, text=True, timeout=90)
        assert done.returncode == 0, f"chromium failed on {url}: {done.stderr[-2000:]}"
        return done

    def dom(self, url: str) -> str:
        return self._run(url, "--dump-dom", height=1000).stdout

    def screenshot(self, url: str, name: str, height: int = 1000) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / name
        path.unlink(missing_ok=True)
        self._run(url, f"--screenshot={path}", height=height)
        png = path.read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
        assert struct.unpack(">II", png[16:24]) == (1280, height)
        return path


def with_token(path: str) -> str:
    sep = "&" if "?" in path else "?"
    return f"{HTTP}{path}{sep}token={TOKEN}"


def api(path: str, token: str | None = TOKEN) -> tuple[int, str]:
    request = urllib.request.Request(HTTP + path)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wav_from(path: str) -> tuple[int, int, bytes]:
    request = urllib.request.Request(HTTP + path, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as resp, wave.open(io.BytesIO(resp.read())) as wav:
        return resp.status, wav.getframerate(), wav.readframes(wav.getnframes())


def live_row(dom: str, call_id: str) -> list[str]:
    row = re.search(rf'<tr data-call-id="{re.escape(call_id)}">(.*?)</tr>', dom, re.S)
    assert row, f"call {call_id} not on the live page"
    return re.findall(r"<td>(.*?)</td>", row.group(1))


def test_console_in_a_browser_during_and_after_a_lab_call(asterisk, engine, tmp_path):
    browser = Browser(tmp_path)
    recordings = tmp_path / "recordings"
    proc = engine(mode="ari", provider="echo", VOICELINE_HTTP_TOKEN=TOKEN, VOICELINE_RECORDING="true",
                  VOICELINE_RECORDING_DIR=str(recordings))

    audio = labkit.make_speech_ulaw("This call is watched from the operator console.", tmp_path / "c.ulaw",
                                    seconds=4)
    outcome: dict = {}
    caller = threading.Thread(target=lambda: outcome.setdefault("r", labkit.place_call("stasis", audio, CALL_S)))
    caller.start()
    try:
        call_id = None
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline and call_id is None:
            calls = json.loads(api("/console/api/live")[1])["calls"]
            call_id = calls[0]["call_id"] if calls else None
            time.sleep(0.2)
        assert call_id, "the call never showed up in /console/api/live"

        # While the call is up: the live page lists it, and its script keeps it there.
        started = time.monotonic()
        dom = browser.dom(with_token("/console/live"))
        cells = live_row(dom, call_id)
        assert cells[1:4] == ["sipp", "echo", "active"], cells  # caller id as SIPp sends it
        assert re.fullmatch(r"\d+", cells[5]) and re.fullmatch(r"\d+", cells[6]), cells  # depth, barge-ins
        polls = re.search(r'data-polls="(\d+)"', dom)
        assert polls and int(polls.group(1)) >= 1, "the live page's script did not poll"
        browser.screenshot(with_token("/console/live"), "live-during-call.png")
        assert time.monotonic() - started < CALL_S - 2, "browser too slow to see the call while it was up"
        assert outcome.get("r") is None, "the call ended before the browser looked"
    finally:
        caller.join(40)
    assert outcome["r"].ok

    summary = proc.wait_for("call_summary")[0]
    assert summary["call_id"] == call_id

    # After the call: gone from the live page.
    dom = browser.dom(with_token("/console/live"))
    assert call_id not in dom
    assert '<p id="live-empty" class="empty">No live calls.</p>' in dom
    browser.screenshot(with_token("/console/live"), "live-after-call.png")

    # History lists it (the writer runs behind the audio path), searchable by its outcome.
    deadline = time.monotonic() + 10
    while call_id not in api("/console/api/calls")[1] and time.monotonic() < deadline:
        time.sleep(0.3)
    outcome_query = urllib.parse.urlencode({"outcome": summary["end_reason"]})
    for path in ("/console/calls", f"/console/calls?{outcome_query}"):
        dom = browser.dom(with_token(path))
        assert f'href="/console/calls/{urllib.parse.quote(call_id, safe="")}"' in dom, path
    browser.screenshot(with_token("/console/calls"), "history.png")

    # The call page draws its timeline.
    call_path = f"/console/calls/{urllib.parse.quote(call_id, safe='')}"
    dom = browser.dom(with_token(call_path))
    svg = re.search(r'<figure class="timeline"><svg .*?</svg></figure>', dom, re.S)
    assert svg, "the call page has no timeline SVG"
    assert svg.group(0).count("<polyline") >= 3 and "buffer depth" in svg.group(0)
    assert html.escape(summary["tuning_hint"], quote=False) in dom
    assert '<table id="streaming-stats"' in dom

    # Recording was on: both legs play in the call page, as long as the call, with sound in them.
    proc.wait_for("call_recorded", call_id=call_id)
    sources = re.findall(r'<audio controls="" preload="none" src="([^"]+)">', dom)
    assert sources == [f"{call_path}/audio/caller.wav", f"{call_path}/audio/agent.wav"], sources
    levels = {}
    for source in sources:
        status, rate, pcm = wav_from(source)
        assert status == 200 and rate == 8000, source
        seconds = len(pcm) / 2 / rate
        assert CALL_S - 2 < seconds < CALL_S + 1.5, (source, seconds)
        levels[source.rsplit("/", 1)[1]] = max(abs(v) for v in array.array("h", pcm))
    # The caller spoke; the echo agent spoke it back.
    assert levels["caller.wav"] > 1000 and levels["agent.wav"] > 1000, levels
    browser.screenshot(with_token(call_path), "call.png", height=1900)

    # Without the token: refused, to scripts and to the browser alike.
    for path in ("/console/live", "/console/api/live", "/console/calls", call_path, f"{call_path}?token=wrong"):
        status, body = api(path, token=None)
        assert status == 401, path
        assert call_id not in body
    assert api("/console/api/live", token="wrong")[0] == 401
    dom = browser.dom(f"{HTTP}{call_path}")
    assert "<h1>Unauthorized</h1>" in dom and call_id not in dom
    browser.screenshot(f"{HTTP}/console/live", "unauthorized.png", height=400)
