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
  history off, JSON logs at INFO into a file), so its CPU and RSS can be read from
  ``/proc/<pid>`` for the engine alone;
* one or two client worker processes holding the simulated Asterisk legs
  (``CallerLeg``): each leg connects (staggered over ``--stagger-s``), sends digital
  silence every 20 ms like Asterisk, and records the arrival time and bytes of every
  frame the engine sends back, until all legs hang up together.

Then it waits for the engine's ``call_summary`` lines, reads the engine log and reports
frame timing (|inter-arrival - 20 ms|), gaps inside agent speech (found by aligning what
each caller heard with the exact greeting audio), pauses/restarts/fallbacks from the
streaming log lines, engine CPU and RSS, and the client's own event-loop lag (the noise
floor of the timing numbers). See bench/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import datetime as dt
import json
import multiprocessing as mp
import os
import platform
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid as uuidlib
from array import array
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from voiceline.asterisk.audiosocket_codec import (
    FrameDecoder,
    ProtocolError,
    encode_audio,
    encode_uuid,
)
from voiceline.audio import g711
from voiceline.sim.audiosocket_caller import CallerLeg
from voiceline.sim.deepgram_sim import PATTERNS
from voiceline.sim.speech import silence, synthesize

REPO = Path(__file__).resolve().parent.parent
RATE = 8000
FRAME_MS = 20
FRAME_S = FRAME_MS / 1000
FRAME_BYTES = RATE * FRAME_MS // 1000 * 2  # slin16 8 kHz, what audiosocket mode uses
ZERO_FRAME = bytes(FRAME_BYTES)
CLK_TCK = os.sysconf("SC_CLK_TCK")
DEFAULT_GREETING = (
    "Hello, and thank you for calling. This is the voice line benchmark agent, "
    "reading a long greeting so that every caller hears continuous speech."
)

# Targets (shown next to the numbers; only --strict turns a FAIL into exit status 1).
TARGET_P99_MS = 5.0
TARGET_CPU_PCT = 100.0
TARGET_FLAT_RATIO = 1.5
TARGET_MIN_SPEED = 1.2


