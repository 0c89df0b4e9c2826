"""Helpers for end-to-end tests against the lab Asterisk (see ``lab/``).

The lab is a Debian root with Asterisk, built by ``lab/setup.sh`` and run in
a chroot by ``lab/start.sh``; calls are placed with SIPp by ``lab/call.sh``
and the RTP on the loopback interface is captured with tshark and analysed
here. Everything needs root (chroot, mount, packet capture).

Standard library only, except :func:`correlate_delay`, which imports numpy
when called. Typical use::

    from tests.e2e import lab   # or: import lab, with tests/e2e on sys.path

    lab.ensure_lab()
    with lab.AsteriskLab() as ast:
        audio = lab.make_speech_ulaw("hello there", tmp / "hello.ulaw", seconds=3)
        call = lab.place_call("echo", audio, 3)
        assert call.ok and call.received.packets > 140
        lag_ms, peak = lab.correlate_delay(call.sent.samples, call.received.samples)

Public API:
    lab_unavailable_reason() -> str | None
    ensure_lab(timeout=1800.0) -> None
    AsteriskLab(ari_password=None, audiosocket_port=None, start_timeout=None)
        .ari_url .ari_user .ari_password .http_url .audiosocket_port .root
        .start() .stop() .running() .cli(cmd) -> str .log_text(since=0) -> str
        .log_offset() -> int .ari_get(path) .events_url(app) -> str
    make_speech_ulaw(text, path, seconds=None, voice=None, speed=None) -> Path
    make_tone_ulaw(freq, seconds, path, volume=0.5) -> Path
    make_silence_ulaw(seconds, path) -> Path
    ulaw_decode(data) -> list[int];  ulaw_encode(samples) -> bytes
    read_ulaw(path) -> list[int]
    place_call(exten, audio_path, duration_s, rtp_port=6000, ...) -> CallResult
    (many calls at once, a call in the background: see labload.py)
    analyse_pcap(pcap, rtp_port) -> (sent, received, streams, tshark_streams)
    rtp_stats(packets) -> StreamStats
    correlate_delay(sent, received, sample_rate=8000, max_lag_ms=None) -> (lag_ms, peak)
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Self

REPO_ROOT = Path(__file__).resolve().parents[1]
LAB_DIR = REPO_ROOT / "lab"
LAB_CACHE = Path(os.environ.get("LAB_CACHE", LAB_DIR / ".cache"))
LAB_ROOT = Path(os.environ.get("LAB_ROOT", LAB_CACHE / "root"))

ARI_USER = "voiceline"
DEFAULT_ARI_PASSWORD = "voiceline-lab"
DEFAULT_AUDIOSOCKET_PORT = 9092
HTTP_URL = "http://127.0.0.1:8088"
SIP_PORT = 5060
SIPP_SIP_PORT = 5070
SIPP_RTP_PORT = 6000
ASTERISK_RTP_PORTS = (20000, 20999)
SAMPLE_RATE = 8000

REQUIRED_TOOLS = ("sipp", "tshark", "espeak-ng", "sox", "curl", "debootstrap")


class LabError(RuntimeError):
    """A lab script or tool failed; the message carries its output tail."""


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _run_script(
    name: str, env: dict[str, str] | None = None, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    script = LAB_DIR / name
    full_env = dict(os.environ)
    full_env.update(env or {})
    try:
        proc = subprocess.run(
            ["bash", str(script)],
            env=full_env,
            text=True,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or "") + (exc.stderr or "")
        if isinstance(out, bytes):
            out = out.decode(errors="replace")
        raise LabError(
            f"lab/{name} timed out after {timeout:.0f}s:\n{_tail(out)}"
        ) from exc
    if proc.returncode != 0:
        raise LabError(
            f"lab/{name} failed (exit {proc.returncode}):\n"
            f"{_tail(proc.stdout + proc.stderr)}"
        )
    return proc


def lab_unavailable_reason() -> str | None:
    """Why the lab cannot run here (for ``pytest.skip``), or None if it can.

    Tools missing from PATH are not a reason: :func:`ensure_lab` installs them.
    """
    if os.name != "posix" or not Path("/proc/self/mounts").exists():
        return "the lab needs Linux"
    if os.geteuid() != 0:
        return "the lab needs root (chroot, mount, packet capture)"
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    if missing and shutil.which("apt-get") is None:
        return f"missing tools and no apt-get to install them: {', '.join(missing)}"
    return None


_LAB_READY = False


def ensure_lab(timeout: float = 1800.0) -> None:
    """Run ``lab/setup.sh`` once per process (seconds when already cached)."""
    global _LAB_READY
    if _LAB_READY:
        return
    reason = lab_unavailable_reason()
    if reason:
        raise LabError(reason)
    _run_script("setup.sh", timeout=timeout)
    _LAB_READY = True


def _in_root(root: Path, path: str) -> Path:
    """Host path of ``path`` as seen inside the chroot (absolute links re-rooted)."""
    parts = [p for p in path.split("/") if p]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        if candidate.is_symlink():
            hops += 1
            if hops > 40:
                raise LabError(f"too many symlinks resolving {path} in {root}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        resolved.append(part)
    return root.joinpath(*resolved)


class AsteriskLab:
    """Start/stop the lab Asterisk around a block::

        with AsteriskLab() as ast:
            print(ast.cli("core show channels"))

    The config is (re)written by ``lab/configure.sh`` on entry, so the ARI
    password and the AudioSocket port of the ``audiosocket`` extension can be
    chosen per instance. If Asterisk was already running, its configuration
    is reloaded instead and it is left running on exit.
    """

    def __init__(
        self,
        ari_password: str | None = None,
        audiosocket_port: int | None = None,
        start_timeout: float | None = None,
    ) -> None:
        self.ari_user = ARI_USER
        self.ari_password = ari_password or os.environ.get(
            "LAB_ARI_PASSWORD", DEFAULT_ARI_PASSWORD
        )
        self.audiosocket_port = int(
            audiosocket_port
            or os.environ.get("LAB_AUDIOSOCKET_PORT", DEFAULT_AUDIOSOCKET_PORT)
        )
        self.http_url = HTTP_URL
        self.ari_url = f"{HTTP_URL}/ari"
        self.root = LAB_ROOT
        self.start_timeout = start_timeout
        self._owned = False

    # -- lifecycle -----------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = {
            "LAB_ARI_PASSWORD": self.ari_password,
            "LAB_AUDIOSOCKET_PORT": str(self.audiosocket_port),
        }
        if self.start_timeout is not None:
            env["LAB_START_TIMEOUT"] = str(math.ceil(self.start_timeout))
        return env

    def running(self) -> bool:
        pidfile = LAB_CACHE / "asterisk.pid"
        try:
            pid = int(pidfile.read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return False
        return True

    def start(self) -> AsteriskLab:
        was_running = self.running()
        _run_script("configure.sh", env=self._env())
        if was_running:
            # Pick up the freshly written config (ARI users, dialplan, ...).
            self.cli("core reload")
            _run_script("start.sh", env=self._env(), timeout=60)  # waits for ARI
        else:
            _run_script("start.sh", env=self._env(), timeout=60)
            self._owned = True
        return self

    def stop(self) -> None:
        if self._owned:
            _run_script("stop.sh", timeout=60)
            self._owned = False

    def force_stop(self) -> None:
        """Stop Asterisk even if another user of the lab started it (restart tests);
        a later ``start()`` starts it afresh and owns it."""
        _run_script("stop.sh", timeout=60)
        self._owned = False

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- access ----------------------------------------------------------
    def cli(self, cmd: str, timeout: float = 20.0) -> str:
        """Run an Asterisk CLI command (``asterisk -rx``) and return its output."""
        proc = subprocess.run(
            ["chroot", str(self.root), "/usr/sbin/asterisk", "-rx", cmd],
            text=True,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise LabError(
                f"asterisk -rx {cmd!r} failed ({proc.returncode}): "
                f"{_tail(proc.stdout + proc.stderr)}"
            )
        return proc.stdout

    @property
    def log_path(self) -> Path:
        return _in_root(self.root, "/var/log/asterisk/messages")

    def log_offset(self) -> int:
        """Current size of the Asterisk log; pass to ``log_text(since=...)``."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_text(self, since: int = 0) -> str:
        """The Asterisk log (``/var/log/asterisk/messages`` in the root)."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(since)
                return fh.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def ari_get(self, path: str, timeout: float = 5.0) -> Any:
        """GET ``{ari_url}/{path}`` with the lab credentials; parsed JSON."""
        req = urllib.request.Request(f"{self.ari_url}/{path.lstrip('/')}")
        mgr = urllib.request.HTTPPasswordMgrWithDefaultRealm()
        mgr.add_password(None, self.ari_url, self.ari_user, self.ari_password)
        opener = urllib.request.build_opener(urllib.request.HTTPBasicAuthHandler(mgr))
        with opener.open(req, timeout=timeout) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def ari_delete(self, path: str, timeout: float = 5.0) -> int:
        """DELETE ``{ari_url}/{path}``; the HTTP status (404 included, not raised)."""
        req = urllib.request.Request(f"{self.ari_url}/{path.lstrip('/')}", method="DELETE")
        mgr = urllib.request.HTTPPasswordMgrWithDefaultRealm()
        mgr.add_password(None, self.ari_url, self.ari_user, self.ari_password)
        opener = urllib.request.build_opener(urllib.request.HTTPBasicAuthHandler(mgr))
        try:
            with opener.open(req, timeout=timeout) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    def sweep(self) -> list[str]:
        """Hang up every channel and destroy every bridge (test isolation after a
        failed test); returns what was removed."""
        removed = []
        for channel in self.ari_get("channels"):
            self.ari_delete(f"channels/{channel['id']}")
            removed.append(f"channel {channel['id']} {channel.get('name', '')}")
        for bridge in self.ari_get("bridges"):
            self.ari_delete(f"bridges/{bridge['id']}")
            removed.append(f"bridge {bridge['id']} {bridge.get('name', '')}")
        return removed

    def events_url(self, app: str = "voiceline") -> str:
        """ARI events WebSocket URL for ``app`` (credentials in ``api_key``)."""
        return (
            f"ws://127.0.0.1:8088/ari/events?app={app}"
            f"&api_key={self.ari_user}:{self.ari_password}"
        )


# ---------------------------------------------------------------------------
# G.711 mu-law


def _ulaw_byte_to_linear(u: int) -> int:
    u = ~u & 0xFF
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return -magnitude if sign else magnitude


_ULAW_TABLE: tuple[int, ...] = tuple(_ulaw_byte_to_linear(i) for i in range(256))
_ULAW_BIAS = 0x21  # 0x84 >> 2, in the 14-bit domain
_ULAW_CLIP = 8159


def ulaw_decode(data: bytes) -> list[int]:
    """Decode G.711 mu-law bytes to 16-bit linear samples."""
    table = _ULAW_TABLE
    return [table[b] for b in data]


def _linear_to_ulaw(sample: int) -> int:
    # G.711 reference: work on the 14-bit magnitude (arithmetic shift).
    value = int(sample) >> 2
    if value < 0:
        value, mask = -value, 0x7F
    else:
        mask = 0xFF
    value = min(value, _ULAW_CLIP) + _ULAW_BIAS
    segment = max(0, value.bit_length() - 6)
    if segment >= 8:
        return 0x7F ^ mask
    return ((segment << 4) | ((value >> (segment + 1)) & 0x0F)) ^ mask


def ulaw_encode(samples: Iterable[int]) -> bytes:
    """Encode 16-bit linear samples to G.711 mu-law bytes."""
    return bytes(_linear_to_ulaw(int(s)) for s in samples)


def read_ulaw(path: str | os.PathLike[str]) -> list[int]:
    """Decoded samples of a raw 8 kHz mu-law file."""
    return ulaw_decode(Path(path).read_bytes())


# ---------------------------------------------------------------------------
# Test audio


def _need(tool: str) -> str:
    found = shutil.which(tool)
    if not found:
        raise LabError(f"{tool} is not installed (run lab/setup.sh)")
    return found


def _run_tool(cmd: Sequence[str], timeout: float = 60.0) -> None:
    proc = subprocess.run(
        list(cmd), capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise LabError(
            f"{' '.join(cmd)} failed ({proc.returncode}): "
            f"{_tail(proc.stdout + proc.stderr)}"
        )


def _ulaw_out(path: str | os.PathLike[str]) -> list[str]:
    return ["-r", str(SAMPLE_RATE), "-c", "1", "-e", "u-law", "-t", "raw", str(path)]


def make_speech_ulaw(
    text: str,
    path: str | os.PathLike[str],
    seconds: float | None = None,
    voice: str | None = None,
    speed: int | None = None,
) -> Path:
    """Speak ``text`` with espeak-ng into a raw 8 kHz mu-law file.

    With ``seconds`` the result is exactly that long: padded with silence,
    or cut if the speech is longer. Returns the path.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [_need("espeak-ng")]
    if voice:
        cmd += ["-v", voice]
    if speed:
        cmd += ["-s", str(speed)]
    with tempfile.TemporaryDirectory(prefix="lab-tts-") as tmp:
        wav = Path(tmp) / "speech.wav"
        _run_tool(cmd + ["-w", str(wav), text])
        effects: list[str] = []
        if seconds is not None:
            effects = ["pad", "0", f"{seconds:.3f}", "trim", "0", f"{seconds:.3f}"]
        _run_tool([_need("sox"), str(wav)] + _ulaw_out(out) + effects)
    return out


