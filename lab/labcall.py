"""Placing one lab call with SIPp (``lab/call.sh``) while tshark captures it, and its result."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from labenv import (
    new_call_dir,
    ASTERISK_RTP_PORTS,
    LAB_DIR,
    SIP_PORT,
    SIPP_RTP_PORT,
    SIPP_SIP_PORT,
    LabError,
    need_tool,
)
from labrtp import StreamStats, TsharkStream, analyse_pcap


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
            [need_tool("tshark"), "-i", "lo", "-f", bpf, "-w", str(pcap), "-q"],
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
        call_dir = new_call_dir(exten)
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
