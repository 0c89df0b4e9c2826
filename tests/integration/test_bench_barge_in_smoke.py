"""Smoke test of the barge-in benchmark: it runs end to end (simulator, engine and caller
legs in one process) and writes a JSON report of the documented shape in which every
interruption was counted as exactly one barge-in. Behaviour only: no reaction-time
threshold, since the machine running the tests may be busy.

The caller speaks at RMS 4000 (the top of the bench's range) so that even the hard-only
configuration confirms in double talk; at 2000 the bench shows it often does not."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "barge_in.py"

pytestmark = pytest.mark.espeak  # the simulator speaks with espeak-ng

ROW_KEYS = {
    "config", "index", "call_id", "phrase", "level_rms", "trigger_offset_ms", "error", "first_agent_ms",
    "onset_after_agent_ms", "reaction_ms", "final_stop_ms", "agent_silent_at_onset", "resumed_frames",
    "answer_heard_ms", "engine_reaction_ms", "barge_ins", "barge_in_sources", "session_barge_ins",
    "barge_in_attempts", "missed", "soft_pauses", "soft_resumes", "provider_heard_caller", "end_reason",
    "heard_ms", "engine_events_ms",
}
SUMMARY_KEYS = {
    "interruptions", "errors", "missed", "reaction_caller", "reaction_caller_final", "reaction_engine",
    "engine_underreports", "barge_ins_per_interruption", "exactly_one_barge_in", "session_counts_agree",
    "soft_pauses", "false_resumes_engine", "resumed_on_caller_leg", "provider_heard_caller", "metrics_delta",
    "target",
}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "barge_in.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--interruptions", "2", "--levels", "4000", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=240, check=False,
    )
    assert proc.returncode == 0, f"bench failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    assert out.exists(), proc.stderr
    return json.loads(out.read_text()), proc.stdout


def test_report_structure(report):
    data, stdout = report
    for key in ("bench", "created", "command", "config", "machine", "git", "targets", "plan", "configurations"):
        assert key in data, key
    assert data["bench"] == "barge_in"
    assert data["config"]["interruptions"] == 2
    assert data["config"]["levels_rms"] == [4000]
    assert data["targets"]["reaction_p95_ms"] == 300.0
    assert data["machine"]["nproc"] >= 1 and data["machine"]["python"]
    assert len(data["plan"]) == 2
    configs = {c["name"]: c for c in data["configurations"]}
    assert list(configs) == ["soft_pause", "hard_only"]
    # the two configurations differ exactly in soft pause
    assert configs["soft_pause"]["barge_in"]["soft_pause_ms"] > 0
    assert configs["hard_only"]["barge_in"]["soft_pause_ms"] == 0
    for name, config in configs.items():
        summary = config["summary"]
        assert SUMMARY_KEYS <= set(summary), (name, SUMMARY_KEYS - set(summary))
        for section in ("reaction_caller", "reaction_caller_final", "reaction_engine"):
            assert {"n", "p50_ms", "p95_ms", "max_ms"} <= set(summary[section]), (name, section)
        assert {"reaction_p95_ms", "value", "pass"} <= set(summary["target"])
        assert isinstance(summary["target"]["pass"], bool)
        rows = config["interruptions"]
        assert [r["index"] for r in rows] == [0, 1]
        for row in rows:
            assert ROW_KEYS <= set(row), (name, ROW_KEYS - set(row))
    # the table went to stdout, with the target next to the numbers
    assert "target p95 <= 300 ms" in stdout
    assert "soft_pause" in stdout and "hard_only" in stdout


def test_each_interruption_counted_as_one_barge_in(report):
    data, _ = report
    for config in data["configurations"]:
        name = config["name"]
        for row in config["interruptions"]:
            where = f"{name} #{row['index']}"
            assert row["error"] is None, (where, row["error"])
            # one barge-in, detected locally, in the log, the session and the engine's reaction metric
            assert row["barge_ins"] == 1, (where, row["barge_ins"], row["engine_events_ms"])
            assert row["barge_in_sources"] == {"local": 1}, where
            assert row["session_barge_ins"] == 1, where
            assert row["missed"] is False, where
            assert len(row["engine_reaction_ms"]) == 1, where
            # the caller leg saw the agent speak, then stop: a reaction was measured
            assert row["reaction_ms"] is not None and row["reaction_ms"] >= 0, where
            # after the barge-in the provider heard the caller and answered
            assert row["provider_heard_caller"], where
            assert row["end_reason"] is not None, where
        summary = config["summary"]
        assert summary["barge_ins_per_interruption"] == {"1": 2}, name
        assert summary["exactly_one_barge_in"] == 2 and summary["missed"] == [], name
        assert summary["metrics_delta"]["barge_ins_local"] == 2, name
        assert summary["metrics_delta"]["reaction_count"] == 2, name
    hard = next(c for c in data["configurations"] if c["name"] == "hard_only")
    assert all(row["soft_pauses"] == 0 for row in hard["interruptions"])
