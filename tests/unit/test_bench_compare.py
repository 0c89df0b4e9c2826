"""The pure numbers of bench/compare.py (bench/compare_stats.py): caller-leg interval
statistics, the agent-speech span, the greeting alignment, the spread and the table."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import compare_stats as cs  # noqa: E402
from labrtp import RtpPacket  # noqa: E402

from voiceline.audio import g711  # noqa: E402

SILENT = b"\xff" * 160  # mu-law zero


def _ulaw_frames(n: int, seed: int = 1) -> list[bytes]:
    """n distinct loud mu-law frames (codes well away from zero)."""
    rng = random.Random(seed)
    return [bytes(rng.choice(range(0x00, 0x30)) for _ in range(160)) for _ in range(n)]


def _packets(times_ms: list[float], payloads: list[bytes] | None = None, seqs: list[int] | None = None) -> list[RtpPacket]:
    payloads = payloads or [SILENT] * len(times_ms)
    seqs = seqs or list(range(100, 100 + len(times_ms)))
    return [
        RtpPacket(time=1000.0 + t / 1000.0, src="127.0.0.1", src_port=20000, dst="127.0.0.1", dst_port=6000,
                  seq=s, timestamp=s * 160, payload_type=0, ssrc=7, payload=p)
        for t, p, s in zip(times_ms, payloads, seqs, strict=True)
    ]


def test_interval_stats_of_a_perfect_stream():
    st = cs.interval_stats(_packets([20.0 * i for i in range(50)]))
    assert st["packets"] == 50 and st["lost"] == 0
    assert st["max_delta_ms"] == pytest.approx(20.0)
    assert st["mean_jitter_ms"] == pytest.approx(0.0, abs=1e-6)
    assert st["p99_abs_err_ms"] == pytest.approx(0.0, abs=1e-6)
    assert st["over_22ms"] == 0 and st["drift_ms"] == pytest.approx(0.0, abs=0.05)


def test_interval_stats_counts_a_late_packet_and_the_drift():
    times = [20.0 * i for i in range(10)] + [20.0 * i + 5.0 for i in range(10, 20)]  # one 25 ms gap
    st = cs.interval_stats(_packets(times))
    assert st["max_delta_ms"] == pytest.approx(25.0)
    assert st["over_22ms"] == 1 and st["over_30ms"] == 0
    assert st["drift_ms"] == pytest.approx(5.0)
    # RFC 3550: one 5 ms transit change enters J as 5/16 and then decays by 15/16 per packet
    assert 0.0 < st["mean_jitter_ms"] < 5.0 / 16
    assert st["max_jitter_ms"] == pytest.approx(5.0 / 16, rel=1e-3)


def test_interval_stats_counts_lost_sequence_numbers():
    seqs = [1, 2, 3, 5, 6]
    st = cs.interval_stats(_packets([0, 20, 40, 80, 100], seqs=seqs))
    assert st["lost"] == 1


def test_agent_span_is_first_to_last_spoken_packet():
    loud = _ulaw_frames(2)
    payloads = [SILENT, SILENT, loud[0], SILENT, loud[1], SILENT]
    assert cs.agent_span(_packets([20.0 * i for i in range(6)], payloads)) == (2, 4)
    assert cs.agent_span(_packets([0.0, 20.0])) is None


def _reference(ulaw: list[bytes]) -> list[bytes]:
    return [g711.mulaw_to_slin(f) for f in ulaw]


def test_heard_greeting_in_full():
    greeting = [SILENT] + _ulaw_frames(20)
    heard = cs.heard_greeting([SILENT, SILENT, *greeting[1:]], _reference(greeting))
    assert heard == {"heard": 20, "gaps": 0, "skipped": 0, "mismatched": 0, "found": 1, "left": 0}


def test_heard_greeting_counts_gaps_skips_and_mismatches():
    greeting = _ulaw_frames(20)
    foreign = _ulaw_frames(1, seed=99)[0]
    received = greeting[:5] + [SILENT, SILENT] + greeting[5:8] + greeting[10:15] + [foreign] + greeting[16:18]
    heard = cs.heard_greeting(received, _reference(greeting))
    assert heard["found"] == 1
    assert heard["gaps"] == 2  # silence where the greeting went on
    assert heard["skipped"] == 2  # frames 8 and 9 never arrived
    assert heard["mismatched"] == 1  # in place of frame 15
    assert heard["heard"] == 5 + 3 + 5 + 2
    assert heard["left"] == 2  # frames 18 and 19 were never reached


def test_heard_greeting_without_the_greeting():
    heard = cs.heard_greeting(_ulaw_frames(5, seed=5), _reference(_ulaw_frames(5, seed=6)))
    assert heard["found"] == 0 and heard["heard"] == 0 and heard["left"] == 5


def test_spread_ignores_runs_without_a_value():
    assert cs.spread([3.0, None, 1.0, 2.0]) == {"n": 3, "min": 1.0, "median": 2.0, "max": 3.0}
    assert cs.spread([None]) == {"n": 0, "min": None, "median": None, "max": None}


def test_summary_table_has_one_line_per_server_with_both_measurements():
    report = {
        "config": {"calls": 300, "repeat": 3},
        "pacing": [
            {"server": "voiceline", "send_p99_ms": 3.2, "send_max_ms": 40.0, "missing": 0, "cpu_pct": 60.0, "status": "PASS"},
            {"server": "naive", "send_p99_ms": 15.0, "send_max_ms": 90.0, "missing": 900, "cpu_pct": 80.0, "status": "FAIL"},
        ],
        "lab": {"rows": [
            {"row": "voiceline", "heard_all": True,
             "spread": {"max_delta_ms": cs.spread([21.0, 21.2, 20.9]), "mean_jitter_ms": cs.spread([0.05, 0.06, 0.07])}},
            {"row": "playback", "heard_all": True,
             "spread": {"max_delta_ms": cs.spread([20.2]), "mean_jitter_ms": cs.spread([0.02])}},
        ]},
    }
    lines = cs.summary_table(report)
    body = {line.split("|")[0].strip(): line for line in lines[2:] if "|" in line}
    assert set(body) == {"voiceline", "naive sleep", "Playback()"}
    assert "20.90/21.00/21.20" in body["voiceline"] and "0.050/0.060/0.070" in body["voiceline"]
    assert "900" in body["naive sleep"] and "FAIL" in body["naive sleep"]
    # Playback() has no loopback probe; the naive row has no lab run here
    assert "n/a" in body["Playback()"] and "20.20" in body["Playback()"]
    assert body["naive sleep"].rstrip().endswith("-")
