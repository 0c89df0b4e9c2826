"""Call recording: the caller leg and the agent leg of a call as two WAV files.

Off by default (``recording.enabled``): caller audio is personal data, and recording
a phone call needs the caller's consent in many places (docs/console.md).

``CallRecording`` collects one call's audio while it runs: the core's event sink
hands it every caller frame and every frame sent to the caller (silence included,
so both legs stay on the same 20 ms clock; where the caller's side sent nothing
for a while the caller leg is filled with silence). Per frame that is one append to a
bytearray; each leg stops growing at ``max_seconds`` (the rest is counted in
``truncated_bytes``).
``write_recording`` (blocking: run it in a worker thread) writes
``<dir>/<name>.caller.wav`` and ``<dir>/<name>.agent.wav`` (16-bit mono PCM at
the call's rate), ``name`` from ``recording_name(call_id)``.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import wave
from pathlib import Path
from typing import Any

import structlog

from voiceline.tasks import spawn

__all__ = ["LEGS", "CallRecording", "RecordingWriter", "recording_files", "recording_name", "write_recording"]

log = structlog.get_logger("voiceline.recording")

LEGS = ("caller", "agent")
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def recording_name(call_id: str) -> str:
    """A file name stem for the call: the call id when it is plainly safe (uuids,
    Asterisk channel ids), otherwise a hash of it, so no id can reach outside the directory."""
    if _SAFE_NAME.fullmatch(call_id) and ".." not in call_id:
        return call_id
    return "call-" + hashlib.sha256(call_id.encode()).hexdigest()[:32]


def recording_files(directory: str | Path, call_id: str) -> dict[str, Path]:
    """The call's recorded legs that exist on disk, by leg name."""
    stem = recording_name(call_id)
    found = {}
    for leg in LEGS:
        path = Path(directory) / f"{stem}.{leg}.wav"
        if path.is_file():
            found[leg] = path
    return found


class CallRecording:
    """One call's two legs, 16-bit signed linear at ``sample_rate`` (the call's wire rate)."""

    __slots__ = ("_limit_bytes", "_slack_bytes", "sample_rate", "caller", "agent", "truncated_bytes")

    # How far the caller leg may fall behind the agent leg before the gap counts as a
    # hole to fill: more than network jitter, so bursts are not padded into drift.
    GAP_SLACK_S = 0.2

    def __init__(self, sample_rate: int, max_seconds: float) -> None:
        if sample_rate <= 0 or max_seconds <= 0:
            raise ValueError(f"sample_rate and max_seconds must be positive, got {sample_rate}, {max_seconds}")
        self.sample_rate = sample_rate
        self._limit_bytes = int(max_seconds * sample_rate * 2)
        self._slack_bytes = int(self.GAP_SLACK_S * sample_rate) * 2
        self.caller = bytearray()
        self.agent = bytearray()
        self.truncated_bytes = 0

    def add_caller(self, pcm: bytes) -> None:
        self._add(self.caller, pcm)

    def add_agent(self, pcm: bytes) -> None:
        self._add(self.agent, pcm)
        # The agent leg gets a frame every 20 ms (silence included); the caller leg only
        # when the caller's side sends audio, and phones with silence suppression (or
        # sipp after its file) send none. Fill such holes with silence so that both
        # files keep one timeline.
        behind = len(self.agent) - len(self.caller) - self._slack_bytes
        if behind > 0:
            self._add(self.caller, bytes(behind - behind % 2))

    def _add(self, leg: bytearray, pcm: bytes) -> None:
        if len(leg) + len(pcm) > self._limit_bytes:
            self.truncated_bytes += len(pcm)
            return
        leg += pcm


def write_recording(directory: str | Path, call_id: str, recording: CallRecording) -> list[Path]:
    """Write both legs as WAV files; returns their paths. Blocking."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    stem = recording_name(call_id)
    written = []
    for leg, pcm in (("caller", recording.caller), ("agent", recording.agent)):
        path = target / f"{stem}.{leg}.wav"
        partial = path.with_suffix(".wav.partial")
        with wave.open(str(partial), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(recording.sample_rate)
            out.writeframes(bytes(pcm[: len(pcm) - len(pcm) % 2]))
        partial.replace(path)  # the console never serves a half-written file
        written.append(path)
    return written


class RecordingWriter:
    """Hands out one ``CallRecording`` per call and writes each, when its call has
    ended, in a worker thread (never on the event loop). ``close()`` waits for the
    writes still running, so a shutdown does not cut a file short."""

    def __init__(self, directory: str | Path, *, sample_rate: int, max_seconds: float) -> None:
        self.directory = Path(directory)
        self._sample_rate = sample_rate
        self._max_seconds = max_seconds
        self._writes: set[asyncio.Task[Any]] = set()

    def new(self) -> CallRecording:
        return CallRecording(self._sample_rate, self._max_seconds)

    def save(self, call_id: str, recording: CallRecording) -> None:
        if not recording.caller and not recording.agent:
            return  # the call never had audio (no media leg)
        spawn(self._write(call_id, recording), name=f"record-{call_id}", owner=self._writes)

    async def _write(self, call_id: str, recording: CallRecording) -> None:
        paths = await asyncio.to_thread(write_recording, self.directory, call_id, recording)
        rate_bytes = recording.sample_rate * 2
        log.info("call_recorded", call_id=call_id, files=[str(p) for p in paths],
                 caller_s=round(len(recording.caller) / rate_bytes, 2),
                 agent_s=round(len(recording.agent) / rate_bytes, 2),
                 truncated_s=round(recording.truncated_bytes / rate_bytes, 2))

    async def close(self, timeout_s: float = 10.0) -> None:
        pending = list(self._writes)
        if not pending:
            return
        _done, still = await asyncio.wait(pending, timeout=timeout_s)
        if still:
            log.error("call recordings not written before shutdown", calls=len(still), timeout_s=timeout_s)
