"""The pacing bench's targets, per-row checks, flatness verdict and the printed tables."""

from __future__ import annotations

import argparse
from typing import Any


# Targets (shown next to the numbers; only --strict turns a FAIL into exit status 1).
# The goal rows of issue 11: send p99 interval error <= 2 ms, no gap over 30 ms (an
# interval error over 10 ms), no pause after the connect ramp, engine under a core.
TARGET_P99_MS = 2.0
TARGET_MAX_ERROR_MS = 10.0
TARGET_RSS_KB_PER_CALL = 1024.0
TARGET_CPU_PCT = 100.0
TARGET_FLAT_RATIO = 1.5
TARGET_MIN_SPEED = 1.2


def _check(value: Any, target: str, ok: bool | None) -> dict[str, Any]:
    return {"value": value, "target": target, "pass": ok}


def row_checks(row: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    p99 = row["timing_agent"]["p99_ms"]
    speed = row["provider"]["speed_x_mean"]
    pause_applies = args.pattern != "stall" and speed is not None and speed >= TARGET_MIN_SPEED - 0.01
    cpu = row["engine"]["cpu_pct"]
    worst = row["timing_agent"]["max_ms"]
    rss_kb = row["engine"]["rss_per_call_kb"]
    steady_gaps = row["frames"].get("gaps_steady")
    return {
        "p99_interval_error": _check(p99, f"<= {TARGET_P99_MS:g} ms", None if p99 is None else p99 <= TARGET_P99_MS),
        "no_gap_over_30ms": _check(
            worst, f"max interval error <= {TARGET_MAX_ERROR_MS:g} ms",
            None if worst is None else worst <= TARGET_MAX_ERROR_MS,
        ),
        "no_pause_after_ramp": _check(
            steady_gaps, "0 silence frames inside agent speech in the steady window",
            (steady_gaps == 0) if pause_applies and steady_gaps is not None else None,
        ),
        "restarts": _check(row["streaming"]["restarts"], "0", row["streaming"]["restarts"] == 0),
        "fallbacks": _check(row["streaming"]["fallbacks"], "0", row["streaming"]["fallbacks"] == 0),
        "engine_cpu": _check(cpu, f"< {TARGET_CPU_PCT:g}% of one core", None if cpu is None else cpu < TARGET_CPU_PCT),
        "rss_per_call": _check(
            rss_kb, f"<= {TARGET_RSS_KB_PER_CALL:g} KB per call",
            None if rss_kb is None else rss_kb <= TARGET_RSS_KB_PER_CALL,
        ),
        "every_call_heard_agent": _check(
            row["frames"]["calls_without_agent_audio"], "0", row["frames"]["calls_without_agent_audio"] == 0
        ),
    }


def flatness(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-call engine cost at the largest N over the smallest N (growth = superlinear)."""
    if len(rows) < 2:
        return {"pass": None, "note": "needs at least two call counts"}
    lo, hi = min(rows, key=lambda r: r["calls"]), max(rows, key=lambda r: r["calls"])
    out: dict[str, Any] = {"from_calls": lo["calls"], "to_calls": hi["calls"], "target": f"<= {TARGET_FLAT_RATIO:g}x"}
    for key in ("cpu_per_call_pct", "rss_per_call_kb"):
        a, b = lo["engine"][key], hi["engine"][key]
        ratio = round(b / a, 2) if a and b is not None and a > 0 else None
        out[key] = {"low": a, "high": b, "ratio": ratio, "pass": None if ratio is None else ratio <= TARGET_FLAT_RATIO}
    verdicts = [out[k]["pass"] for k in ("cpu_per_call_pct", "rss_per_call_kb")]
    out["pass"] = None if None in verdicts else all(verdicts)
    return out


def _fmt(v: Any, spec: str = "") -> str:
    if v is None:
        return "-"
    return format(v, spec) if spec else str(v)


def _mark(check: dict[str, Any]) -> str:
    return {True: "PASS", False: "FAIL", None: "n/a"}[check["pass"]]


def print_stalls(rows: list[dict[str, Any]]) -> None:
    """Machine stalls in the steady window and the late intervals they overlapped
    (a diagnosis beside the targets, which are judged on every interval)."""
    print("\nmachine stalls in the steady window (lab/stallwitness.py; diagnosis, not a target)")
    head = (
        f"{'N':>4} | {'stalls':>6} {'total ms':>8} {'max ms':>6} | {'late >5 ms':>10} {'in a stall':>10} | "
        f"{'send p99 outside stalls':>23}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        ms = r.get("machine_stalls") or {}
        if not ms.get("available"):
            print(f"{r['calls']:>4} | witness not running: {ms.get('reason')}")
            continue
        print(
            f"{r['calls']:>4} | {ms['count']:>6} {ms['total_ms']:>8.1f} {ms['max_ms']:>6.1f} | "
            f"{ms['late_intervals']:>10} {ms['late_intervals_in_stall']:>10} | "
            f"{_fmt(ms['p99_outside_stalls_ms'], '.2f'):>23}"
        )


def print_table(report: dict[str, Any]) -> None:
    rows = report["results"]
    cfg = report["config"]
    print(
        f"\npacing: pattern={cfg['pattern']} speed={cfg['speed']}x seconds={cfg['seconds']} "
        f"long_answer_s={cfg['long_answer_s']} nproc={report['machine']['nproc']} "
        f"python={report['machine']['python']}"
    )
    machine = report["machine"]
    if "calibration_ms_before" in machine:
        print(
            f"machine speed: a fixed Python loop took {machine['calibration_ms_before']} ms before the run,"
            f" {machine.get('calibration_ms_after', '-')} ms after (higher = slower host)"
        )
    print(
        "\nframe timing |inter-arrival - 20 ms| in ms, agent audio, steady window"
        " (send = kernel receive stamp; read = when the client read it)"
    )
    head = (
        f"{'N':>4} | {'send p50':>8} {'p99':>6} {'p99.9':>6} {'max':>6} | {'p99 w/ramp':>10} | "
        f"{'read p99':>8} {'client lag p99':>14} | {'gaps c/e':>9} {'missing':>7} {'pauses':>6} "
        f"{'restarts':>8} {'fallbacks':>9}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        ta, tr, tw = r["timing_agent"], r["timing_agent_read"], r["timing_agent_whole"]
        st, fr = r["streaming"], r["frames"]
        print(
            f"{r['calls']:>4} | {_fmt(ta['p50_ms'], '.2f'):>8} {_fmt(ta['p99_ms'], '.2f'):>6} "
            f"{_fmt(ta['p99.9_ms'], '.2f'):>6} {_fmt(ta['max_ms'], '.1f'):>6} | {_fmt(tw['p99_ms'], '.2f'):>10} | "
            f"{_fmt(tr['p99_ms'], '.2f'):>8} {_fmt(r['client']['loop_lag']['p99_ms'], '.2f'):>14} | "
            f"{str(fr['gaps_client']) + '/' + str(fr['gaps_engine']):>9} {fr['missing']:>7} {st['pauses']:>6} "
            f"{st['restarts']:>8} {st['fallbacks']:>9}"
        )
    print("\nresources during the steady window (CPU in % of one core)")
    head = (
        f"{'N':>4} | {'engine CPU':>10} {'idle':>5} {'per call':>8} | {'RSS MB':>7} {'idle':>6} {'KB/call':>7} | "
        f"{'sim':>4} {'clients':>9} {'other':>6} | {'provider x':>10} {'greet p50 s':>11} | checks"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        e, ch = r["engine"], r["checks"]
        fails = [k for k, c in ch.items() if c["pass"] is False]
        cli = "+".join(_fmt(v, ".0f") for v in r["client"]["cpu_pct"])
        print(
            f"{r['calls']:>4} | {_fmt(e['cpu_pct'], '.1f'):>10} {_fmt(e['cpu_idle_pct'], '.1f'):>5} "
            f"{_fmt(e['cpu_per_call_pct'], '.3f'):>8} | {_fmt(e['rss_mb'], '.1f'):>7} {_fmt(e['rss_idle_mb'], '.1f'):>6} "
            f"{_fmt(e['rss_per_call_kb'], '.0f'):>7} | {_fmt(r['sim']['cpu_pct'], '.0f'):>4} {cli:>9} "
            f"{_fmt(r['machine']['foreign_core_pct'], '.0f'):>6} | {_fmt(r['provider']['speed_x_mean'], '.2f'):>10} "
            f"{_fmt(r['provider']['greeting_latency_s_p50'], '.2f'):>11} | "
            + ("PASS" if not fails else "FAIL: " + ",".join(fails))
        )
    print_stalls(rows)
    print("\ntargets per row:")
    for r in rows:
        print(f"  N={r['calls']:<4} " + "  ".join(f"{k}={_fmt(c['value'])}[{_mark(c)}]" for k, c in r["checks"].items()))
    fl = report["flatness"]
    if "cpu_per_call_pct" in fl:
        print(
            f"  flat per-call cost {fl['from_calls']}->{fl['to_calls']} calls: "
            f"CPU {fl['cpu_per_call_pct']['low']}->{fl['cpu_per_call_pct']['high']} %/call "
            f"(x{_fmt(fl['cpu_per_call_pct']['ratio'])}) [{_mark(fl['cpu_per_call_pct'])}], "
            f"RSS {fl['rss_per_call_kb']['low']}->{fl['rss_per_call_kb']['high']} KB/call "
            f"(x{_fmt(fl['rss_per_call_kb']['ratio'])}) [{_mark(fl['rss_per_call_kb'])}]  target {fl['target']}"
        )
    print(f"overall: {'PASS' if report['verdict']['pass'] else 'FAIL'}"
          + ("" if report["verdict"]["pass"] else f" ({'; '.join(report['verdict']['failures'])})"))
