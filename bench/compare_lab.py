"""The lab side of bench/compare.py: one SIPp call through the real lab Asterisk 22 per row
(voiceline, the naive per-call-sleep server, Asterisk's own Playback()), the caller leg
captured with tshark and judged over the agent audio.

The lab is shared with the end-to-end tests: everything here runs under their lock
(``lab/.cache/e2e.lock``), starts Asterisk the way their fixtures do when it is not
running, and stops it again only if it started it. Needs root (chroot, tshark,
real-time priorities)."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from benchkit import (
    REPO,
    bench_engine_config,
    child_env,
    json_event,
    machine_cpu,
    stop_process,
    wait_for_file_line,
)
from compare_stats import agent_span, heard_greeting, interval_stats, reference_frames, spread

import labkit  # noqa: E402
from labload import CallInBackground  # noqa: E402
from stallwitness import StallWitness  # noqa: E402

from voiceline.audio import g711  # noqa: E402

ARI_PASSWORD = "voiceline-lab"  # the e2e fixtures' password; configure.sh writes it
# Where the playback-greeting extension (lab/configure.sh) finds its file, inside the root.
PLAYBACK_DIR = "var/lib/asterisk/sounds/voiceline-bench"
# voiceline rows: engine mode and the extension that reaches it (lab/configure.sh)
VOICELINE_ROWS = {"voiceline": ("audiosocket", "audiosocket"), "voiceline-ari": ("ari", "stasis")}


@contextlib.contextmanager
def lab_asterisk(log) -> Iterator[labkit.AsteriskLab]:
    """Lab lock, lab built, Asterisk running with the lab config; on exit Asterisk is left
    as it was found (stopped again only if this started it)."""
    reason = labkit.lab_unavailable_reason()
    if reason:
        raise labkit.LabError(f"the lab cannot run here: {reason}")
    log(f"waiting for the lab lock {labkit.LAB_LOCK_PATH}")
    with labkit.lab_lock():
        labkit.ensure_lab()
        lab = labkit.AsteriskLab(ari_password=ARI_PASSWORD)
        was_running = lab.running()
        lab.start()
        log(f"lab Asterisk up ({'was already running' if was_running else 'started here'})")
        try:
            yield lab
        finally:
            lab.stop()


def _realtime(priority: int):
    """preexec_fn: SCHED_RR at ``priority`` for the whole process (the naive server, which
    has no pacer window of its own; 5 is below Asterisk's 10), reset on fork."""
    if priority <= 0:
        return None

    def apply() -> None:
        os.sched_setscheduler(0, os.SCHED_RR | os.SCHED_RESET_ON_FORK, os.sched_param(priority))

    return apply


class Proc:
    """A child process logging to a file, started at the bench's real-time priority."""

    def __init__(self, cmd: list[str], log_path: Path, env: dict[str, str], rt_priority: int = 0) -> None:
        self.log_path = log_path
        with log_path.open("w") as fh:
            self.proc = subprocess.Popen(
                cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env=env, preexec_fn=_realtime(rt_priority)
            )

    def wait_event(self, name: str, timeout: float = 30.0) -> dict[str, Any]:
        def match(line: str) -> dict[str, Any] | None:
            ev = json_event(line)
            return ev if ev and ev.get("event") == name else None

        return wait_for_file_line(self.log_path, self.proc, match, timeout, self.log_path.stem)

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            ev = json_event(line)
            if ev and ev.get("event") == name:
                out.append(ev)
        return out

    def stop(self) -> None:
        stop_process(self.proc)


def start_sim(args: argparse.Namespace, workdir: Path) -> tuple[Proc, str]:
    sim = Proc(
        [sys.executable, "-m", "voiceline.sim.deepgram_sim", "--host", "127.0.0.1", "--port", "0",
         "--pattern", args.pattern, "--speed", str(args.speed), "--seed", str(args.seed),
         "--long-answer-s", str(args.greeting_s), "--greeting", args.greeting],
        workdir / "sim.log", child_env({}),
    )

    def url_of(line: str) -> str | None:
        marker = "deepgram simulator on "
        return line.split(marker, 1)[1].split()[0] if marker in line else None

    return sim, wait_for_file_line(sim.log_path, sim.proc, url_of, 30.0, "deepgram simulator")


def start_voiceline(
    args: argparse.Namespace, lab: labkit.AsteriskLab, mode: str, sim_url: str, workdir: Path
) -> Proc:
    data = bench_engine_config(yaml.safe_load(Path(args.config).read_text()))
    data["audiosocket"]["port"] = lab.audiosocket_port  # where the dialplan's AudioSocket() connects
    data.setdefault("logging", {})["format"] = "json"
    config = workdir / "engine.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    query = urllib.parse.urlencode({"pattern": args.pattern, "speed": args.speed, "long_answer_s": args.greeting_s,
                                    "greeting": args.greeting, "seed": args.seed})
    env = child_env({
        "DEEPGRAM_URL": f"{sim_url}?{query}", "DEEPGRAM_API_KEY": "bench", "VOICELINE_LOG_LEVEL": "INFO",
        "ARI_PASSWORD": ARI_PASSWORD, "VOICELINE_HISTORY_URL": f"sqlite:///{workdir / 'calls.db'}",
        "VOICELINE_FALLBACK_DIR": str(lab.root / "var/lib/asterisk/sounds/voiceline"),
    })
    engine = Proc(
        [sys.executable, "-m", "voiceline.cli", "serve", "--config", str(config),
         "--mode", mode, "--provider", "deepgram"],
        # As deployed: normal scheduling; the pacer raises itself for its spin and
        # writes (streaming.realtime_priority in the config).
        workdir / "engine.log", env,
    )
    engine.wait_event("voiceline_started")
    if mode == "ari":
        engine.wait_event("ari.events.connected")
    return engine


