#!/usr/bin/env python3
"""Outbound pacing benchmark: N concurrent AudioSocket calls through the real engine.

    .venv/bin/python bench/pacing.py --calls 10,50,100,200 --seconds 20 --pattern jitter \
        --out bench/results/pacing.json

For every N the bench starts, each in its own process:

* the Deepgram simulator (``python -m voiceline.sim.deepgram_sim``), delivering a long
  greeting (``long_answer_s`` > the measured window) in the chosen pattern at ``speed``
  times real time;
* the engine (``python -m voiceline.cli serve --mode audiosocket --provider deepgram``)
  with a temporary copy of ``config/ai-agent.yaml`` (any free AudioSocket port, http and
  history off, JSON logs at INFO into a file, ``workers: --engine-workers``), so its CPU
  and RSS can be read from ``/proc`` for the engine alone: summed over its process tree
  (the supervisor and its worker processes); ``--server naive`` runs
  ``bench/naive_server.py`` in its place;
* one or two client worker processes holding the simulated Asterisk legs
  (``CallerLeg``): each leg connects (staggered over ``--stagger-s``), sends digital
  silence every 20 ms like Asterisk, and records the arrival time and bytes of every
  frame the engine sends back, until all legs hang up together.

Then it waits for the engine's ``call_summary`` lines, reads the engine log and reports
frame timing (|inter-arrival - 20 ms|), gaps inside agent speech (found by aligning what
each caller heard with the exact greeting audio), pauses/restarts/fallbacks from the
streaming log lines, engine CPU and RSS, and the client's own event-loop lag (the noise
floor of the timing numbers). See bench/README.md for what each number means.

The code is split by job: ``pacing_client.py`` (the legs, in client worker processes),
``pacing_run.py`` (one round: processes, sampling, the engine log), ``pacing_report.py``
(targets, checks, tables) and ``benchkit.py`` (shared with ``barge_in.py``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchkit import FRAME_BYTES, RATE, REPO, cpu_calibration_ms, git_info, machine_info
from pacing_client import reference_audio
from pacing_report import (
    TARGET_CPU_PCT,
    TARGET_FLAT_RATIO,
    TARGET_MIN_SPEED,
    TARGET_MAX_ERROR_MS,
    TARGET_P99_MS,
    TARGET_RSS_KB_PER_CALL,
    flatness,
    print_table,
)
from pacing_run import engine_config, log, run_round

from voiceline.sim.deepgram_sim import PATTERNS


DEFAULT_GREETING = (
    "Hello, and thank you for calling. This is the voice line benchmark agent, "
    "reading a long greeting so that every caller hears continuous speech."
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", default="10,50,100,200", help="comma-separated concurrent call counts")
    p.add_argument("--seconds", type=float, default=20.0, help="measured window after the last leg connected")
    p.add_argument("--pattern", choices=PATTERNS, default="jitter", help="simulator delivery pattern")
    p.add_argument("--speed", type=float, default=1.2, help="provider delivery speed (x real time)")
    p.add_argument("--long-answer-s", type=float, default=None, help="greeting length (default seconds + 15)")
    p.add_argument("--greeting", default=DEFAULT_GREETING)
    p.add_argument("--seed", type=int, default=0, help="simulator jitter seed")
    p.add_argument("--stagger-s", type=float, default=1.0, help="legs connect spread over this long")
    p.add_argument("--settle-s", type=float, default=2.0, help="after the last connect, before the CPU window")
    p.add_argument("--idle-s", type=float, default=2.0, help="idle engine CPU baseline window")
    p.add_argument("--workers", type=int, default=0, help="client processes (0: 1 up to 100 calls, else 2)")
    p.add_argument("--caller-noise", type=float, default=0.0, help="caller noise std-dev (0: digital silence)")
    p.add_argument("--pin", action="store_true", help="engine on the first CPU, sim and clients on the others")
    p.add_argument("--nice", type=int, default=0,
                   help="nice value for every process the bench starts (negative needs root): shields the"
                   " measurement from other load on a shared machine")
    p.add_argument("--engine-nice", type=int, default=None, help="nice value for the engine only (default --nice)")
    p.add_argument("--engine-workers", type=int, default=1,
                   help="engine worker processes (the engine config's `workers`); engine CPU and RSS"
                   " are then those of the whole process tree")
    p.add_argument("--server", choices=["voiceline", "naive"], default="voiceline",
                   help="what serves the calls: the engine, or bench/naive_server.py (per-call sleep baseline)")
    p.add_argument("--config", default=str(REPO / "config" / "ai-agent.yaml"))
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "pacing.json"))
    p.add_argument("--keep-logs", default=None, metavar="DIR", help="keep engine/sim logs under DIR")
    p.add_argument("--strict", action="store_true", help="exit 1 if any target fails")
    args = p.parse_args(argv)
    try:
        args.call_counts = [int(x) for x in args.calls.split(",") if x.strip()]
    except ValueError:
        p.error(f"--calls must be comma-separated integers, got {args.calls!r}")
    if not args.call_counts or min(args.call_counts) < 1:
        p.error("--calls needs positive call counts")
    if args.seconds < 1:
        p.error("--seconds must be >= 1")
    if args.long_answer_s is None:
        args.long_answer_s = args.seconds + 15.0
    if not 1 <= args.engine_workers <= 64:
        p.error("--engine-workers must be within 1..64")
    if args.engine_nice is None:
        args.engine_nice = args.nice
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("espeak-ng") is None:
        print("pacing: espeak-ng is required by the simulator (apt-get install espeak-ng)", file=sys.stderr)
        return 2
    cfg = engine_config(args)
    dg = cfg.get("providers", {}).get("deepgram", {})
    args.engine_output = {
        "encoding": {"mulaw": "mulaw", "alaw": "alaw"}.get(dg.get("output_encoding", "mulaw"), "linear16"),
        "sample_rate": int(dg.get("output_sample_rate", 8000)),
    }
    if args.engine_output["sample_rate"] != RATE:
        print("pacing: the reference audio assumes an 8 kHz provider output", file=sys.stderr)
        return 2
    reference = reference_audio(args.greeting, args.long_answer_s, args.engine_output["encoding"])
    logroot = Path(args.keep_logs) if args.keep_logs else Path(tempfile.mkdtemp(prefix="pacing-"))
    report: dict[str, Any] = {
        "bench": "pacing",
        "version": 1,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "config": {
            "calls": args.call_counts, "seconds": args.seconds, "pattern": args.pattern, "speed": args.speed,
            "long_answer_s": args.long_answer_s, "greeting": args.greeting, "seed": args.seed,
            "stagger_s": args.stagger_s, "settle_s": args.settle_s, "idle_s": args.idle_s,
            "workers": args.workers or "auto", "caller_noise": args.caller_noise, "pin": args.pin,
            "nice": args.nice, "engine_nice": args.engine_nice,
            "server": args.server, "engine_workers": args.engine_workers,
            "streaming": cfg.get("streaming", {}),
            "provider_output": args.engine_output,
            "reference_frames": len(reference) // FRAME_BYTES,
        },
        "machine": {**machine_info(), "calibration_ms_before": cpu_calibration_ms()},
        "git": git_info(),
        "targets": {
            "p99_interval_error_ms": TARGET_P99_MS, "max_interval_error_ms": TARGET_MAX_ERROR_MS,
            "gaps_after_ramp": 0, "rss_per_call_kb": TARGET_RSS_KB_PER_CALL,
            "restarts": 0, "fallbacks": 0,
            "engine_cpu_pct_below": TARGET_CPU_PCT, "flat_per_call_ratio": TARGET_FLAT_RATIO,
            "pause_target_applies_at_speed_x": TARGET_MIN_SPEED,
        },
        "results": [],
    }
    try:
        for n in args.call_counts:
            row = run_round(args, n, reference, logroot)
            report["results"].append(row)
            ta = row["timing_agent"]
            log(f"N={n}: p99 {ta['p99_ms']} ms, pauses {row['streaming']['pauses']}, "
                f"engine CPU {row['engine']['cpu_pct']}%, RSS {row['engine']['rss_mb']} MB")
    finally:
        if not args.keep_logs:
            shutil.rmtree(logroot, ignore_errors=True)
    report["machine"]["calibration_ms_after"] = cpu_calibration_ms()
    report["flatness"] = flatness(report["results"])
    failures = [
        f"N={r['calls']} {k}" for r in report["results"] for k, c in r["checks"].items() if c["pass"] is False
    ]
    if report["flatness"].get("pass") is False:
        failures.append("per-call cost not flat")
    report["verdict"] = {"pass": not failures, "failures": failures}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print_table(report)
    print(f"\nwrote {out}")
    return 1 if (args.strict and failures) else 0


if __name__ == "__main__":
    sys.exit(main())
