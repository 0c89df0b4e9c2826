"""Helpers for end-to-end tests against the lab Asterisk (see ``lab/``).

The lab is a Debian root with Asterisk, built by ``lab/setup.sh`` and run in
a chroot by ``lab/start.sh``; calls are placed with SIPp by ``lab/call.sh``
and the RTP on the loopback interface is captured with tshark and analysed
here. Everything needs root (chroot, mount, packet capture).

Standard library only, except :func:`correlate_delay`, which imports numpy
when called. This module is the one to import; the code lives in one module
per job: ``labenv`` (paths, ports, credentials, running tools),
``labasterisk`` (setup and the Asterisk process), ``labaudio`` (mu-law and
test audio files), ``labrtp`` (capture analysis) and ``labcall`` (SIPp
calls). Typical use::

    import labkit as lab   # with lab/ on sys.path (tests/e2e/conftest.py adds it)

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

from labasterisk import (
    AsteriskLab,
    ensure_lab,
    lab_unavailable_reason,
)
from labaudio import (
    make_silence_ulaw,
    make_speech_ulaw,
    make_tone_ulaw,
    read_ulaw,
    ulaw_decode,
    ulaw_encode,
    ulaw_out_args,
)
from labcall import (
    CallResult,
    place_call,
)
from labenv import (
    LAB_LOCK_PATH,
    lab_lock,
    REPO_ROOT,
    LAB_DIR,
    LAB_CACHE,
    LAB_ROOT,
    ARI_USER,
    DEFAULT_ARI_PASSWORD,
    DEFAULT_AUDIOSOCKET_PORT,
    HTTP_URL,
    SIP_PORT,
    SIPP_SIP_PORT,
    SIPP_RTP_PORT,
    ASTERISK_RTP_PORTS,
    SAMPLE_RATE,
    REQUIRED_TOOLS,
    LabError,
    need_tool,
    run_tool,
    tail_lines,
)
from labrtp import (
    RtpPacket,
    StreamStats,
    TsharkStream,
    analyse_pcap,
    correlate_delay,
    read_rtp_packets,
    read_tshark_streams,
    rtp_stats,
)

__all__ = [
    "AsteriskLab",
    "ensure_lab",
    "lab_unavailable_reason",
    "make_silence_ulaw",
    "make_speech_ulaw",
    "make_tone_ulaw",
    "read_ulaw",
    "ulaw_decode",
    "ulaw_encode",
    "ulaw_out_args",
    "CallResult",
    "place_call",
    "LAB_LOCK_PATH",
    "lab_lock",
    "REPO_ROOT",
    "LAB_DIR",
    "LAB_CACHE",
    "LAB_ROOT",
    "ARI_USER",
    "DEFAULT_ARI_PASSWORD",
    "DEFAULT_AUDIOSOCKET_PORT",
    "HTTP_URL",
    "SIP_PORT",
    "SIPP_SIP_PORT",
    "SIPP_RTP_PORT",
    "ASTERISK_RTP_PORTS",
    "SAMPLE_RATE",
    "REQUIRED_TOOLS",
    "LabError",
    "need_tool",
    "run_tool",
    "tail_lines",
    "RtpPacket",
    "StreamStats",
    "TsharkStream",
    "analyse_pcap",
    "correlate_delay",
    "read_rtp_packets",
    "read_tshark_streams",
    "rtp_stats",
]