def make_tone_ulaw(
    freq: float, seconds: float, path: str | os.PathLike[str], volume: float = 0.5
) -> Path:
    """A sine tone of ``freq`` Hz as raw 8 kHz mu-law (``volume`` 0..1)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    _run_tool(
        [_need("sox"), "-n"]
        + _ulaw_out(out)
        + ["synth", f"{seconds:.3f}", "sine", str(freq), "vol", str(volume)]
    )
    return out


def make_silence_ulaw(seconds: float, path: str | os.PathLike[str]) -> Path:
    """Digital silence (0xFF bytes) as raw 8 kHz mu-law."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(b"\xff" * round(seconds * SAMPLE_RATE))
    return out


# ---------------------------------------------------------------------------
# RTP analysis


@dataclasses.dataclass
class RtpPacket:
    time: float  # arrival, epoch seconds
    src: str
    src_port: int
    dst: str
    dst_port: int
    seq: int
    timestamp: int
    payload_type: int
    ssrc: int
    payload: bytes


@dataclasses.dataclass
class TsharkStream:
    """One row of ``tshark -z rtp,streams``."""

    src: str
    src_port: int
    dst: str
    dst_port: int
    ssrc: int
    payload: str
    packets: int
    lost: int
    lost_pct: float
    min_delta_ms: float
    mean_delta_ms: float
    max_delta_ms: float
    min_jitter_ms: float
    mean_jitter_ms: float
    max_jitter_ms: float
    problems: bool


