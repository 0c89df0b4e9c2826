"""Pure numbers of bench/compare.py: the caller-leg statistics of one lab call's agent audio,
the check that the caller heard the greeting, the spread over repeated runs, and the
printed tables. No I/O, no clock: the lab and process side is in compare_lab.py."""

from __future__ import annotations

import math
import statistics
import sys
from collections.abc import Callable, Sequence
from typing import Any

from benchkit import FRAME_BYTES, FRAME_MS, REPO, ZERO_FRAME

sys.path.insert(0, str(REPO / "lab"))

from labrtp import RtpPacket, rtp_stats  # noqa: E402

from voiceline.audio import g711  # noqa: E402

# The issue's one-call targets on the caller leg (issue 11).
TARGET_MEAN_JITTER_MS = 0.1
TARGET_MAX_DELTA_MS = 22.0
# A packet whose decoded RMS is above this carries agent speech (as in tests/e2e).
SPEECH_RMS = 300.0


def payload_rms(payload: bytes) -> float:
    """RMS of a PCMU payload, decoded to 16-bit linear."""
    if not payload:
        return 0.0
    pcm = g711.mulaw_to_slin(payload)
    samples = memoryview(pcm).cast("h")
    return math.sqrt(sum(s * s for s in samples) / len(samples))


def agent_span(packets: Sequence[RtpPacket], threshold: float = SPEECH_RMS) -> tuple[int, int] | None:
    """Indices of the first and last packet carrying speech: the agent's audio is judged
    from its first to its last spoken packet, so call set-up and the packets around the
    BYE (Asterisk's, not the stream's) stay out of it. None if nothing was spoken."""
    spoken = [i for i, p in enumerate(packets) if payload_rms(p.payload) > threshold]
    if not spoken:
        return None
    return spoken[0], spoken[-1]


def _percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in 0..100."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def interval_stats(packets: Sequence[RtpPacket], period_ms: float = FRAME_MS) -> dict[str, Any]:
    """Caller-leg timing of ``packets`` (one direction, capture order): packets, lost,
    max inter-arrival delta, mean RFC 3550 jitter, and |delta - period| percentiles."""
    st = rtp_stats(packets)
    deltas = [(b.time - a.time) * 1000.0 for a, b in zip(packets, packets[1:], strict=False)]
    errors = [abs(d - period_ms) for d in deltas]
    return {
        "packets": st.packets,
        "lost": st.lost,
        "duration_s": round(st.duration_s, 3),
        "max_delta_ms": round(st.max_delta_ms, 3) if deltas else None,
        "min_delta_ms": round(min(deltas), 3) if deltas else None,
        "mean_delta_ms": round(st.mean_delta_ms, 4) if deltas else None,
        "mean_jitter_ms": round(st.mean_jitter_ms, 4) if deltas else None,
        "max_jitter_ms": round(st.max_jitter_ms, 4) if deltas else None,
        "p50_abs_err_ms": round(_percentile(errors, 50), 3) if errors else None,
        "p99_abs_err_ms": round(_percentile(errors, 99), 3) if errors else None,
        "over_22ms": sum(1 for d in deltas if d > TARGET_MAX_DELTA_MS),
        "over_30ms": sum(1 for d in deltas if d > 30.0),
        # behind a 20 ms clock at the end of the span: the drift of a per-call sleep
        "drift_ms": round(sum(deltas) - period_ms * len(deltas), 1) if deltas else None,
    }


