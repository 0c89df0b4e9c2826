#!/usr/bin/env python3
"""Barge-in reaction benchmark: a caller talks over a long agent utterance.

    .venv/bin/python bench/barge_in.py --interruptions 20 --out bench/results/barge_in.json

Everything runs in one process and one event loop:

* the Deepgram simulator (``DeepgramSimulator``: pattern steady, 1.2x real time,
  ``long_answer_s`` 10 so the greeting is one long utterance);
* the engine (``App``) in audiosocket mode, provider deepgram pointed at the simulator,
  http and history off, AudioSocket on a free port;
* simulated Asterisk legs (``CallerLeg``). Each interruption is one call: the leg sends
  digital silence every 20 ms while the agent greets; ``--trigger-s`` (default 1.5 s,
  varied by up to +-``--jitter-ms``) after the first agent frame with speech energy
  arrived it sends an espeak-ng phrase (one of four, scaled to an active RMS of
  2000-4000 like a real caller), then ``--tail-s`` of silence, then hangs up.

Measured on the caller leg itself (the same definitions as tests/e2e/test_barge_in_e2e.py,
which measures through the real Asterisk with tshark):

* speech onset = send time of the first phrase frame with RMS > 500;
* first pause (``reaction_ms``) = arrival time of the last received frame with RMS > 300
  before the first stretch of at least 120 ms without agent speech that ends after the
  onset, minus the onset: how soon the caller first hears the agent yield (a soft pause
  that later resumes counts here);
* final stop (``final_stop_ms``) = the last received agent frame of the interrupted turn
  (before the answer could start) minus the onset: when the agent really went quiet.
  The target (p95 <= 300 ms) is judged on the final stop; both are reported.

From the engine: its own ``reaction_ms`` (the ``barge_in`` log line, captured from
structlog; also cross-checked against the ``ai_agent_barge_in_reaction_seconds``
histogram), the number of barge-ins it counted for the call (log lines, the session's
``conversation.barge_ins`` read before hang-up, and ``ai_agent_barge_ins_total`` deltas),
and the soft pauses / resumes it recorded on the call's timeline.

The whole set of interruptions runs once per configuration: ``soft_pause`` (the
shipped default, ``barge_in.soft_pause_ms`` 60) and ``hard_only`` (``soft_pause_ms`` 0:
the agent keeps talking until the barge-in is confirmed). Both see exactly the same
interruption plan (phrase, level, timing), so the difference is what soft pause buys.

The interruptions themselves (plan, caller leg, analysis) are in ``barge_in_calls.py``;
what this bench shares with ``pacing.py`` is in ``benchkit.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import statistics
import sys
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from barge_in_calls import (
    AGENT_RMS,
    FIRST_PAUSE_GAP_S,
    LEVELS,
    ONSET_RMS,
    PHRASES,
    Interruption,
    LogCapture,
    Row,
    make_plan,
    run_interruption,
)
from benchkit import RATE, REPO, bench_engine_config, git_info, machine_info, make_log

from voiceline.app import App
from voiceline.config import parse_settings
from voiceline.sim.deepgram_sim import DeepgramSimulator
from voiceline.sim.speech import synthesize
from voiceline.telemetry.logging import configure_logging

log = make_log("barge_in")

TARGET_P95_MS = 300.0

CONFIGS: dict[str, dict[str, Any]] = {
    "soft_pause": {},  # shipped defaults (soft_pause_ms 60)
    "hard_only": {"soft_pause_ms": 0},
}


def pct(values: list[float], p: float) -> float | None:
    return round(float(np.percentile(values, p)), 1) if values else None


def stats_ms(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50_ms": pct(values, 50),
        "p95_ms": pct(values, 95),
        "max_ms": round(max(values), 1) if values else None,
        "min_ms": round(min(values), 1) if values else None,
        "mean_ms": round(statistics.fmean(values), 1) if values else None,
    }


# ---------------------------------------------------------------------------------------
# one configuration
# ---------------------------------------------------------------------------------------


def engine_settings(sim_url: str, barge_in: dict[str, Any]):
    data = bench_engine_config(
        {
            "mode": "audiosocket",
            "default_provider": "deepgram",
            "audiosocket": {"host": "127.0.0.1"},
            "barge_in": barge_in,
            "providers": {"deepgram": {"url": sim_url, "api_key": "bench"}},
        }
    )
    settings, missing = parse_settings(data, env={})
    assert not missing, missing
    return settings


def metric_snapshot(app: App) -> dict[str, float]:
    reg = app.metrics.registry

    def value(name: str, labels: dict[str, str] | None = None) -> float:
        return reg.get_sample_value(name, labels or {}) or 0.0

    return {
        "barge_ins_local": value("ai_agent_barge_ins_total", {"source": "local"}),
        "barge_ins_provider": value("ai_agent_barge_ins_total", {"source": "provider"}),
        "attempts": value("ai_agent_barge_in_attempts_total"),
        "false_triggers": value("ai_agent_barge_in_false_triggers_total"),
        "reaction_count": value("ai_agent_barge_in_reaction_seconds_count"),
        "reaction_sum_s": value("ai_agent_barge_in_reaction_seconds_sum"),
    }


def summarize(rows: list[Row], metrics: dict[str, float]) -> dict[str, Any]:
    ok = [r for r in rows if r.error is None]
    caught = [r for r in ok if not r.missed and r.reaction_ms is not None]
    caller = [r.reaction_ms for r in caught]
    final = [r.final_stop_ms for r in caught if r.final_stop_ms is not None]
    engine = [v for r in ok for v in r.engine_reaction_ms]
    counted = Counter(r.barge_ins for r in rows)
    missed = [r.index for r in ok if r.missed]
    p95 = pct(caller, 95)
    final_p95 = pct(final, 95)
    failures = []
    if final_p95 is None or final_p95 > TARGET_P95_MS:
        failures.append(f"final stop p95 {final_p95} ms > {TARGET_P95_MS:.0f}")
    if missed:
        failures.append(f"{len(missed)} interruption(s) never confirmed")
    if len(ok) != len(rows):
        failures.append(f"{len(rows) - len(ok)} interruption(s) failed to run")
    reaction_count = metrics["reaction_count"]
    # The engine measures from the onset of the episode it confirmed: after a soft
    # pause that resumed, that is a later episode than the caller's first word.
    underreported = [
        r.index for r in caught
        if r.engine_reaction_ms and (r.final_stop_ms or 0) - r.engine_reaction_ms[0] > 50.0
    ]
    return {
        "interruptions": len(rows),
        "errors": [f"#{r.index}: {r.error}" for r in rows if r.error is not None],
        "missed": missed,
        "reaction_caller": stats_ms(caller),
        "reaction_caller_final": stats_ms(final),
        "reaction_engine": stats_ms(engine),
        "engine_underreports": underreported,
        "barge_ins_per_interruption": {str(k): v for k, v in sorted(counted.items())},
        "exactly_one_barge_in": sum(1 for r in rows if r.barge_ins == 1),
        "session_counts_agree": all(r.session_barge_ins == r.barge_ins for r in rows),
        "soft_pauses": sum(r.soft_pauses for r in rows),
        "false_resumes_engine": sum(r.soft_resumes for r in rows),
        "resumed_on_caller_leg": [r.index for r in caught if r.resumed_frames > 0],
        "agent_silent_at_onset": [r.index for r in ok if r.agent_silent_at_onset],
        "provider_heard_caller": sum(1 for r in rows if r.provider_heard_caller),
        "answer_heard": sum(1 for r in ok if r.answer_heard_ms is not None),
        "onset_after_agent_ms": stats_ms([r.onset_after_agent_ms for r in ok if r.onset_after_agent_ms is not None]),
        "metrics_delta": {
            **{k: round(v, 4) for k, v in metrics.items()},
            "reaction_mean_ms": round(metrics["reaction_sum_s"] / reaction_count * 1000, 1) if reaction_count else None,
        },
        "target": {
            "reaction_p95_ms": TARGET_P95_MS,
            "judged_on": "final stop",
            "first_pause_value": p95,
            "value": final_p95,
            "final_value": final_p95,
            "pass": not failures,
            "failures": failures,
        },
    }


async def run_config(
    name: str, overrides: dict[str, Any], sim_url: str, capture: LogCapture, plan: list[Interruption],
    args: argparse.Namespace,
) -> dict[str, Any]:
    settings = engine_settings(sim_url, overrides)
    app = App(settings)
    await app.start()
    try:
        before = metric_snapshot(app)
        rows: list[Row] = []
        sem = asyncio.Semaphore(args.concurrency)

        async def one(item: Interruption) -> Row:
            async with sem:
                try:
                    row = await asyncio.wait_for(
                        run_interruption(app, capture, name, item, tail_s=args.tail_s, agent_timeout_s=10.0),
                        timeout=60.0,
                    )
                except TimeoutError:
                    row = Row(name, item.index, "", item.phrase, item.level_rms, item.trigger_offset_ms,
                              error="interruption timed out")
                show = (
                    f"{row.reaction_ms:6.1f} ms" if row.reaction_ms is not None else "   n/a   "
                )
                log(f"{name} #{item.index:02d} reaction {show} engine {row.engine_reaction_ms} "
                    f"barge-ins {row.barge_ins} {row.barge_in_sources} level {item.level_rms} "
                    f"resumed {row.resumed_frames} err {row.error}")
                return row

        rows = list(await asyncio.gather(*(one(item) for item in plan)))
        after = metric_snapshot(app)
    finally:
        await app.stop()
    delta = {k: after[k] - before[k] for k in after}
    return {
        "name": name,
        "barge_in": settings.barge_in.model_dump(),
        "summary": summarize(rows, delta),
        "interruptions": [asdict(r) for r in rows],
    }


# ---------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------


def fmt(value: Any, width: int = 6) -> str:
    if value is None:
        return "-".rjust(width)
    if isinstance(value, float):
        return f"{value:{width}.0f}"
    return str(value).rjust(width)


def table(configs: list[dict[str, Any]]) -> str:
    lines = [
        (
            "barge-in on the caller leg, from the onset of the caller's phrase: first pause (the agent's last "
            "speech frame before >= 120 ms of silence) and final stop (its last frame before the answer); "
            f"target p95 <= {TARGET_P95_MS:.0f} ms, judged on the final stop"
        ),
        (
            f"{'config':<11} {'n':>3} {'missed':>6} | {'pause50':>7} {'p95':>5} {'max':>5} | {'final p95':>9} "
            f"{'max':>5} | {'eng p50':>7} {'eng p95':>7} | {'barge-ins/int.':<14} | {'resumes eng/leg':>15} | target"
        ),
    ]
    for c in configs:
        s = c["summary"]
        rc, rf, re_ = s["reaction_caller"], s["reaction_caller_final"], s["reaction_engine"]
        per = ", ".join(f"{k}x{v}" for k, v in s["barge_ins_per_interruption"].items())
        verdict = "PASS" if s["target"]["pass"] else "FAIL"
        resumes = f"{s['false_resumes_engine']}/{len(s['resumed_on_caller_leg'])}"
        lines.append(
            f"{c['name']:<11} {s['interruptions']:>3} {len(s['missed']):>6} | {fmt(rc['p50_ms'], 7)} "
            f"{fmt(rc['p95_ms'], 5)} {fmt(rc['max_ms'], 5)} | {fmt(rf['p95_ms'], 9)} {fmt(rf['max_ms'], 5)} | "
            f"{fmt(re_['p50_ms'], 7)} {fmt(re_['p95_ms'], 7)} | {per:<14} | {resumes:>15} | {verdict}"
        )
    lines += [
        "ms. missed: interruptions the engine never confirmed (left out of the percentiles, and a FAIL).",
        "target: PASS needs final p95 <= the target, nothing missed and no errors.",
        "pause: onset -> first pause; final: onset -> the agent's last speech frame before its answer "
        "(later than the pause when agent speech came back).",
        "eng: the engine's own reaction_ms (barge_in log line). barge-ins/int. 'KxN': N interruptions counted K.",
        "resumes eng/leg: soft pauses the engine resumed / interruptions whose caller heard agent speech again.",
    ]
    for c in configs:
        for failure in c["summary"]["target"]["failures"]:
            lines.append(f"  {c['name']}: {failure}")
    return "\n".join(lines)


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    capture = LogCapture()
    configure_logging("INFO", "json", {}, stream=capture)
    plan = make_plan(
        args.interruptions, seed=args.seed, trigger_s=args.trigger_s, jitter_ms=args.jitter_ms, levels=args.levels
    )
    for text in PHRASES:  # warm espeak-ng's cache off the measured path
        synthesize(text, RATE)
    sim = DeepgramSimulator(pattern="steady", speed=1.2, long_answer_s=10.0)
    sim_url = await sim.start("127.0.0.1", 0)
    created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    configs = []
    try:
        for name in args.configs:
            log(f"configuration {name}: {args.interruptions} interruptions, concurrency {args.concurrency}")
            configs.append(await run_config(name, CONFIGS[name], sim_url, capture, plan, args))
    finally:
        await sim.stop()
    if args.engine_log:
        Path(args.engine_log).write_text("".join(json.dumps(r) + "\n" for r in capture.records))
    return {
        "bench": "barge_in",
        "created": created,
        "command": ["bench/barge_in.py", *args.argv],
        "config": {
            "interruptions": args.interruptions,
            "concurrency": args.concurrency,
            "seed": args.seed,
            "trigger_s": args.trigger_s,
            "jitter_ms": args.jitter_ms,
            "tail_s": args.tail_s,
            "phrases": list(PHRASES),
            "levels_rms": list(args.levels),
            "simulator": {"pattern": "steady", "speed": 1.2, "long_answer_s": 10.0},
            "thresholds": {"onset_rms": ONSET_RMS, "agent_rms": AGENT_RMS, "first_pause_gap_ms": FIRST_PAUSE_GAP_S * 1000},
            "configs": list(args.configs),
        },
        "machine": machine_info(),
        "git": git_info(),
        "targets": {"reaction_p95_ms": TARGET_P95_MS},
        "plan": [asdict(p) for p in plan],
        "configurations": configs,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--interruptions", type=int, default=20, help="interruptions per configuration")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "barge_in.json"))
    p.add_argument("--configs", default=",".join(CONFIGS),
                   help=f"comma-separated, from {', '.join(CONFIGS)}")
    p.add_argument("--concurrency", type=int, default=1, help="interruptions (calls) in flight at once")
    p.add_argument("--trigger-s", type=float, default=1.5, help="caller cuts in this long after the agent's first frame")
    p.add_argument("--jitter-ms", type=float, default=300.0, help="+- variation of the cut-in point")
    p.add_argument("--tail-s", type=float, default=2.0, help="silence after the phrase before hanging up")
    p.add_argument("--levels", default=",".join(map(str, LEVELS)),
                   help="caller phrase levels (active RMS) drawn from, comma-separated")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--engine-log", default=None, help="also write the captured engine/simulator log (JSON lines)")
    p.add_argument("--strict", action="store_true", help="exit 1 if a configuration misses the target")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    try:
        args.levels = tuple(int(v) for v in args.levels.split(",") if v.strip())
    except ValueError:
        p.error("--levels must be comma-separated integers")
    if not args.levels or any(not 0 < v <= 20000 for v in args.levels):
        p.error("--levels must be RMS values in 1..20000")
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown or not args.configs:
        p.error(f"unknown configuration(s) {unknown}; choose from {list(CONFIGS)}")
    if args.interruptions < 1 or args.concurrency < 1:
        p.error("--interruptions and --concurrency must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = asyncio.run(amain(args))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report["configurations"]))
    print(f"wrote {out}")
    failed = [c["name"] for c in report["configurations"] if not c["summary"]["target"]["pass"]]
    return 1 if args.strict and failed else 0


if __name__ == "__main__":
    sys.exit(main())