@dataclasses.dataclass
class StreamStats:
    """One direction of RTP (all packets of one UDP 4-tuple)."""

    src: str = ""
    src_port: int = 0
    dst: str = ""
    dst_port: int = 0
    packets: int = 0
    lost: int = 0  # sequence gaps, per SSRC
    duplicates: int = 0
    reordered: int = 0
    ssrcs: list[int] = dataclasses.field(default_factory=list)
    payload_types: list[int] = dataclasses.field(default_factory=list)
    first_time: float = 0.0
    last_time: float = 0.0
    mean_delta_ms: float = 0.0
    max_delta_ms: float = 0.0
    mean_jitter_ms: float = 0.0  # RFC 3550 interarrival jitter, mean over packets
    max_jitter_ms: float = 0.0
    tshark_mean_jitter_ms: float | None = None
    tshark_max_jitter_ms: float | None = None
    tshark_lost: int | None = None
    tshark_max_delta_ms: float | None = None
    # PCMU payloads decoded, in arrival order (duplicates dropped).
    samples: list[int] = dataclasses.field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return self.last_time - self.first_time if self.packets else 0.0

    @property
    def audio_seconds(self) -> float:
        return len(self.samples) / SAMPLE_RATE

    def rms(self) -> float:
        if not self.samples:
            return 0.0
        return math.sqrt(sum(s * s for s in self.samples) / len(self.samples))