def heard_greeting(
    payloads: Sequence[bytes], reference_frames: Sequence[bytes], decode: Callable[[bytes], bytes] = g711.mulaw_to_slin
) -> dict[str, int]:
    """Align what the caller heard with the greeting (slin16 frames, as the caller should
    hear them): from the first received frame equal to a voiced greeting frame on, each
    frame is the next greeting frame (``heard``), silence inserted in its place (``gaps``),
    a later greeting frame (the frames in between were ``skipped``) or none (``mismatched``);
    ``left`` counts the spoken greeting frames after the last one matched.
    Compared as linear audio, so mu-law's two codes for zero do not matter."""
    out = {"heard": 0, "gaps": 0, "skipped": 0, "mismatched": 0, "found": 0, "left": len(reference_frames)}
    positions: dict[bytes, list[int]] = {}
    for i, f in enumerate(reference_frames):
        positions.setdefault(f, []).append(i)

    def find(frame: bytes, start: int) -> int | None:
        return next((p for p in positions.get(frame, ()) if p >= start), None)

    frames = [decode(p) for p in payloads]
    start = next(
        (j for j, f in enumerate(frames) if f != ZERO_FRAME[: len(f)] and find(f, 0) is not None), None
    )
    if start is None:
        return out
    out["found"] = 1
    i = find(frames[start], 0)
    assert i is not None
    for f in frames[start:]:
        if i >= len(reference_frames):
            break
        if f == reference_frames[i]:
            out["heard"] += 1
            i += 1
        elif not any(f):
            out["gaps"] += 1
        else:
            pos = find(f, i)
            if pos is None:
                out["mismatched"] += 1
                i += 1
            else:
                out["skipped"] += pos - i
                out["heard"] += 1
                i = pos + 1
    last_voiced = max((k for k, f in enumerate(reference_frames) if any(f)), default=-1)
    out["left"] = max(0, last_voiced + 1 - i)  # spoken greeting frames never reached
    return out


def reference_frames(pcm: bytes) -> list[bytes]:
    """Whole 20 ms slin16 frames of ``pcm``."""
    return [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES)]


def spread(values: Sequence[float | int | None]) -> dict[str, Any]:
    """min / median / max of the runs that produced a value, and how many did."""
    present = [v for v in values if v is not None]
    if not present:
        return {"n": 0, "min": None, "median": None, "max": None}
    return {"n": len(present), "min": min(present), "median": statistics.median(present), "max": max(present)}


# ---------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------


def _f(v: Any, spec: str = ".2f") -> str:
    if v is None:
        return "-"
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    return format(v, spec)


def _mmm(s: dict[str, Any] | None, spec: str = ".2f") -> str:
    """'min/median/max' of a spread, or one value when all runs agree or there was one run."""
    if not s or not s.get("n"):
        return "-"
    if s["n"] == 1 or s["min"] == s["max"]:
        return _f(s["median"], spec)
    return f"{_f(s['min'], spec)}/{_f(s['median'], spec)}/{_f(s['max'], spec)}"


ROW_LABELS = {"voiceline": "voiceline", "voiceline-ari": "voiceline ari", "naive": "naive sleep",
              "playback": "Playback()"}


def summary_table(report: dict[str, Any]) -> list[str]:
    """The one table of the issue: N-call send timing and CPU (pacing probe) and the
    one-call caller-leg numbers through the lab Asterisk, one row per server."""
    pacing = {p["server"]: p for p in report.get("pacing", [])}
    lab = {r["row"]: r for r in report.get("lab", {}).get("rows", [])}
    n = report["config"].get("calls")
    runs = report["config"].get("repeat")
    pacing_servers = report["config"].get("pacing_servers", ["voiceline", "naive"])
    lines = [
        f"{'':14}| {(f'{n} calls (pacing probe, loopback)' if pacing else 'pacing probe not run'):^40} | {(f'1 call via lab Asterisk, min/median/max of {runs}' if lab else 'lab not run'):^48}",
        f"{'server':14}| {'send p99':>8} {'max':>7} {'missing':>8} {'CPU %':>6} {'status':>7} "
        f"| {'max delta ms':>18} {'mean jitter ms':>20} {'heard':>7}",
    ]
    for key in ROW_LABELS:
        if key not in pacing and key not in lab:
            continue
        p = pacing.get(key) or {}
        row = lab.get(key) or {}
        agg = row.get("spread", {})
        heard = row.get("heard_all")
        lines.append(
            f"{ROW_LABELS[key]:14}| {_f(p.get('send_p99_ms')):>8} {_f(p.get('send_max_ms'), '.1f'):>7} "
            f"{_f(p.get('missing')):>8} {_f(p.get('cpu_pct'), '.1f'):>6} {p.get('status', '-' if key in pacing_servers else 'n/a'):>7} "
            f"| {_mmm(agg.get('max_delta_ms')):>18} {_mmm(agg.get('mean_jitter_ms'), '.3f'):>20} "
            f"{'-' if heard is None else ('yes' if heard else 'NO'):>7}"
        )
    lines.append(
        f"targets (issue 11): 1 call mean jitter <= {TARGET_MEAN_JITTER_MS:g} ms, max delta <= {TARGET_MAX_DELTA_MS:g} ms"
    )
    return lines


