"""One round of the pacing bench (parent process, synchronous): start the simulator and the
engine, hand the legs to client workers, sample CPU and memory over the steady window, read
the engine log, and build the row of the report."""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import subprocess
import sys
import time
import urllib.parse
import uuid as uuidlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from benchkit import (
    REPO,
    CpuSample,
    bench_engine_config,
    child_env,
    cpu_pct,
    json_event,
    machine_busy_pct,
    make_log,
    proc_cpu_s,
    proc_status,
    sample_cpu,
    stop_process,
    wait_for_file_line,
)
from pacing_client import realtime_offset, worker_main
from pacing_report import row_checks
from pacing_stalls import stall_report

sys.path.insert(0, str(REPO / "lab"))
from stallwitness import WAKE_PERIOD_S, StallWitness  # noqa: E402

log = make_log("pacing")

BENCH_DIR = Path(__file__).resolve().parent
NAIVE_SERVER = BENCH_DIR / "naive_server.py"


# ---- the engine's process tree (a supervisor and its worker processes with workers > 1)


def process_tree(root: int) -> list[int]:
    """``root`` and every process descending from it, from the ppid field of /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        ppid = int(raw[raw.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def sample_with_engine_tree(pids: dict[str, int], engine_pid: int):
    """``sample_cpu`` with ``engine`` = the CPU of the engine's whole process tree."""
    sample = sample_cpu({k: v for k, v in pids.items() if k != "engine"})
    times = [proc_cpu_s(pid) for pid in process_tree(engine_pid)]
    sample.cpu["engine"] = sum(t for t in times if t is not None) if times[0] is not None else None
    return sample


def engine_status(engine_pid: int) -> dict[str, int]:
    """VmRSS, VmHWM and Threads summed over the engine's process tree (pages the
    processes share, such as the interpreter's, count once per process), and the
    number of processes."""
    total: dict[str, int] = {"processes": 0}
    for pid in process_tree(engine_pid):
        status = proc_status(pid)
        if not status:
            continue
        total["processes"] += 1
        for key, value in status.items():
            total[key] = total.get(key, 0) + value
    return total


def start_sim(args: argparse.Namespace, workdir: Path, cpus: set[int] | None) -> tuple[subprocess.Popen, str]:
    log_path = workdir / "sim.log"
    cmd = [
        sys.executable, "-m", "voiceline.sim.deepgram_sim", "--host", "127.0.0.1", "--port", "0",
        "--pattern", args.pattern, "--speed", str(args.speed), "--seed", str(args.seed),
        "--long-answer-s", str(args.long_answer_s), "--greeting", args.greeting,
    ]
    with log_path.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env=child_env({}))
    if cpus:
        os.sched_setaffinity(proc.pid, cpus)
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, proc.pid, args.nice)

    def url_of(line: str) -> str | None:
        marker = "deepgram simulator on "
        if marker in line:
            return line.split(marker, 1)[1].split()[0]
        return None

    url = wait_for_file_line(log_path, proc, url_of, 30.0, "deepgram simulator")
    return proc, url


def engine_config(args: argparse.Namespace) -> dict[str, Any]:
    """``--config`` with a free AudioSocket port, http and history off, JSON logs."""
    data = bench_engine_config(yaml.safe_load(Path(args.config).read_text()))
    data.setdefault("logging", {})["format"] = "json"
    data["workers"] = args.engine_workers
    return data


