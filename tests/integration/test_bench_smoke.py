"""Smoke test of the pacing benchmark: it runs end to end (simulator, engine and client
processes) and writes a JSON report of the documented shape. Behaviour only: no
performance thresholds, since the machine running the tests may be busy."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "pacing.py"

pytestmark = pytest.mark.espeak  # the simulator speaks with espeak-ng


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "pacing.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--calls", "3", "--seconds", "4", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=240, check=False,
    )
    assert proc.returncode == 0, f"bench failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    assert out.exists(), proc.stderr
    return json.loads(out.read_text()), proc.stdout


def test_report_structure(report):
    data, stdout = report
    for key in ("bench", "created", "command", "config", "machine", "targets", "results", "flatness", "verdict"):
        assert key in data, key
    assert data["bench"] == "pacing"
    assert data["config"]["calls"] == [3]
    assert data["config"]["seconds"] == 4
    assert data["config"]["pattern"] == "jitter"
    assert data["machine"]["nproc"] >= 1 and data["machine"]["python"]
    assert data["machine"]["calibration_ms_before"] > 0 and data["machine"]["calibration_ms_after"] > 0
    stalls = data["results"][0]["machine_stalls"]
    assert stalls["available"], stalls  # CI runs as root: the witness must run
    assert 0 <= stalls["late_intervals_in_stall"] <= stalls["late_intervals"] <= stalls["intervals"]
    assert isinstance(data["verdict"]["pass"], bool)
    assert len(data["results"]) == 1
    row = data["results"][0]
    assert row["calls"] == 3
    for section in ("timing_agent", "timing_all", "timing_agent_read", "timing_all_read"):
        assert {"n", "p50_ms", "p99_ms", "max_ms"} <= set(row[section]), section
    for section, keys in {
        "frames": {"received", "agent", "gaps_client", "gaps_engine", "gaps_steady", "missing", "mismatched"},
        "streaming": {"streaming_started", "restarts", "pauses", "fallbacks", "end_reasons"},
        "engine": {"cpu_pct", "cpu_idle_pct", "cpu_per_call_pct", "rss_mb", "rss_idle_mb", "rss_per_call_kb"},
        "client": {"cpu_pct", "loop_lag", "connected", "connect_errors"},
        "provider": {"speed_x_mean", "greeting_latency_s_p50"},
        "summaries": {"count", "end_reasons"},
        "checks": {"p99_interval_error", "no_gap_over_30ms", "no_pause_after_ramp", "restarts",
                   "fallbacks", "engine_cpu", "rss_per_call"},
    }.items():
        assert keys <= set(row[section]), (section, keys - set(row[section]))
    for check in row["checks"].values():
        assert {"value", "target", "pass"} <= set(check)
    # the table went to stdout
    assert "send p50" in stdout and "overall:" in stdout


def test_every_call_received_frames_and_agent_audio(report):
    data, _ = report
    row = data["results"][0]
    calls = row["calls_detail"]
    assert len(calls) == 3
    assert row["client"]["connected"] == 3 and row["client"]["connect_errors"] == []
    for call in calls:
        assert call["error"] is None
        # about 50 frames a second for the whole call: continuous outbound audio
        assert call["frames_received"] > 100, call
        assert call["agent_frames"] > 0, call  # the greeting reached the caller
        assert call["mismatched"] == 0, call  # what was heard is the greeting, in order
        assert call["engine"] is not None, call  # the engine logged its call_summary
    # the engine logged one summary and one streamed turn per call, and the timing
    # statistics cover agent audio of every call
    assert row["summaries"]["count"] == 3
    assert row["streaming"]["streaming_started"] == 3
    assert row["timing_agent"]["n"] > 0
    assert row["frames"]["received"] == sum(c["frames_received"] for c in calls)
    # client-side and engine-side counts of silence inside agent speech agree
    assert row["frames"]["gaps_client"] == row["frames"]["gaps_engine"]