def _extend_seq(highest: int | None, seq: int) -> int:
    """Extend a 16-bit RTP sequence number to the value nearest ``highest``."""
    if highest is None:
        return seq
    ext = (highest & ~0xFFFF) + seq
    if ext - highest > 0x8000:
        ext -= 0x10000
    elif highest - ext > 0x8000:
        ext += 0x10000
    return ext


def rtp_stats(
    packets: Sequence[RtpPacket], clock_rate: int = SAMPLE_RATE
) -> StreamStats:
    """Statistics of one direction's packets (given in capture order)."""
    st = StreamStats()
    if not packets:
        return st
    p0 = packets[0]
    st.src, st.src_port, st.dst, st.dst_port = p0.src, p0.src_port, p0.dst, p0.dst_port
    st.packets = len(packets)
    st.first_time, st.last_time = p0.time, packets[-1].time

    deltas = [(b.time - a.time) * 1000.0 for a, b in itertools.pairwise(packets)]
    if deltas:
        st.mean_delta_ms = sum(deltas) / len(deltas)
        st.max_delta_ms = max(deltas)

    # Per-SSRC sequence accounting and RFC 3550 jitter (Asterisk may change
    # SSRC mid-call, e.g. when the channel is moved between bridges).
    jitters: list[float] = []
    by_ssrc: dict[int, dict[str, Any]] = {}
    for p in packets:
        if p.ssrc not in by_ssrc:
            by_ssrc[p.ssrc] = {
                "seen": set(),
                "ext_max": None,
                "ext_min": None,
                "transit": None,
                "j": 0.0,
            }
            st.ssrcs.append(p.ssrc)
        s = by_ssrc[p.ssrc]
        if p.payload_type not in st.payload_types:
            st.payload_types.append(p.payload_type)
        ext = _extend_seq(s["ext_max"], p.seq)
        if ext in s["seen"]:
            st.duplicates += 1
        else:
            if s["ext_max"] is not None and ext < s["ext_max"]:
                st.reordered += 1
            s["seen"].add(ext)
            if p.payload_type == 0:
                st.samples.extend(ulaw_decode(p.payload))
        s["ext_max"] = ext if s["ext_max"] is None else max(s["ext_max"], ext)
        s["ext_min"] = ext if s["ext_min"] is None else min(s["ext_min"], ext)
        # RFC 3550 6.4.1 / A.8: D = (Rj - Ri) - (Sj - Si), J += (|D| - J) / 16,
        # in timestamp units (the 32-bit timestamp difference taken signed).
        if s["transit"] is not None:
            prev_time, prev_ts = s["transit"]
            ts_diff = ((p.timestamp - prev_ts + 0x80000000) & 0xFFFFFFFF) - 0x80000000
            d = (p.time - prev_time) * clock_rate - ts_diff
            s["j"] += (abs(d) - s["j"]) / 16.0
            jitters.append(s["j"] * 1000.0 / clock_rate)
        s["transit"] = (p.time, p.timestamp)

    for s in by_ssrc.values():
        expected = s["ext_max"] - s["ext_min"] + 1
        st.lost += max(0, expected - len(s["seen"]))
    if jitters:
        st.mean_jitter_ms = sum(jitters) / len(jitters)
        st.max_jitter_ms = max(jitters)
    return st