def start_engine(
    args: argparse.Namespace, workdir: Path, sim_url: str, cpus: set[int] | None
) -> tuple[subprocess.Popen, int, Path]:
    config_path = workdir / "engine.yaml"
    config_path.write_text(yaml.safe_dump(engine_config(args), sort_keys=False))
    query = urllib.parse.urlencode(
        {
            "pattern": args.pattern,
            "speed": args.speed,
            "long_answer_s": args.long_answer_s,
            "greeting": args.greeting,
            "seed": args.seed,
        }
    )
    env = child_env(
        {
            "DEEPGRAM_URL": f"{sim_url}?{query}",
            "DEEPGRAM_API_KEY": "bench",
            "VOICELINE_LOG_LEVEL": "INFO",
            "VOICELINE_HISTORY_URL": f"sqlite:///{workdir / 'calls.db'}",
        }
    )
    log_path = workdir / "engine.log"
    cmd = [
        sys.executable, "-m", "voiceline.cli", "serve", "--config", str(config_path),
        "--mode", "audiosocket", "--provider", "deepgram",
    ]
    if args.server == "naive":
        # The baseline (bench/naive_server.py) under the same probes: same log contract.
        if not NAIVE_SERVER.exists():
            raise RuntimeError(f"--server naive needs {NAIVE_SERVER}, which does not exist")
        cmd = [sys.executable, str(NAIVE_SERVER), "--port", "0", "--seconds", str(args.long_answer_s),
               "--greeting", args.greeting]
    with log_path.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    if cpus:
        os.sched_setaffinity(proc.pid, cpus)
    if args.engine_nice:
        os.setpriority(os.PRIO_PROCESS, proc.pid, args.engine_nice)

    def port_of(line: str) -> int | None:
        ev = json_event(line)
        if ev and ev.get("event") == "voiceline_started":
            return int(str(ev["audiosocket"]).rsplit(":", 1)[1])
        return None

    port = wait_for_file_line(log_path, proc, port_of, 30.0, "engine")
    return proc, port, log_path


def count_events(path: Path, name: str) -> int:
    n = 0
    with contextlib.suppress(OSError), path.open("r", errors="replace") as fh:
        for line in fh:
            if name in line:
                ev = json_event(line)
                if ev and ev.get("event") == name:
                    n += 1
    return n


def parse_engine_log(path: Path) -> dict[str, Any]:
    starts: Counter[tuple[str, str]] = Counter()
    first_frame_ms: dict[str, float] = {}
    ended: list[dict[str, Any]] = []
    summaries: dict[str, dict[str, Any]] = {}
    fallbacks = 0
    restarts_logged = 0
    notable: Counter[str] = Counter()
    with path.open("r", errors="replace") as fh:
        for line in fh:
            ev = json_event(line)
            if ev is None:
                continue
            name = ev.get("event")
            level = ev.get("level", "")
            if name == "STREAMING STARTED":
                starts[(ev.get("call_id"), ev.get("turn_id"))] += 1
                first_frame_ms.setdefault(ev.get("call_id"), ev.get("first_frame_latency_ms"))
            elif name == "STREAMING ENDED":
                ended.append(ev)
            elif name == "call_summary":
                summaries[ev.get("call_id")] = ev
            elif name == "streaming fallback requested":
                fallbacks += 1
            elif name == "streaming restarted a turn":
                restarts_logged += 1
            if level in ("warning", "error", "critical"):
                notable[f"{level}: {name}"] += 1
    restarts = sum(c - 1 for c in starts.values() if c > 1)
    return {
        "streaming_started": sum(starts.values()),
        "turns": len(starts),
        "restarts": max(restarts, restarts_logged),
        "pauses": sum(int(e.get("pauses") or 0) for e in ended),
        "silence_frames_inserted": sum(int(e.get("silence_frames_inserted") or 0) for e in ended),
        "late_chunks_dropped": sum(int(e.get("late_chunks_dropped") or 0) for e in ended),
        "end_reasons": dict(Counter(e.get("reason") for e in ended)),
        "fallbacks": fallbacks + sum(1 for e in ended if e.get("reason") == "fallback"),
        "first_frame_latency_ms": first_frame_ms,
        "summaries": summaries,
        "warnings": dict(notable),
    }


def _pct(values: np.ndarray, ps=(50, 90, 99, 99.9)) -> dict[str, float | int | None]:
    if values.size == 0:
        return {"n": 0, **{f"p{p:g}_ms": None for p in ps}, "max_ms": None, "over_5ms": None}
    q = np.percentile(values, ps)
    out: dict[str, Any] = {"n": int(values.size)}
    out.update({f"p{p:g}_ms": round(float(v), 3) for p, v in zip(ps, q, strict=True)})
    out["max_ms"] = round(float(values.max()), 3)
    out["over_5ms"] = int((values > 5.0).sum())
    return out


