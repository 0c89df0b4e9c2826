"""Telemetry after a real lab call: /health while live and after, /metrics, history, report."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import threading
import time
import urllib.request
import zlib

import labkit
from conftest import REPO

HTTP = "http://127.0.0.1:9091"


def _get(path: str):
    with urllib.request.urlopen(HTTP + path, timeout=3) as resp:
        return resp.status, resp.read().decode()


def test_call_visible_in_health_metrics_history_and_report(asterisk, engine, tmp_path):
    proc = engine(mode="ari", provider="echo")
    status, body = _get("/ready")
    assert status == 200 and json.loads(body)["ready"] is True

    audio = labkit.make_speech_ulaw("Checking the telemetry of this call.", tmp_path / "t.ulaw", seconds=4)
    outcome = {}
    caller = threading.Thread(target=lambda: outcome.setdefault("r", labkit.place_call("stasis", audio, 4.5)))
    caller.start()
    live_calls = []
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline and not live_calls:
        live_calls = json.loads(_get("/health")[1])["calls"]
        time.sleep(0.2)
    caller.join(30)
    assert outcome["r"].ok
    assert len(live_calls) == 1, "the live call was not listed in /health"
    live = live_calls[0]
    assert live["provider"] == "echo" and live["codec"]["wire"] == "slin16@8000"
    assert "depth_frames" in live["streaming"] and "audio_capture_enabled" in live["conversation"]

    summary = proc.wait_for("call_summary")[0]
    call_id = summary["call_id"]
    assert summary["tuning_hint"], "no tuning hint at call end"
    health = json.loads(_get("/health")[1])
    assert health["active_calls"] == 0 and health["calls"] == []

    metrics = _get("/metrics")[1]
    assert 'ai_agent_calls_total{provider="echo"} 1.0' in metrics
    assert "ai_agent_streaming_turns_total 1.0" in metrics
    assert call_id not in metrics, "per-call series left behind after the call"

    env = dict(os.environ, VOICELINE_HISTORY_URL=f"sqlite:///{tmp_path}/calls.db")
    deadline = time.monotonic() + 10
    while True:  # the history writer runs behind the audio path
        shown = subprocess.run([str(REPO / ".venv/bin/voiceline"), "calls", "show", call_id], cwd=REPO, env=env,
                               capture_output=True, text=True)
        if shown.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert shown.returncode == 0, shown.stderr
    assert call_id in shown.stdout and summary["tuning_hint"].split(":")[0] in shown.stdout
    listed = subprocess.run([str(REPO / ".venv/bin/voiceline"), "calls", "list"], cwd=REPO, env=env,
                            capture_output=True, text=True)
    assert call_id[:8] in listed.stdout

    out = tmp_path / "reports"
    rendered = subprocess.run([str(REPO / ".venv/bin/voiceline"), "report", call_id, "--out", str(out)],
                              cwd=REPO, env=env, capture_output=True, text=True)
    assert rendered.returncode == 0, rendered.stderr
    png = (out / f"{call_id}.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (1200, 700)
    idat = b"".join(_chunks(png, b"IDAT"))
    pixels = zlib.decompress(idat)
    assert len(pixels) == height * (1 + width * 3)  # RGB rows with a filter byte each
    assert len(set(pixels)) > 4, "report image is blank"
    assert call_id in (out / f"{call_id}.html").read_text()


def _chunks(png: bytes, kind: bytes):
    offset = 8
    while offset < len(png):
        length = struct.unpack(">I", png[offset:offset + 4])[0]
        if png[offset + 4:offset + 8] == kind:
            yield png[offset + 8:offset + 8 + length]
        offset += 12 + length