def start_naive(args: argparse.Namespace, lab: labkit.AsteriskLab, workdir: Path) -> Proc:
    naive = Proc(
        [sys.executable, str(REPO / "bench" / "naive_server.py"), "--port", str(lab.audiosocket_port),
         "--seconds", str(args.greeting_s), "--greeting", args.greeting],
        workdir / "naive.log", child_env({}), args.rt_priority,
    )
    naive.wait_event("voiceline_started")
    return naive


def write_playback_file(lab: labkit.AsteriskLab, reference: bytes) -> Path:
    """The greeting as 8 kHz mu-law where the playback-greeting extension plays it from:
    the same audio the other rows send (the caller's leg is PCMU, so Asterisk plays it
    without transcoding)."""
    folder = lab.root / PLAYBACK_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "greeting.ulaw"
    path.write_bytes(g711.slin_to_mulaw(reference))
    return path


def measure_call(
    result: labkit.CallResult, ref_frames: list[bytes], stalls: list[Any], rtp_port: int
) -> dict[str, Any]:
    """Caller-leg numbers of one finished call, over its agent audio."""
    packets = [p for p in labkit.read_rtp_packets(result.pcap) if p.dst_port == rtp_port] if result.pcap else []
    span = agent_span(packets)
    out: dict[str, Any] = {
        "sipp_ok": result.ok,
        "hangup": result.hangup,
        "call_s": round(result.duration_s, 2),
        "whole_call": interval_stats(packets),
        "tshark_mean_jitter_ms": result.received.tshark_mean_jitter_ms,
        "tshark_max_delta_ms": result.received.tshark_max_delta_ms,
        "agent": None,
        "heard": None,
        "call_dir": str(result.call_dir),
    }
    if span is None:
        out["error"] = "no agent speech reached the caller"
        return out
    first, last = span
    during = packets[first : last + 1]
    out["agent_span_packets"] = [first, last]
    out["agent"] = interval_stats(during)
    # from the first spoken packet to the end of the call: the greeting's quiet tail
    # (below the speech threshold) is after the span but still part of what was heard
    out["heard"] = heard_greeting([p.payload for p in packets[first:]], ref_frames)
    t0, t1 = during[0].time, during[-1].time
    inside = [s for s in stalls if s.end >= t0 and s.start <= t1]
    out["machine_stalls"] = {
        "count": len(inside), "max_ms": round(max((s.duration_ms for s in inside), default=0.0), 1)
    }
    return out