def run_round(args: argparse.Namespace, n: int, reference: bytes, logroot: Path) -> dict[str, Any]:
    workdir = logroot / f"calls-{n}"
    workdir.mkdir(parents=True, exist_ok=True)
    ncpu = len(os.sched_getaffinity(0))
    engine_cpus = other_cpus = None
    if args.pin and ncpu >= 2:
        cpus = sorted(os.sched_getaffinity(0))
        engine_cpus, other_cpus = {cpus[0]}, set(cpus[1:])
    workers = args.workers if args.workers > 0 else (1 if n <= 100 else 2)
    workers = max(1, min(workers, n))
    sim = engine = None
    procs: list[Any] = []
    witness, witness_error = start_witness()
    try:
        sim, sim_url = start_sim(args, workdir, other_cpus)
        engine, port, engine_log = start_engine(args, workdir, sim_url, engine_cpus)
        log(f"N={n}: engine pid {engine.pid} on 127.0.0.1:{port}, sim pid {sim.pid}, {workers} client worker(s)")

        # idle baseline
        time.sleep(0.5)
        idle_a = sample_with_engine_tree({"engine": engine.pid}, engine.pid)
        time.sleep(args.idle_s)
        idle_b = sample_with_engine_tree({"engine": engine.pid}, engine.pid)
        rss_idle = engine_status(engine.pid)

        # client workers
        ctx = mp.get_context("spawn")
        pipes = []
        for w in range(workers):
            parent_end, child_end = ctx.Pipe()
            p = ctx.Process(target=worker_main, args=(child_end,), name=f"pacing-client-{w}", daemon=True)
            p.start()
            if other_cpus:
                os.sched_setaffinity(p.pid, other_cpus)
            if args.nice:
                os.setpriority(os.PRIO_PROCESS, p.pid, args.nice)
            procs.append(p)
            pipes.append(parent_end)
        call_ids = [str(uuidlib.uuid4()) for _ in range(n)]
        t_start = time.monotonic() + 1.5  # time for the spawned workers to import
        t_all = t_start + args.stagger_s
        t_end = t_all + args.seconds
        settle = min(args.settle_s, args.seconds / 2)
        win_a_t, win_b_t = t_all + settle, t_end - 0.1
        for w, pipe in enumerate(pipes):
            pipe.send(
                {
                    "worker": w, "host": "127.0.0.1", "port": port,
                    "legs": [(i, call_ids[i]) for i in range(w, n, workers)],
                    "n_total": n, "t_start": t_start, "t_end": t_end,
                    "stagger_s": args.stagger_s, "caller_noise": args.caller_noise,
                    "reference": reference,
                }
            )
        pids = {"engine": engine.pid, "sim": sim.pid, **{f"client{w}": p.pid for w, p in enumerate(procs)}}
        time.sleep(max(0.0, win_a_t - time.monotonic()))
        win_a = sample_with_engine_tree(pids, engine.pid)
        rss_series = []
        while time.monotonic() < win_b_t:
            time.sleep(min(1.0, max(0.0, win_b_t - time.monotonic())))
            rss_series.append(engine_status(engine.pid).get("VmRSS"))
        win_b = sample_with_engine_tree(pids, engine.pid)
        status = engine_status(engine.pid)

        results = []
        for pipe in pipes:
            if not pipe.poll(args.seconds + 60):
                raise RuntimeError("a client worker did not report")
            res = pipe.recv()
            if "fatal" in res:
                raise RuntimeError(f"client worker {res['worker']} failed:\n{res['fatal']}")
            results.append(res)
        for p in procs:
            p.join(10)

        # the engine logs one call_summary per call once it has torn the call down
        deadline = time.monotonic() + 30
        summaries = count_events(engine_log, "call_summary")
        while summaries < n and time.monotonic() < deadline:
            time.sleep(0.2)
            summaries = count_events(engine_log, "call_summary")
        if summaries < n:
            log(f"N={n}: only {summaries}/{n} call_summary lines after 30 s")
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        stop_process(engine)
        stop_process(sim)
        if witness is not None:
            witness.stop()

    engine_stats = parse_engine_log(engine_log)
    calls = sorted((c for r in results for c in r["calls"]), key=lambda c: c["index"])
    def cat(key: str) -> np.ndarray:
        return np.concatenate([c.pop(key) for c in calls]) if calls else np.zeros(0)

    err_all, err_agent, err_all_read, err_agent_read = (
        cat(k) for k in ("_err_all", "_err_agent", "_err_all_read", "_err_agent_read")
    )
    t_all, t_agent = cat("_t_all"), cat("_t_agent")
    # steady state: all legs connected and settled, until hang-up (the CPU window)
    steady_agent = (t_agent >= win_a_t - t_start) & (t_agent <= t_end - t_start)
    steady_all = (t_all >= win_a_t - t_start) & (t_all <= t_end - t_start)
    lag = np.concatenate([r["lag_ms"] for r in results])
    late_at = np.concatenate([c.pop("_late_at") for c in calls]) if calls else np.zeros(0)
    gap_at = np.concatenate([c.pop("_gap_at") for c in calls]) if calls else np.zeros(0)
    if witness is not None:
        # The witness reports epoch seconds and notices a stall one wake period late.
        offset = realtime_offset()
        stalls = [(st.start - WAKE_PERIOD_S - offset - t_start, st.end - offset - t_start) for st in witness.stalls]
        machine_stalls = stall_report(t_agent[steady_agent].astype(np.float64), err_agent[steady_agent],
                                      stalls, window=(win_a_t - t_start, t_end - t_start))
    else:
        machine_stalls = {"available": False, "reason": witness_error}
    span = int(np.ceil(t_end - t_start)) + 1
    timeline = {
        "second_from_first_connect": list(range(span)),
        "intervals_over_5ms": np.bincount(np.clip(late_at, 0, span - 1).astype(int), minlength=span).tolist(),
        "gaps": np.bincount(np.clip(gap_at, 0, span - 1).astype(int), minlength=span).tolist(),
    }

    # provider delivery speed per call: agent audio the engine received / time it played
    fmt = args.engine_output
    bytes_per_s = fmt["sample_rate"] * (2 if fmt["encoding"] == "linear16" else 1)
    speeds = []
    for c in calls:
        s = engine_stats["summaries"].get(c["call_id"])
        c["engine"] = (
            {k: s.get(k) for k in ("duration_s", "end_reason", "frames_in", "frames_out", "agent_bytes",
                                   "inbound_dropped", "provider_errors")}
            if s else None
        )
        lat = (engine_stats["first_frame_latency_ms"].get(c["call_id"]) or 0.0) / 1000.0
        if s and c["first_agent_at"] is not None and s.get("agent_bytes"):
            played = t_end - c["first_agent_at"] + lat
            if played > 1.0:
                speeds.append(s["agent_bytes"] / bytes_per_s / played)
        c["greeting_latency_s"] = (
            round(c["first_agent_at"] - c["connected_at"], 3)
            if c["first_agent_at"] is not None and c["connected_at"] is not None else None
        )
        if c["first_agent_at"] is not None:
            c["first_agent_at"] = round(c["first_agent_at"] - t_start, 3)
        if c["connected_at"] is not None:
            c["connected_at"] = round(c["connected_at"] - t_start, 3)

    eng_cpu = cpu_pct(win_a, win_b, "engine")
    idle_cpu = cpu_pct(idle_a, idle_b, "engine")
    rss_mb = status.get("VmRSS", 0) / 1024
    rss_idle_mb = rss_idle.get("VmRSS", 0) / 1024
    greet = [c["greeting_latency_s"] for c in calls if c["greeting_latency_s"] is not None]
    client_cpu = [cpu_pct(win_a, win_b, f"client{w}") for w in range(len(procs))]
    summ = engine_stats.pop("summaries")
    engine_stats.pop("first_frame_latency_ms")
    connected = [c for c in calls if c["connected_at"] is not None]
    row_sim_cpu = cpu_pct(win_a, win_b, "sim")
    row = {
        "calls": n,
        "workers": len(procs),
        "window_s": round(win_b.t - win_a.t, 2),
        "timing_agent": _pct(err_agent[steady_agent]),
        "timing_all": _pct(err_all[steady_all]),
        "timing_agent_read": _pct(err_agent_read[steady_agent]),
        "timing_all_read": _pct(err_all_read[steady_all]),
        "timing_agent_whole": _pct(err_agent),
        "timing_agent_read_whole": _pct(err_agent_read),
        "timing_all_whole": _pct(err_all),
        "steady_window_s": [round(win_a_t - t_start, 2), round(t_end - t_start, 2)],
        "frames": {
            "received": int(sum(c["frames_received"] for c in calls)),
            "received_min_per_call": int(min((c["frames_received"] for c in calls), default=0)),
            "engine_frames_out": int(sum((c["engine"] or {}).get("frames_out") or 0 for c in calls)),
            "agent": int(sum(c["agent_frames"] for c in calls)),
            "missing": int(sum(c["missing"] for c in calls)),
            "gaps_client": int(sum(c["gaps"] for c in calls)),
            # silence inside agent speech after the connect ramp: a pause there is
            # a pause in steady state, which the goal allows none of
            "gaps_steady": int(((gap_at >= win_a_t - t_start) & (gap_at <= t_end - t_start)).sum()),
            "gaps_engine": engine_stats["silence_frames_inserted"],
            "mismatched": int(sum(c["mismatched"] for c in calls)),
            "skipped_ref": int(sum(c["skipped_ref"] for c in calls)),
            "calls_without_agent_audio": int(sum(1 for c in calls if c["agent_frames"] == 0)),
        },
        "streaming": {k: v for k, v in engine_stats.items() if k != "warnings"},
        "provider": {
            "speed_x_mean": round(float(np.mean(speeds)), 3) if speeds else None,
            "speed_x_min": round(float(np.min(speeds)), 3) if speeds else None,
            "greeting_latency_s_p50": round(float(np.median(greet)), 3) if greet else None,
            "greeting_latency_s_max": round(float(np.max(greet)), 3) if greet else None,
        },
        "engine": {
            "cpu_pct": eng_cpu,
            "cpu_idle_pct": idle_cpu,
            "cpu_per_call_pct": round((eng_cpu - (idle_cpu or 0.0)) / n, 3) if eng_cpu is not None else None,
            "rss_idle_mb": round(rss_idle_mb, 1),
            "rss_mb": round(rss_mb, 1),
            "rss_hwm_mb": round(status.get("VmHWM", 0) / 1024, 1),
            "rss_series_mb": [round(v / 1024, 1) for v in rss_series if v],
            "rss_per_call_kb": round((rss_mb - rss_idle_mb) * 1024 / n, 1),
            "threads": status.get("Threads"),
            "processes": status.get("processes"),
        },
        "sim": {"cpu_pct": row_sim_cpu},
        "client": {
            "cpu_pct": client_cpu,
            "loop_lag": _pct(lag),
            "connected": len(connected),
            "connect_errors": [c["error"] for c in calls if c["error"]],
            "send_skipped": int(sum(c["send_skipped"] for c in calls)),
            "frames_without_kernel_timestamp": int(sum(c["no_kernel_ts"] for c in calls)),
        },
        "machine_busy_pct": machine_busy_pct(win_a, win_b),
        "machine_stalls": machine_stalls,
        "machine": _machine_load(idle_a, idle_b, win_a, win_b, [eng_cpu, row_sim_cpu, *client_cpu]),
        "summaries": {
            "count": len(summ),
            "end_reasons": dict(Counter(str(s.get("end_reason")).split(":")[0] for s in summ.values())),
            "inbound_dropped": int(sum(s.get("inbound_dropped") or 0 for s in summ.values())),
            "provider_errors": int(sum(s.get("provider_errors") or 0 for s in summ.values())),
        },
        "log_warnings": engine_stats["warnings"],
        "timeline": timeline,
        "calls_detail": calls,
        "logs": str(workdir) if args.keep_logs else None,
    }
    row["checks"] = row_checks(row, args)
    return row


