"""The pacing bench's caller side, run in client worker processes: simulated Asterisk legs
that record every frame the engine sends (with kernel receive timestamps), the greeting
reference they are compared with, and the per-call analysis."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import gc
import socket
import struct
import time
from array import array
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benchkit import FRAME_BYTES, FRAME_S, RATE, ZERO_FRAME

from voiceline.asterisk.audiosocket_codec import (
    FrameDecoder,
    ProtocolError,
    encode_audio,
    encode_uuid,
)
from voiceline.audio import g711
from voiceline.sim.audiosocket_caller import CallerLeg
from voiceline.sim.speech import silence, synthesize


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
        # A socket already closed has fileno() -1, which remove_reader refuses.
        with contextlib.suppress(ValueError, OSError):
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

    # The probe must not stall its own legs: a full collection over the recording
    # arrays took up to 90 ms in the client, holding back caller frames that then
    # reached the engine as one burst. Nothing the legs keep forms cycles.
    gc.collect()
    gc.freeze()
    gc.disable()
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
    gc.enable()
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