_TSHARK_FIELDS = (
    "frame.time_epoch",
    "ip.src",
    "udp.srcport",
    "ip.dst",
    "udp.dstport",
    "rtp.seq",
    "rtp.timestamp",
    "rtp.p_type",
    "rtp.ssrc",
    "rtp.payload",
)


def _tshark_rtp_args() -> list[str]:
    # tshark >= 3.x: heuristic RTP over UDP (SIPp's port is not a known RTP port).
    return ["-o", "rtp.heuristic_rtp:TRUE"]


def _parse_int(text: str) -> int:
    text = text.strip()
    return int(text, 16) if text.lower().startswith("0x") else int(text)


def read_rtp_packets(pcap: str | os.PathLike[str]) -> list[RtpPacket]:
    """All RTP packets of a capture (heuristic RTP decoding), in capture order."""
    cmd = (
        [_need("tshark"), "-r", str(pcap)]
        + _tshark_rtp_args()
        + ["-Y", "rtp", "-T", "fields"]
    )
    for f in _TSHARK_FIELDS:
        cmd += ["-e", f]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise LabError(f"tshark failed reading {pcap}: {_tail(proc.stderr)}")
    packets = []
    for line in proc.stdout.splitlines():
        cols = line.split("\t")
        if len(cols) < len(_TSHARK_FIELDS) or not cols[5]:
            continue
        # Several RTP PDUs in one frame would give comma lists: take the first.
        first = [c.split(",")[0] for c in cols]
        payload_hex = first[9].replace(":", "")
        packets.append(
            RtpPacket(
                time=float(first[0]),
                src=first[1],
                src_port=int(first[2]),
                dst=first[3],
                dst_port=int(first[4]),
                seq=int(first[5]),
                timestamp=int(first[6]),
                payload_type=int(first[7]),
                ssrc=_parse_int(first[8]),
                payload=bytes.fromhex(payload_hex),
            )
        )
    return packets