def start_witness() -> tuple[StallWitness | None, str | None]:
    """The stall witness, or why it could not start (it needs root for SCHED_FIFO)."""
    try:
        return StallWitness().start(), None
    except RuntimeError as error:
        log(f"machine stall witness not running ({error}); the report says so")
        return None, str(error)


def _machine_load(
    idle_a: CpuSample, idle_b: CpuSample, win_a: CpuSample, win_b: CpuSample, ours: list[float | None]
) -> dict[str, Any]:
    """Whole-machine CPU in "% of one core" units, and how much of it was not ours
    (other processes on a shared machine disturb every timing number)."""
    ncpu = os.cpu_count() or 1
    idle_busy = machine_busy_pct(idle_a, idle_b)
    busy = machine_busy_pct(win_a, win_b)
    busy_cores = None if busy is None else busy * ncpu
    return {
        "cpus": ncpu,
        "busy_core_pct": None if busy_cores is None else round(busy_cores, 1),
        "bench_processes_core_pct": round(sum(v or 0.0 for v in ours), 1),
        "foreign_core_pct": None if busy_cores is None else round(max(0.0, busy_cores - sum(v or 0.0 for v in ours)), 1),
        "busy_core_pct_before_calls": None if idle_busy is None else round(idle_busy * ncpu, 1),
    }
