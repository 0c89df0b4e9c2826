"""RTP analysis of a lab call's capture (tshark): packets, per-direction statistics, tshark's own
stream rows, and the delay of the sent audio inside the received audio."""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import re
import subprocess
from collections.abc import Sequence
from typing import Any

from labenv import SAMPLE_RATE, SIPP_RTP_PORT, LabError, need_tool, tail_lines
from labaudio import ulaw_decode


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
        [need_tool("tshark"), "-r", str(pcap)]
        + _tshark_rtp_args()
        + ["-Y", "rtp", "-T", "fields"]
    )
    for f in _TSHARK_FIELDS:
        cmd += ["-e", f]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise LabError(f"tshark failed reading {pcap}: {tail_lines(proc.stderr)}")
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
        [need_tool("tshark"), "-r", str(pcap)]
        + _tshark_rtp_args()
        + ["-q", "-z", "rtp,streams"]
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise LabError(f"tshark rtp,streams failed on {pcap}: {tail_lines(proc.stderr)}")
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