_LOST_RE = re.compile(r"^(-?\d+)$")
_PCT_RE = re.compile(r"^\((-?[\d.]+)%\)$")


def read_tshark_streams(pcap: str | os.PathLike[str]) -> list[TsharkStream]:
    """Parse ``tshark -q -z rtp,streams`` for a capture."""
    cmd = (
        [_need("tshark"), "-r", str(pcap)]
        + _tshark_rtp_args()
        + ["-q", "-z", "rtp,streams"]
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise LabError(f"tshark rtp,streams failed on {pcap}: {_tail(proc.stderr)}")
    rows = []
    for line in proc.stdout.splitlines():
        tok = line.split()
        if len(tok) < 17 or not tok[6].lower().startswith("0x"):
            continue
        # locate "<lost> (<pct>%)"; packets precede it, payload names sit between
        idx = next((i for i in range(8, len(tok)) if _PCT_RE.match(tok[i])), None)
        if idx is None or idx < 9 or len(tok) < idx + 7:
            continue
        try:
            rows.append(
                TsharkStream(
                    src=tok[2],
                    src_port=int(tok[3]),
                    dst=tok[4],
                    dst_port=int(tok[5]),
                    ssrc=int(tok[6], 16),
                    payload=" ".join(tok[7 : idx - 2]),
                    packets=int(tok[idx - 2]),
                    lost=int(tok[idx - 1]),
                    lost_pct=float(_PCT_RE.match(tok[idx]).group(1)),  # type: ignore[union-attr]
                    min_delta_ms=float(tok[idx + 1]),
                    mean_delta_ms=float(tok[idx + 2]),
                    max_delta_ms=float(tok[idx + 3]),
                    min_jitter_ms=float(tok[idx + 4]),
                    mean_jitter_ms=float(tok[idx + 5]),
                    max_jitter_ms=float(tok[idx + 6]),
                    problems=len(tok) > idx + 7,
                )
            )
        except ValueError:
            continue
    return rows


def analyse_pcap(
    pcap: str | os.PathLike[str], rtp_port: int = SIPP_RTP_PORT
) -> tuple[StreamStats, StreamStats, list[StreamStats], list[TsharkStream]]:
    """Split a capture into (sent, received, all streams, tshark rows).

    ``sent`` is caller -> Asterisk (source port ``rtp_port``), ``received``
    is Asterisk -> caller (destination port ``rtp_port``); when several
    4-tuples match, the one with the most packets is taken.
    """
    packets = read_rtp_packets(pcap)
    groups: dict[tuple[str, int, str, int], list[RtpPacket]] = {}
    for p in packets:
        groups.setdefault((p.src, p.src_port, p.dst, p.dst_port), []).append(p)
    streams = [rtp_stats(g) for g in groups.values()]
    tshark_rows = read_tshark_streams(pcap)
    for st in streams:
        rows = [
            r
            for r in tshark_rows
            if (r.src, r.src_port, r.dst, r.dst_port)
            == (st.src, st.src_port, st.dst, st.dst_port)
        ]
        if rows:
            main = max(rows, key=lambda r: r.packets)
            st.tshark_mean_jitter_ms = main.mean_jitter_ms
            st.tshark_max_jitter_ms = max(r.max_jitter_ms for r in rows)
            st.tshark_lost = sum(r.lost for r in rows)
            st.tshark_max_delta_ms = max(r.max_delta_ms for r in rows)
    sent = max(
        (s for s in streams if s.src_port == rtp_port),
        key=lambda s: s.packets,
        default=StreamStats(),
    )
    received = max(
        (s for s in streams if s.dst_port == rtp_port),
        key=lambda s: s.packets,
        default=StreamStats(),
    )
    return sent, received, streams, tshark_rows


# ---------------------------------------------------------------------------
# Calls


@dataclasses.dataclass
class CallResult:
    exten: str
    returncode: int  # SIPp's exit code (0 = call succeeded)
    stdout: str  # SIPp's stdout (final statistics screen)
    stderr: str  # SIPp's stderr + lab/call.sh messages
    call_dir: Path  # scenario, traces, audio, capture
    pcap: Path | None
    hangup: str | None  # "local" (we sent BYE), "remote", or None
    sent: StreamStats  # caller -> Asterisk
    received: StreamStats  # Asterisk -> caller
    streams: list[StreamStats]
    tshark_streams: list[TsharkStream]
    duration_s: float  # wall time of the SIPp run

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def sip_trace(self) -> str:
        path = self.call_dir / "messages.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def errors(self) -> str:
        path = self.call_dir / "errors.log"
        return path.read_text(errors="replace") if path.exists() else ""


class _Capture:
    """tshark capturing on lo into a pcap; started and stopped by pid."""

    def __init__(self, pcap: Path, bpf: str, ready_timeout: float = 15.0) -> None:
        self.pcap = pcap
        self._stderr: list[str] = []
        self.proc = subprocess.Popen(
            [_need("tshark"), "-i", "lo", "-f", bpf, "-w", str(pcap), "-q"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + ready_timeout
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise LabError(
                    "tshark did not start capturing:\n" + "".join(self._stderr)
                )
        # "Capturing on" is printed once dumpcap has opened the interface;
        # wait for the file too, then a moment for the filter to be in place.
        while not pcap.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)
            if "Capturing on" in line:
                self._ready.set()

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._reader.join(timeout=5)
        return "".join(self._stderr)


def place_call(
    exten: str,
    audio_path: str | os.PathLike[str],
    duration_s: float,
    rtp_port: int = SIPP_RTP_PORT,
    sip_port: int = SIPP_SIP_PORT,
    capture: bool = True,
    extra_sipp_args: Sequence[str] = (),
    call_dir: str | os.PathLike[str] | None = None,
    settle_s: float = 0.3,
) -> CallResult:
    """Place one call with ``lab/call.sh`` and analyse its RTP.

    ``audio_path`` (raw mu-law, or anything sox reads) is streamed once after
    the answer; the call lasts ``duration_s`` unless Asterisk hangs up first.
    With ``capture`` the RTP on lo (Asterisk's 20000-20999 and ``rtp_port``,
    plus SIP on 5060) is recorded to ``call_dir/capture.pcap`` and analysed.
    """
    if call_dir is None:
        (LAB_CACHE / "calls").mkdir(parents=True, exist_ok=True)
        call_dir = tempfile.mkdtemp(
            prefix=f"{time.strftime('%Y%m%d-%H%M%S')}-{exten}-", dir=LAB_CACHE / "calls"
        )
    work = Path(call_dir)
    work.mkdir(parents=True, exist_ok=True)
    pcap = work / "capture.pcap"

    cap = None
    if capture:
        lo, hi = ASTERISK_RTP_PORTS
        cap = _Capture(
            pcap,
            f"udp portrange {lo}-{hi} or udp port {rtp_port} or udp port {SIP_PORT}",
        )
    env = dict(
        os.environ,
        LAB_CALL_DIR=str(work),
        LAB_SIPP_PORT=str(sip_port),
        LAB_SIPP_MEDIA_PORT=str(rtp_port),
    )
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            [
                "bash",
                str(LAB_DIR / "call.sh"),
                exten,
                str(audio_path),
                f"{duration_s:g}",
                *extra_sipp_args,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=duration_s + 90,
            check=False,
        )
    finally:
        elapsed = time.monotonic() - t0
        if cap is not None:
            time.sleep(settle_s)
            cap.stop()

    def read(name: str) -> str:
        p = work / name
        return p.read_text(errors="replace") if p.exists() else ""

    hangup = None
    m = re.findall(r"hangup: (\w+)", read("logs.log"))
    if m:
        hangup = m[-1]
    if capture and pcap.exists():
        sent, received, streams, rows = analyse_pcap(pcap, rtp_port)
    else:
        sent, received, streams, rows = StreamStats(), StreamStats(), [], []
    return CallResult(
        exten=exten,
        returncode=proc.returncode,
        stdout=read("sipp.out"),
        stderr=read("sipp.err") + proc.stderr,
        call_dir=work,
        pcap=pcap if capture else None,
        hangup=hangup,
        sent=sent,
        received=received,
        streams=streams,
        tshark_streams=rows,
        duration_s=elapsed,
    )


# ---------------------------------------------------------------------------
# Signal comparison


def correlate_delay(
    sent_samples: Sequence[int],
    received_samples: Sequence[int],
    sample_rate: int = SAMPLE_RATE,
    max_lag_ms: float | None = None,
) -> tuple[float, float]:
    """Find ``sent`` inside ``received``: (best lag in ms, normalized peak).

    The lag is how much later the audio appears in ``received`` (may be
    negative). The peak is the cross-correlation at that lag divided by the
    product of both signals' norms (after removing the mean): about 1.0 for
    an exact, fully overlapping copy, near 0 for unrelated audio. Needs numpy.
    """
    import numpy as np  # lazy: lab.py stays importable without numpy

    a = np.asarray(sent_samples, dtype=np.float64)
    b = np.asarray(received_samples, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        return 0.0, 0.0
    a = a - a.mean()
    b = b - b.mean()
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norm == 0.0:
        return 0.0, 0.0
    n = a.size + b.size - 1
    size = 1 << (n - 1).bit_length()
    # full cross-correlation c[k] = sum_n a[n] * b[n + k], k in -(len a - 1)..len b - 1
    spec = np.fft.rfft(b, size) * np.conj(np.fft.rfft(a, size))
    corr = np.fft.irfft(spec, size)
    corr = (
        np.concatenate((corr[size - (a.size - 1) :], corr[: b.size]))
        if a.size > 1
        else corr[: b.size]
    )
    lags = np.arange(-(a.size - 1), b.size)
    if max_lag_ms is not None:
        limit = round(max_lag_ms * sample_rate / 1000.0)
        keep = np.abs(lags) <= limit
        corr, lags = corr[keep], lags[keep]
    best = int(np.argmax(corr))
    return float(lags[best]) * 1000.0 / sample_rate, float(corr[best] / norm)