def log(msg: str) -> None:
    print(f"[pacing {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


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
# reference audio: exactly what the simulator sends for the greeting, as the caller hears it
# ---------------------------------------------------------------------------------------


def reference_audio(greeting: str, long_answer_s: float | None, encoding: str) -> bytes:
    """slin16 8 kHz of the greeting turn after the provider codec round trip.

    Mirrors ``DeepgramSimulator._render`` (espeak-ng, repeated with 300 ms gaps up to
    ``long_answer_s``) and the engine's decode, so each frame the caller receives inside
    agent speech must equal the next reference frame unless the engine inserted silence.
    """
    pcm = synthesize(greeting, RATE, "en-us")
    if long_answer_s:
        gap = silence(300, RATE)
        unit = pcm
        min_bytes = int(long_answer_s * RATE) * 2
        while len(pcm) < min_bytes:
            pcm += gap + unit
    if encoding == "mulaw":
        return g711.mulaw_to_slin(g711.slin_to_mulaw(pcm))
    if encoding == "alaw":
        return g711.alaw_to_slin(g711.slin_to_alaw(pcm))
    return pcm


class Reference:
    def __init__(self, pcm: bytes) -> None:
        whole = len(pcm) // FRAME_BYTES
        self.frames = [pcm[i * FRAME_BYTES : (i + 1) * FRAME_BYTES] for i in range(whole)]
        self.positions: dict[bytes, list[int]] = defaultdict(list)
        for i, f in enumerate(self.frames):
            self.positions[f].append(i)
        self.first_voiced = next((i for i, f in enumerate(self.frames) if f != ZERO_FRAME), 0)

    def find(self, frame: bytes, start: int) -> int | None:
        pos = self.positions.get(frame)
        if not pos:
            return None
        k = bisect.bisect_left(pos, start)
        return pos[k] if k < len(pos) else None


# ---------------------------------------------------------------------------------------
# client side (runs in worker processes)
# ---------------------------------------------------------------------------------------


# SO_TIMESTAMPNS (Linux): the kernel stamps each received segment. On loopback that is
# the moment the engine's send() ran, free of the client's own scheduling delay.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_ANC_SIZE = socket.CMSG_SPACE(16)
WIRE_FRAME = 3 + FRAME_BYTES  # AudioSocket header + 20 ms of slin16 8 kHz


def realtime_offset() -> float:
    """time.time() - time.monotonic(), taken at the tightest of a few tries."""
    best = None
    for _ in range(5):
        a = time.monotonic()
        r = time.time()
        b = time.monotonic()
        if best is None or b - a < best[0]:
            best = (b - a, r - (a + b) / 2)
    assert best is not None
    return best[1]


@dataclass
class BenchLeg(CallerLeg):
    """A ``CallerLeg`` speaking the same protocol (UUID frame first, 20 ms slin frames,
    hang up by closing) with a measuring receive path: the socket is read with
    ``recvmsg`` one wire frame at a time so every frame gets its kernel receive
    timestamp as well as the time the client got to read it, and everything is
    recorded compactly (arrays, one bytearray) instead of one object per frame.
    No task per leg: a reader callback and a shared sender ticker."""

    index: int = 0
    times: array = field(default_factory=lambda: array("d"))  # kernel receive time (monotonic)
    read_times: array = field(default_factory=lambda: array("d"))  # when the client read it
    audio: bytearray = field(default_factory=bytearray)
    odd_frames: list[tuple[float, int, int]] = field(default_factory=list)
    connected_at: float | None = None
    frames_sent: int = 0
    send_skipped: int = 0
    no_kernel_ts: int = 0
    rt_offset: float = 0.0

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await loop.sock_connect(sock, (self.host, self.port))
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._out = bytearray(encode_uuid(self.call_uuid))
        self._decoder = FrameDecoder()
        self._flush()
        loop.add_reader(sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        sock = self._sock
        times, read_times, audio = self.times, self.read_times, self.audio
        while True:
            try:
                data, anc, _flags, _addr = sock.recvmsg(WIRE_FRAME, _ANC_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._gone(f"connection error: {exc}")
                return
            if not data:
                self._gone("engine closed")
                return
            now = time.monotonic()
            stamp = None
            for level, kind, cdata in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(cdata) >= 16:
                    sec, nsec = struct.unpack_from("qq", cdata)
                    stamp = sec + nsec * 1e-9 - self.rt_offset
            if stamp is None or stamp > now + 0.001:
                self.no_kernel_ts += 1
                stamp = now
            try:
                frames = self._decoder.feed(data)
            except ProtocolError as exc:
                self.error = exc.reason
                self._gone("protocol error")
                return
            for frame in frames:
                payload = frame.payload
                if frame.kind == 0x10 and len(payload) == FRAME_BYTES:
                    times.append(stamp)
                    read_times.append(now)
                    audio += payload
                else:
                    self.odd_frames.append((now, int(frame.kind), len(payload)))

    def _gone(self, reason: str) -> None:
        if self.closed_reason is None:
            self.closed_reason = reason
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self._sock.fileno())

    def _flush(self) -> None:
        out = self._out
        if not out:
            return
        try:
            sent = self._sock.send(out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._gone(f"connection error: {exc}")
            return
        del out[:sent]

    def send_nowait(self, data: bytes) -> None:
        """One caller frame without awaiting (one shared ticker feeds every leg)."""
        if self.closed_reason is not None:
            return
        if len(self._out) > 64 * 1024:
            self.send_skipped += 1  # the engine stopped reading; do not grow without bound
        else:
            self._out += data
            self.frames_sent += 1
        self._flush()

    async def hangup(self) -> None:
        """Close the way Asterisk does: it just closes the socket."""
        self._gone("hung up")
        self._sock.close()


async def _sender(legs: list[BenchLeg], frame: bytes, t_end: float, phases: int = 4) -> None:
    """Every leg gets one frame per 20 ms; legs are spread over ``phases`` sub-slots so
    the engine sees caller frames arrive throughout the period, as from real channels."""
    loop = asyncio.get_running_loop()
    period = FRAME_S / phases
    groups = [legs[g::phases] for g in range(phases)]
    t0 = loop.time()
    k = 0
    while True:
        deadline = t0 + k * period
        now = loop.time()
        if deadline > now:
            await asyncio.sleep(deadline - now)
            now = loop.time()
        if now >= t_end:
            return
        for leg in groups[k % phases]:
            if leg.connected_at is not None:
                leg.send_nowait(frame)
        k += 1
        if now - (t0 + k * period) > FRAME_S:  # more than a period late: skip, never burst
            k = int((now - t0) / period) + 1


async def _lag_probe(t_end: float, out: array) -> None:
    """The bench's own noise floor: lateness of a 20 ms timer on this event loop."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    k = 1
    while True:
        deadline = t0 + k * FRAME_S
        if deadline >= t_end:
            return
        delay = deadline - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        now = loop.time()
        out.append(now - deadline)
        k = max(k + 1, int((now - t0) / FRAME_S) + 1)


def analyze_leg(leg: BenchLeg, ref: Reference, t_start: float) -> dict[str, Any]:
    """Per-call timing and continuity from what the caller received."""
    n = len(leg.times)
    res: dict[str, Any] = {
        "call_id": leg.call_uuid,
        "index": leg.index,
        "connected_at": leg.connected_at,
        "error": leg.error,
        "closed_reason": leg.closed_reason,
        "frames_sent": leg.frames_sent,
        "send_skipped": leg.send_skipped,
        "no_kernel_ts": leg.no_kernel_ts,
        "frames_received": n,
        "other_frames": [k for _, k, _ in leg.odd_frames],
        "agent_frames": 0,
        "first_agent_at": None,
        "gaps": 0,
        "mismatched": 0,
        "skipped_ref": 0,
        "missing": 0,
        "reference_ended": False,
    }
    empty = np.zeros(0, dtype=np.float32)
    if n < 2:
        keys = ("_err_all", "_err_agent", "_err_all_read", "_err_agent_read", "_t_all", "_t_agent", "_late_at", "_gap_at")
        return res | {k: empty for k in keys}
    t = np.frombuffer(leg.times, dtype=np.float64)
    tr = np.frombuffer(leg.read_times, dtype=np.float64)
    audio = bytes(leg.audio)
    voiced = np.frombuffer(audio, dtype="<i2").reshape(n, FRAME_BYTES // 2).any(axis=1)
    err_all = np.abs(np.diff(t) - FRAME_S) * 1000.0
    err_all_read = np.abs(np.diff(tr) - FRAME_S) * 1000.0
    res["missing"] = max(0, round(float(t[-1] - t[0]) / FRAME_S) + 1 - n)
    err_agent = err_agent_read = t_agent = empty
    if voiced.any():
        first = int(np.argmax(voiced))
        res["first_agent_at"] = float(t[first])
        frame = audio[first * FRAME_BYTES : (first + 1) * FRAME_BYTES]
        i = ref.find(frame, ref.first_voiced)
        if i is None:  # not the greeting's first voiced frame: count, align from the top
            i = ref.first_voiced
        end = n
        gaps = mismatched = skipped = 0
        gap_at: list[float] = []
        frames = ref.frames
        for j in range(first, n):
            if i >= len(frames):
                end = j
                res["reference_ended"] = True
                break
            fb = audio[j * FRAME_BYTES : (j + 1) * FRAME_BYTES]
            if fb == frames[i]:
                i += 1
            elif not voiced[j]:
                gaps += 1  # silence the engine inserted inside agent speech
                gap_at.append(t[j] - t_start)
            else:
                pos = ref.find(fb, i)
                if pos is not None:
                    skipped += pos - i  # frames of the greeting the caller never heard
                    i = pos + 1
                else:
                    mismatched += 1
                    i += 1
        res.update(gaps=gaps, mismatched=mismatched, skipped_ref=skipped, agent_frames=end - first)
        res["_gap_at"] = np.asarray(gap_at, dtype=np.float32)
        if end - first >= 2:
            err_agent = np.abs(np.diff(t[first:end]) - FRAME_S) * 1000.0
            err_agent_read = np.abs(np.diff(tr[first:end]) - FRAME_S) * 1000.0
            t_agent = t[first + 1 : end] - t_start  # each interval ends with this frame
    late_at = (t[1:][err_all > 5.0] - t_start).astype(np.float32)  # when the > 5 ms errors happened
    return res | {
        "_err_all": err_all.astype(np.float32),
        "_err_agent": err_agent.astype(np.float32),
        "_err_all_read": err_all_read.astype(np.float32),
        "_err_agent_read": err_agent_read.astype(np.float32),
        "_t_all": (t[1:] - t_start).astype(np.float32),
        "_t_agent": np.asarray(t_agent, dtype=np.float32),
        "_late_at": late_at,
        "_gap_at": res.pop("_gap_at", empty),
    }


async def _run_worker(plan: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    t_start, t_end = plan["t_start"], plan["t_end"]
    offset = realtime_offset()
    legs = [BenchLeg(plan["host"], plan["port"], call_uuid=u, index=i, rt_offset=offset) for i, u in plan["legs"]]
    noise = plan["caller_noise"]
    if noise > 0:
        rng = np.random.default_rng(plan["worker"])
        payload = (rng.standard_normal(FRAME_BYTES // 2) * noise).astype("<i2").tobytes()
    else:
        payload = ZERO_FRAME
    frame = encode_audio(payload, RATE)
    lag = array("d")

    async def open_leg(leg: BenchLeg) -> None:
        at = t_start + leg.index * plan["stagger_s"] / max(1, plan["n_total"])
        await asyncio.sleep(max(0.0, at - loop.time()))
        try:
            await asyncio.wait_for(leg.connect(), 10.0)
            leg.connected_at = time.monotonic()
        except Exception as exc:  # noqa: BLE001 - reported per call
            leg.error = f"connect failed: {exc!r}"

    await asyncio.sleep(max(0.0, t_start - loop.time()))
    background = [
        asyncio.create_task(_sender(legs, frame, t_end)),
        asyncio.create_task(_lag_probe(t_end, lag)),
    ]
    await asyncio.gather(*(open_leg(leg) for leg in legs))
    await asyncio.sleep(max(0.0, t_end - loop.time()))
    await asyncio.gather(*background, return_exceptions=True)
    await asyncio.gather(
        *(leg.hangup() for leg in legs if leg.connected_at is not None), return_exceptions=True
    )
    ref = Reference(plan["reference"])
    calls = [analyze_leg(leg, ref, t_start) for leg in legs]
    return {
        "worker": plan["worker"],
        "calls": calls,
        "lag_ms": (np.frombuffer(lag, dtype=np.float64) * 1000.0).astype(np.float32),
        "cpu_s": time.process_time(),
    }


def worker_main(conn: Any) -> None:
    plan = conn.recv()
    try:
        result = asyncio.run(_run_worker(plan))
    except BaseException as exc:  # noqa: BLE001 - shipped to the parent
        import traceback

        result = {"worker": plan.get("worker"), "fatal": "".join(traceback.format_exception(exc))}
    conn.send(result)
    conn.close()


# ---------------------------------------------------------------------------------------
# orchestration (parent process, synchronous)
# ---------------------------------------------------------------------------------------


def _wait_for_file_line(path: Path, proc: subprocess.Popen, predicate, timeout: float, what: str):
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
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{_tail(path)}")
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready within {timeout:.0f} s:\n{_tail(path)}")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _json_event(line: str) -> dict[str, Any] | None:
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def start_sim(args: argparse.Namespace, workdir: Path, cpus: set[int] | None) -> tuple[subprocess.Popen, str]:
    log_path = workdir / "sim.log"
    cmd = [
        sys.executable, "-m", "voiceline.sim.deepgram_sim", "--host", "127.0.0.1", "--port", "0",
        "--pattern", args.pattern, "--speed", str(args.speed), "--seed", str(args.seed),
        "--long-answer-s", str(args.long_answer_s), "--greeting", args.greeting,
    ]
    with log_path.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env=_child_env({}))
    if cpus:
        os.sched_setaffinity(proc.pid, cpus)
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, proc.pid, args.nice)

    def url_of(line: str) -> str | None:
        marker = "deepgram simulator on "
        if marker in line:
            return line.split(marker, 1)[1].split()[0]
        return None

    url = _wait_for_file_line(log_path, proc, url_of, 30.0, "deepgram simulator")
    return proc, url


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra)
    return env


def engine_config(args: argparse.Namespace) -> dict[str, Any]:
    """``--config`` with a free AudioSocket port, http and history off, JSON logs."""
    data = yaml.safe_load(Path(args.config).read_text())
    data.setdefault("audiosocket", {})["port"] = 0
    data.setdefault("http", {})["enabled"] = False
    data.setdefault("history", {})["enabled"] = False
    data.setdefault("logging", {})["format"] = "json"
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
    env = _child_env(
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
    with log_path.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    if cpus:
        os.sched_setaffinity(proc.pid, cpus)
    if args.engine_nice:
        os.setpriority(os.PRIO_PROCESS, proc.pid, args.engine_nice)

    def port_of(line: str) -> int | None:
        ev = _json_event(line)
        if ev and ev.get("event") == "voiceline_started":
            return int(str(ev["audiosocket"]).rsplit(":", 1)[1])
        return None

    port = _wait_for_file_line(log_path, proc, port_of, 30.0, "engine")
    return proc, port, log_path


def count_events(path: Path, name: str) -> int:
    n = 0
    with contextlib.suppress(OSError), path.open("r", errors="replace") as fh:
        for line in fh:
            if name in line:
                ev = _json_event(line)
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
            ev = _json_event(line)
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
    try:
        sim, sim_url = start_sim(args, workdir, other_cpus)
        engine, port, engine_log = start_engine(args, workdir, sim_url, engine_cpus)
        log(f"N={n}: engine pid {engine.pid} on 127.0.0.1:{port}, sim pid {sim.pid}, {workers} client worker(s)")

        # idle baseline
        time.sleep(0.5)
        idle_a = sample_cpu({"engine": engine.pid})
        time.sleep(args.idle_s)
        idle_b = sample_cpu({"engine": engine.pid})
        rss_idle = proc_status(engine.pid)

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
        win_a = sample_cpu(pids)
        rss_series = []
        while time.monotonic() < win_b_t:
            time.sleep(min(1.0, max(0.0, win_b_t - time.monotonic())))
            rss_series.append(proc_status(engine.pid).get("VmRSS"))
        win_b = sample_cpu(pids)
        status = proc_status(engine.pid)

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
        _stop(engine)
        _stop(sim)

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


def _check(value: Any, target: str, ok: bool | None) -> dict[str, Any]:
    return {"value": value, "target": target, "pass": ok}


def row_checks(row: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    p99 = row["timing_agent"]["p99_ms"]
    speed = row["provider"]["speed_x_mean"]
    pause_applies = args.pattern != "stall" and speed is not None and speed >= TARGET_MIN_SPEED - 0.01
    cpu = row["engine"]["cpu_pct"]
    return {
        "p99_interval_error": _check(p99, f"<= {TARGET_P99_MS:g} ms", None if p99 is None else p99 <= TARGET_P99_MS),
        "restarts": _check(row["streaming"]["restarts"], "0", row["streaming"]["restarts"] == 0),
        "pauses": _check(
            row["streaming"]["pauses"],
            f"0 while provider >= {TARGET_MIN_SPEED:g}x (measured {speed}x)",
            (row["streaming"]["pauses"] == 0) if pause_applies else None,
        ),
        "fallbacks": _check(row["streaming"]["fallbacks"], "0", row["streaming"]["fallbacks"] == 0),
        "engine_cpu": _check(cpu, f"< {TARGET_CPU_PCT:g}% of one core", None if cpu is None else cpu < TARGET_CPU_PCT),
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


def print_table(report: dict[str, Any]) -> None:
    rows = report["results"]
    cfg = report["config"]
    print(
        f"\npacing: pattern={cfg['pattern']} speed={cfg['speed']}x seconds={cfg['seconds']} "
        f"long_answer_s={cfg['long_answer_s']} nproc={report['machine']['nproc']} "
        f"python={report['machine']['python']}"
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
            "streaming": cfg.get("streaming", {}),
            "provider_output": args.engine_output,
            "reference_frames": len(reference) // FRAME_BYTES,
        },
        "machine": machine_info(),
        "git": git_info(),
        "targets": {
            "p99_interval_error_ms": TARGET_P99_MS, "restarts": 0, "pauses": 0, "fallbacks": 0,
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
