"""What the benchmarks share (bench/pacing.py, bench/barge_in.py): audio frame constants, the
engine configuration a bench runs with, the machine and git state a report records, /proc
CPU and memory readings, and starting, watching and stopping child processes."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RATE = 8000
FRAME_MS = 20
FRAME_S = FRAME_MS / 1000
FRAME_BYTES = RATE * FRAME_MS // 1000 * 2  # slin16 8 kHz, what audiosocket mode uses
ZERO_FRAME = bytes(FRAME_BYTES)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def make_log(bench: str) -> Callable[[str], None]:
    """A progress logger to stderr, each line stamped ``[<bench> HH:MM:SS]``."""

    def log(msg: str) -> None:
        print(f"[{bench} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    return log


def bench_engine_config(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (an engine config mapping, changed in place) as a bench runs it: AudioSocket on
    any free port, the HTTP server and the call history off."""
    data.setdefault("audiosocket", {})["port"] = 0
    data.setdefault("http", {})["enabled"] = False
    data.setdefault("history", {})["enabled"] = False
    return data


# ---------------------------------------------------------------------------------------
# /proc helpers (no psutil)
# ---------------------------------------------------------------------------------------


def proc_cpu_s(pid: int) -> float | None:
    """utime + stime of ``pid`` (all threads) in seconds."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM in kB and Threads from /proc/<pid>/status."""
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            out[key] = int(value.split()[0])
    return out


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs from /proc/stat."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in first[:8]]  # user nice system idle iowait irq softirq steal
    idle = values[3] + values[4]
    total = sum(values)
    return total - idle, total


# ---------------------------------------------------------------------------------------
# what a report records about the run
# ---------------------------------------------------------------------------------------


def git_info() -> dict[str, Any]:
    """Which engine was measured: HEAD and the files changed in the work tree."""

    def git(*cmd: str) -> str:
        try:
            return subprocess.run(
                ["git", *cmd], cwd=REPO, capture_output=True, text=True, timeout=10, check=False
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = [line[3:] for line in git("status", "--porcelain", "--", "src", "config").splitlines() if line.strip()]
    return {"commit": git("rev-parse", "HEAD").strip() or None, "uncommitted_engine_changes": changed}


def cpu_calibration_ms(repeat: int = 5) -> float:
    """How fast this machine runs a fixed pure-Python loop right now (median, ms).

    On a shared virtual machine the same engine commit can measure a third slower
    on one day than on another (the host's other tenants do not show as steal
    time here). Recorded before and after each run so reports from different
    moments can be compared: a higher number means a slower machine.
    """
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        total = 0
        for i in range(1_000_000):
            total += i
        runs.append((time.perf_counter() - started) * 1000.0)
    return round(sorted(runs)[len(runs) // 2], 1)


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_mb = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_mb = round(int(line.split()[1]) / 1024)
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "mem_total_mb": mem_mb,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": list(os.getloadavg()),
    }


# ---------------------------------------------------------------------------------------
# CPU over a window
# ---------------------------------------------------------------------------------------


@dataclass
class CpuSample:
    t: float
    cpu: dict[str, float | None]
    machine: tuple[int, int]


def sample_cpu(pids: dict[str, int]) -> CpuSample:
    return CpuSample(time.monotonic(), {k: proc_cpu_s(p) for k, p in pids.items()}, machine_cpu())


def cpu_pct(a: CpuSample, b: CpuSample, key: str) -> float | None:
    ca, cb = a.cpu.get(key), b.cpu.get(key)
    if ca is None or cb is None or b.t <= a.t:
        return None
    return round((cb - ca) / (b.t - a.t) * 100.0, 1)


def machine_busy_pct(a: CpuSample, b: CpuSample) -> float | None:
    busy = b.machine[0] - a.machine[0]
    total = b.machine[1] - a.machine[1]
    return round(busy / total * 100.0, 1) if total > 0 else None


# ---------------------------------------------------------------------------------------
# child processes
# ---------------------------------------------------------------------------------------


def wait_for_file_line(path: Path, proc: subprocess.Popen, predicate, timeout: float, what: str):
    """The first non-None ``predicate(line)`` of the log ``proc`` writes to ``path``."""
    deadline = time.monotonic() + timeout
    offset = 0
    pending = ""
    while time.monotonic() < deadline:
        if path.exists():
            with path.open("r", errors="replace") as fh:
                fh.seek(offset)
                chunk = fh.read()
                offset = fh.tell()
            pending += chunk
            lines = pending.split("\n")
            pending = lines.pop()
            for line in lines:
                found = predicate(line)
                if found is not None:
                    return found
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{tail_file(path)}")
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready within {timeout:.0f} s:\n{tail_file(path)}")


def tail_file(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_process(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def json_event(line: str) -> dict[str, Any] | None:
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def child_env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra)
    return env