def one_run(
    args: argparse.Namespace, lab: labkit.AsteriskLab, row: str, run: int, reference: bytes, logroot: Path, log
) -> list[dict[str, Any]]:
    """One run of one row: ``args.calls_one`` simultaneous calls, each measured."""
    workdir = logroot / f"{row}-{run}"
    workdir.mkdir(parents=True, exist_ok=True)
    procs: list[Proc] = []
    engine_events: dict[str, Any] = {}
    try:
        if row in VOICELINE_ROWS:
            mode, exten = VOICELINE_ROWS[row]
            sim, url = start_sim(args, workdir)
            procs.append(sim)
            procs.append(start_voiceline(args, lab, mode, url, workdir))
        elif row == "naive":
            procs.append(start_naive(args, lab, workdir))
            exten = "audiosocket"
        else:
            exten = "playback-greeting"
        # the whole greeting (the reference, repeated past --greeting-s) plus a tail, so
        # that even a stream that drifted behind real time is heard to its end
        duration = round(len(reference) / 16000 + args.tail_s, 1)
        silence = labkit.make_silence_ulaw(duration, workdir / "silence.ulaw")
        busy_a = machine_cpu()
        with StallWitness() as witness:
            calls = [
                CallInBackground(
                    exten, silence, duration,
                    rtp_port=labkit.SIPP_RTP_PORT + 2 * k, sip_port=labkit.SIPP_SIP_PORT + k,
                    call_dir=workdir / f"call-{k}",
                )
                for k in range(args.calls_one)
            ]
            results = [c.result(duration + 120) for c in calls]
            stalls = witness.stalls
        busy_b = machine_cpu()
        # CPU busy on the whole machine during the calls (ours included), in cores
        busy_cores = round((busy_b[0] - busy_a[0]) / max(1, busy_b[1] - busy_a[1]) * (os.cpu_count() or 1), 2)
        if procs and row != "playback":
            time.sleep(1.0)  # the call_summary follows the hang-up
            server = procs[-1]
            summaries = server.events("call_summary")
            ended = server.events("STREAMING ENDED")
            engine_events = {
                "call_summaries": len(summaries),
                "pauses": sum(int(e.get("pauses") or 0) for e in ended),
                "silence_frames_inserted": sum(int(e.get("silence_frames_inserted") or 0) for e in ended),
                "drift_ms": [s.get("drift_ms") for s in summaries if "drift_ms" in s],
            }
    finally:
        for p in reversed(procs):
            p.stop()
    ref_frames = reference_frames(reference)
    runs = []
    for k, res in enumerate(results):
        m = measure_call(res, ref_frames, stalls, labkit.SIPP_RTP_PORT + 2 * k)
        m.update(run=run, call=k, server_log=engine_events, machine_busy_cores=busy_cores)
        if not res.ok:
            m["error"] = f"sipp exit {res.returncode}: {res.errors()[-300:]}"
        runs.append(m)
        a = m.get("agent") or {}
        log(f"{row} run {run} call {k}: packets {a.get('packets')} lost {a.get('lost')} "
            f"max delta {a.get('max_delta_ms')} ms mean jitter {a.get('mean_jitter_ms')} ms "
            f"heard {m.get('heard')}")
    return runs


def run_lab(args: argparse.Namespace, reference: bytes, log) -> dict[str, Any]:
    """Every row ``args.repeat`` times, interleaved (run 1 of each row, then run 2, ...) so
    a slow spell of the shared machine does not land on one row only."""
    keep = Path(args.keep_logs) / "lab" if args.keep_logs else None
    logroot = keep or Path(tempfile.mkdtemp(prefix="compare-lab-"))
    logroot.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict[str, Any]]] = {r: [] for r in args.rows}
    with lab_asterisk(log) as lab:
        if "playback" in rows:
            write_playback_file(lab, reference)
        for run in range(1, args.repeat + 1):
            for row in args.rows:
                try:
                    rows[row].extend(one_run(args, lab, row, run, reference, logroot, log))
                except (labkit.LabError, RuntimeError, OSError) as exc:
                    log(f"{row} run {run} failed: {exc}")
                    rows[row].append({"run": run, "call": 0, "error": str(exc)})
        asterisk_version = lab.cli("core show version").strip()
    if keep is None:
        shutil.rmtree(logroot, ignore_errors=True)
        for runs in rows.values():
            for r in runs:
                r.pop("call_dir", None)
    out_rows = []
    for row, runs in rows.items():
        agents = [r.get("agent") or {} for r in runs]
        heard = [r.get("heard") for r in runs]
        out_rows.append({
            "row": row,
            "runs": runs,
            "spread": {
                key: spread([a.get(key) for a in agents])
                for key in ("max_delta_ms", "mean_jitter_ms", "p99_abs_err_ms", "packets", "lost", "over_22ms")
            },
            "heard_all": all(
                h is not None and h["found"] and h["gaps"] == h["mismatched"] == h["skipped"] == 0 for h in heard
            )
            if heard else None,
        })
    return {"asterisk": asterisk_version, "logs": str(logroot) if keep else None, "rows": out_rows}
