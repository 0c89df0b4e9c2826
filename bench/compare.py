#!/usr/bin/env python3
"""voiceline vs a naive per-call-sleep server vs Asterisk's own Playback(), in one run and
one table (issue 11).

    sudo .venv/bin/python bench/compare.py --calls 300 --repeat 3 --out bench/results/compare.json

Two measurements, both printed in one table and written to one JSON report:

* **N calls, loopback** (``--calls``, default 300; 0 skips it): ``bench/pacing.py`` once
  per server (``--server voiceline`` and ``--server naive``, the naive server being
  ``bench/naive_server.py``), in a subprocess: send p99/max of the interval error on the
  caller side, frames missing, engine CPU. Playback() has no row here (no Asterisk).
* **One call through the lab Asterisk 22** (``--calls-one`` simultaneous calls, default
  1, ``--repeat`` runs): a SIPp call per row, the caller's leg captured with tshark and
  judged from the first to the last packet carrying agent speech: packets, lost, max
  inter-arrival delta, mean RFC 3550 jitter, p99 of |delta - 20 ms|, and whether the
  caller heard the greeting frame for frame. Rows (``--rows``): ``voiceline`` (engine in
  audiosocket mode behind the dialplan's AudioSocket(), the Deepgram simulator
  greeting with a long utterance in ``--pattern`` at ``--speed``), ``voiceline-ari`` (the
  same in ari mode: Stasis, externalMedia over AudioSocket, a bridge), ``naive``
  (naive_server.py behind the same AudioSocket() as ``voiceline``), ``playback``
  (Asterisk's Playback() of the same greeting, the ``playback-greeting`` extension of
  lab/configure.sh). Runs are interleaved.

The lab part takes the end-to-end tests' lock and needs root; see compare_lab.py.

Columns of the per-call lab table: ``>22ms`` inter-arrival deltas over the issue's 22 ms
bound; ``drift`` how far the last agent packet arrived behind a 20 ms clock started at
the first (a per-call sleep falls behind, a paced stream stays at ~0); ``heard/gaps/skip/
mism/left`` the frame-for-frame alignment with the greeting (``left``: spoken greeting
frames never reached); ``stalls``/``max st`` machine stalls during the agent audio seen by
lab/stallwitness.py; ``busy`` CPU busy on the whole machine during the call, in cores;
``tshark jit (call)`` tshark's own mean jitter over the whole call, as a cross-check.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchkit import REPO, git_info, machine_cpu, machine_info, make_log
from compare_stats import lab_table, pacing_table, summary_table
from pacing import DEFAULT_GREETING
from pacing_client import reference_audio

log = make_log("compare")
ROWS = ("voiceline", "voiceline-ari", "naive", "playback")
PACING_SERVERS = ("voiceline", "naive")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=300, help="calls of the loopback pacing probe (0: skip it)")
    p.add_argument("--seconds", type=float, default=15.0, help="pacing probe window (pacing.py --seconds)")
    p.add_argument("--pacing-servers", default="voiceline,naive", help="servers of the pacing probe")
    p.add_argument("--pacing-args", default="", help="more pacing.py options, e.g. '--pin --nice -10'")
    p.add_argument("--wait-quiet-s", type=float, default=300.0,
                   help="before each pacing probe, wait up to this long for the machine to go quiet (0: don't)")
    p.add_argument("--quiet-cores", type=float, default=0.3, help="'quiet': busy CPU below this many cores")
    p.add_argument("--calls-one", type=int, default=1, help="simultaneous lab calls per row and run (0: skip the lab)")
    p.add_argument("--repeat", type=int, default=3, help="lab runs per row")
    p.add_argument("--rows", default=",".join(ROWS), help=f"lab rows, from {','.join(ROWS)}")
    p.add_argument("--greeting-s", type=float, default=12.0,
                   help="agent utterance of a lab call: the greeting repeated to at least this long (12: 12.4 s)")
    p.add_argument("--tail-s", type=float, default=3.0, help="call length beyond the greeting")
    p.add_argument("--greeting", default=DEFAULT_GREETING)
    p.add_argument("--pattern", default="jitter", help="simulator delivery pattern (both parts)")
    p.add_argument("--speed", type=float, default=1.2, help="simulator delivery speed (both parts)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rt-priority", type=int, default=5,
                   help="SCHED_RR priority of the whole naive server on lab calls (0: normal scheduling);"
                   " the engine runs as deployed, its pacer's window at streaming.realtime_priority")
    p.add_argument("--config", default=str(REPO / "config" / "ai-agent.yaml"))
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "compare.json"))
    p.add_argument("--keep-logs", default=None, metavar="DIR", help="keep pacing and lab logs and captures under DIR")
    args = p.parse_args(argv)
    args.rows = [r for r in args.rows.split(",") if r]
    args.pacing_servers = [s for s in args.pacing_servers.split(",") if s]
    bad = [r for r in args.rows if r not in ROWS] + [s for s in args.pacing_servers if s not in PACING_SERVERS]
    if bad:
        p.error(f"unknown row(s)/server(s): {', '.join(bad)}")
    if args.calls < 0 or args.calls_one < 0 or args.repeat < 1:
        p.error("--calls and --calls-one must be >= 0, --repeat >= 1")
    if args.greeting_s < 2:
        p.error("--greeting-s must be at least 2")
    return args


# ---------------------------------------------------------------------------------------
# the pacing probe, through bench/pacing.py --server
# ---------------------------------------------------------------------------------------


def pacing_row(server: str, result: dict[str, Any]) -> dict[str, Any]:
    """The numbers the comparison shows from one pacing.py result row."""
    ta = result["timing_agent"]
    frames, eng = result["frames"], result["engine"]
    failed = [k for k, c in result.get("checks", {}).items() if c.get("pass") is False]
    return {
        "server": server,
        "calls": result["calls"],
        "send_p50_ms": ta.get("p50_ms"),
        "send_p99_ms": ta.get("p99_ms"),
        "send_p999_ms": ta.get("p99.9_ms"),
        "send_max_ms": ta.get("max_ms"),
        "missing": frames.get("missing"),
        "gaps": frames.get("gaps_client"),
        "gaps_steady": frames.get("gaps_steady"),  # after the connect ramp (pacing.py's target)
        "mismatched": frames.get("mismatched"),
        "calls_without_agent_audio": frames.get("calls_without_agent_audio"),
        "pauses": result["streaming"].get("pauses"),
        "cpu_pct": eng.get("cpu_pct"),
        "cpu_per_call_pct": eng.get("cpu_per_call_pct"),
        "rss_mb": eng.get("rss_mb"),
        "foreign_core_pct": result.get("machine", {}).get("foreign_core_pct"),
        "status": "FAIL" if failed else "PASS",
        "failed_checks": failed,
    }


def wait_for_quiet(limit_cores: float, timeout_s: float) -> dict[str, Any]:
    """Wait until the machine is nearly idle (busy CPU over 2 s below ``limit_cores``) or
    ``timeout_s`` passed: another bench or test suite on a shared 2-core machine changes
    the N-call numbers more than anything measured. Returns what was seen."""
    deadline = time.monotonic() + timeout_s
    waited = 0.0
    while True:
        a = machine_cpu()
        time.sleep(2.0)
        b = machine_cpu()
        busy = (b[0] - a[0]) / max(1, b[1] - a[1]) * (os.cpu_count() or 1)
        if busy < limit_cores or time.monotonic() >= deadline:
            return {"busy_cores": round(busy, 2), "waited_s": round(waited, 1), "quiet": busy < limit_cores}
        if waited == 0.0:
            log(f"machine busy ({busy:.2f} cores); waiting up to {timeout_s:g} s for it to go quiet")
        waited += 2.0


def run_pacing(args: argparse.Namespace, server: str, workdir: Path) -> dict[str, Any]:
    quiet = wait_for_quiet(args.quiet_cores, args.wait_quiet_s) if args.wait_quiet_s > 0 else None
    out = workdir / f"pacing-{server}.json"
    cmd = [sys.executable, str(REPO / "bench" / "pacing.py"), "--calls", str(args.calls),
           "--seconds", f"{args.seconds:g}", "--pattern", args.pattern, "--speed", f"{args.speed:g}",
           "--seed", str(args.seed), "--greeting", args.greeting, "--config", args.config,
           "--server", server, "--out", str(out), *shlex.split(args.pacing_args)]
    if args.keep_logs:
        cmd += ["--keep-logs", str(Path(args.keep_logs) / f"pacing-{server}")]
    log(f"pacing probe: {server}, {args.calls} calls x {args.seconds:g} s")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False,
                          timeout=args.seconds * 4 + 300)
    (workdir / f"pacing-{server}.log").write_text(proc.stdout + proc.stderr)
    if "unrecognized arguments: --server" in proc.stderr:
        return {"server": server, "error": "bench/pacing.py has no --server option yet", "status": "n/a"}
    if proc.returncode != 0 or not out.exists():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        return {"server": server, "error": f"pacing.py exited {proc.returncode}: {tail}", "status": "error"}
    report = json.loads(out.read_text())
    row = pacing_row(server, report["results"][0])
    row["engine_commit"] = report.get("git", {}).get("commit")
    row["command"] = " ".join(shlex.quote(c) for c in cmd[1:])
    row["machine_before"] = quiet
    row["pacing_result"] = {k: v for k, v in report["results"][0].items() if k != "calls_detail"}
    log(f"pacing probe {server}: send p99 {row['send_p99_ms']} ms, max {row['send_max_ms']} ms, "
        f"missing {row['missing']}, CPU {row['cpu_pct']}%")
    return row


# ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("espeak-ng") is None:
        print("compare: espeak-ng is required (apt-get install espeak-ng)", file=sys.stderr)
        return 2
    reference = reference_audio(args.greeting, args.greeting_s, "mulaw")
    report: dict[str, Any] = {
        "bench": "compare",
        "version": 1,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "config": {
            "calls": args.calls, "seconds": args.seconds, "pacing_servers": args.pacing_servers,
            "pacing_args": args.pacing_args, "wait_quiet_s": args.wait_quiet_s, "quiet_cores": args.quiet_cores,
            "calls_one": args.calls_one, "repeat": args.repeat,
            "rows": args.rows, "greeting_s": args.greeting_s,
            "reference_s": round(len(reference) / 16000, 2), "tail_s": args.tail_s, "greeting": args.greeting,
            "pattern": args.pattern, "speed": args.speed, "seed": args.seed, "rt_priority": args.rt_priority,
        },
        "machine": machine_info(),
        "git": git_info(),
        "pacing": [],
        "lab": {},
    }
    workdir = Path(tempfile.mkdtemp(prefix="compare-"))
    try:
        if args.calls_one and args.rows:
            from compare_lab import run_lab  # the lab modules need root only when used

            report["lab"] = run_lab(args, reference, log)
        if args.calls:
            for server in args.pacing_servers:
                report["pacing"].append(run_pacing(args, server, workdir))
    finally:
        if args.keep_logs:
            keep = Path(args.keep_logs)
            keep.mkdir(parents=True, exist_ok=True)
            for f in workdir.iterdir():
                shutil.copy(f, keep / f.name)
        shutil.rmtree(workdir, ignore_errors=True)
    report["git_after"] = git_info()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    commit = (report["git"].get("commit") or "?")[:10]
    dirty = report["git"].get("uncommitted_engine_changes")
    print(f"engine at {commit}" + (f" with uncommitted changes in {', '.join(dirty)}" if dirty else ""))
    if report["lab"]:
        print(f"{report['lab'].get('asterisk', '')}\n")
    print("\n".join(summary_table(report)))
    if report["pacing"]:
        print(f"\n{args.calls} calls, loopback (bench/pacing.py --server ..., {args.seconds:g} s, "
              f"{args.pattern} {args.speed:g}x; send = |interval - 20 ms| from kernel receive stamps, ms):")
        print("\n".join(pacing_table(report)))
    if report["lab"]:
        print(f"\none call through the lab Asterisk, caller leg over the agent audio (ms; {args.repeat} run(s)):")
        print("\n".join(lab_table(report)))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