def lab_table(report: dict[str, Any]) -> list[str]:
    """Every lab call: one line per run and row."""
    lines = [
        f"{'row':14} {'run':>3} | {'packets':>7} {'lost':>4} {'max delta':>9} {'mean jit':>8} {'max jit':>7} "
        f"{'p99|d-20|':>9} {'>22ms':>5} {'drift':>6} | {'heard':>5} {'gaps':>4} {'skip':>4} {'mism':>4} {'left':>4} "
        f"| {'stalls':>6} {'max st':>6} {'busy':>5} | {'tshark jit (call)':>17}"
    ]
    for row in report.get("lab", {}).get("rows", []):
        for run in row["runs"]:
            s = run.get("agent") or {}
            h = run.get("heard") or {}
            st = run.get("machine_stalls") or {}
            lines.append(
                f"{ROW_LABELS[row['row']]:14} {run['run']:>3} | {_f(s.get('packets')):>7} {_f(s.get('lost')):>4} "
                f"{_f(s.get('max_delta_ms')):>9} {_f(s.get('mean_jitter_ms'), '.3f'):>8} "
                f"{_f(s.get('max_jitter_ms'), '.3f'):>7} {_f(s.get('p99_abs_err_ms')):>9} {_f(s.get('over_22ms')):>5} "
                f"{_f(s.get('drift_ms'), '.1f'):>6} | {_f(h.get('heard')):>5} {_f(h.get('gaps')):>4} "
                f"{_f(h.get('skipped')):>4} {_f(h.get('mismatched')):>4} {_f(h.get('left')):>4} | {_f(st.get('count')):>6} "
                f"{_f(st.get('max_ms'), '.1f'):>6} {_f(run.get('machine_busy_cores')):>5} "
                f"| {_f(run.get('tshark_mean_jitter_ms'), '.3f'):>17}"
                + (f"  ERROR: {run['error']}" if run.get("error") else "")
            )
    return lines


def pacing_table(report: dict[str, Any]) -> list[str]:
    lines = [
        f"{'server':14}| {'send p50':>8} {'p99':>6} {'p99.9':>6} {'max':>6} | {'gaps all/steady':>15} {'missing':>8} "
        f"{'pauses':>6} | {'CPU %':>6} {'per call':>8} {'RSS MB':>7} | {'other':>5} | {'status':>7}"
    ]
    for p in report.get("pacing", []):
        lines.append(
            f"{ROW_LABELS.get(p['server'], p['server']):14}| {_f(p.get('send_p50_ms')):>8} {_f(p.get('send_p99_ms')):>6} "
            f"{_f(p.get('send_p999_ms')):>6} {_f(p.get('send_max_ms'), '.1f'):>6} | {_f(p.get('gaps')) + '/' + _f(p.get('gaps_steady')):>15} "
            f"{_f(p.get('missing')):>8} {_f(p.get('pauses')):>6} | {_f(p.get('cpu_pct'), '.1f'):>6} "
            f"{_f(p.get('cpu_per_call_pct'), '.3f'):>8} {_f(p.get('rss_mb'), '.1f'):>7} | "
            f"{_f(p.get('foreign_core_pct'), '.0f'):>5} | {p.get('status', '-'):>7}"
            + (f"  {p['error']}" if p.get("error") else "")
        )
    return lines
