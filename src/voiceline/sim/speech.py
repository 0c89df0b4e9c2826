"""Speech helpers shared by the simulators: real synthesized speech, caller-speech detection.

``synthesize`` turns text into 16-bit little-endian mono PCM at any sample rate with
espeak-ng (so simulated agents and callers produce real, recognisable speech rather
than tones). ``SpeechDetector`` is a pure, clock-free detector of where speech starts
and ends in a PCM stream: time is derived from the number of samples fed, never from
the wall clock, so it gives the same answer however fast or unevenly audio arrives.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import subprocess
import wave
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import soxr

from voiceline.audio import g711
from voiceline.audio.levels import slin_rms
from voiceline.audio.vad import VoiceActivity, vad_rate_for

ESPEAK = "espeak-ng"


class SynthesisError(RuntimeError):
    pass


def synthesize(text: str, sample_rate: int = 8000, voice: str = "en-us", speed: int | None = None) -> bytes:
    """``text`` spoken by espeak-ng as slin16 LE mono PCM at ``sample_rate``.

    ``speed`` is espeak-ng's words per minute (its default is 175). Results are cached
    in-process by arguments; callers get the same bytes for the same arguments.
    """
    if not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive int, got {sample_rate!r}")
    return _synthesize_cached(text, sample_rate, voice, speed)


async def synthesize_async(
    text: str, sample_rate: int = 8000, voice: str = "en-us", speed: int | None = None
) -> bytes:
    """``synthesize`` off the event loop (espeak-ng takes tens of milliseconds)."""
    return await asyncio.to_thread(synthesize, text, sample_rate, voice, speed)


@lru_cache(maxsize=256)
def _synthesize_cached(text: str, sample_rate: int, voice: str, speed: int | None) -> bytes:
    if shutil.which(ESPEAK) is None:
        raise SynthesisError(f"{ESPEAK} is not installed (apt-get install espeak-ng)")
    cmd = [ESPEAK, "--stdout", "-v", voice]
    if speed is not None:
        cmd += ["-s", str(int(speed))]
    # Text goes through stdin so a leading '-' is never taken for an option.
    cmd.append("--stdin")
    proc = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True, timeout=60, check=False)
    if proc.returncode != 0 or not proc.stdout:
        raise SynthesisError(f"{ESPEAK} failed ({proc.returncode}): {proc.stderr.decode(errors='replace').strip()}")
    pcm, rate = _parse_wav(proc.stdout)
    if rate != sample_rate:
        samples = np.frombuffer(pcm, dtype="<i2")
        pcm = soxr.resample(samples, rate, sample_rate, quality="HQ").astype("<i2").tobytes()
    return pcm


def _parse_wav(data: bytes) -> tuple[bytes, int]:
    """PCM and rate of espeak-ng's WAV. Its streamed header carries a bogus data length,
    so the frames are read up to what is actually there."""
    with wave.open(io.BytesIO(data), "rb") as w:
        if w.getsampwidth() != 2:
            raise SynthesisError(f"unexpected sample width {w.getsampwidth()} from {ESPEAK}")
        channels = w.getnchannels()
        rate = w.getframerate()
        pcm = w.readframes(w.getnframes())
    pcm = pcm[: len(pcm) & ~1]
    if channels > 1:
        samples = np.frombuffer(pcm, dtype="<i2")
        samples = samples[: len(samples) - len(samples) % channels].reshape(-1, channels)
        pcm = samples.mean(axis=1).astype("<i2").tobytes()
    return pcm, rate


def silence(ms: float, sample_rate: int = 8000) -> bytes:
    """slin16 silence of ``ms`` milliseconds."""
    return b"\x00\x00" * int(sample_rate * ms / 1000)


# ---- encoding helpers (Deepgram encoding names) ------------------------------------------

DEEPGRAM_ENCODINGS = ("linear16", "mulaw", "alaw")


def encode_pcm(pcm: bytes, encoding: str) -> bytes:
    """slin16 PCM -> ``encoding`` (Deepgram names: linear16, mulaw, alaw)."""
    if encoding in ("linear16", "slin16"):
        return pcm
    if encoding == "mulaw":
        return g711.slin_to_mulaw(pcm)
    if encoding == "alaw":
        return g711.slin_to_alaw(pcm)
    raise ValueError(f"unsupported encoding {encoding!r}")


def decode_to_pcm(data: bytes, encoding: str) -> bytes:
    """``encoding`` -> slin16 PCM. linear16 input must hold whole samples."""
    if encoding in ("linear16", "slin16"):
        return data
    if encoding == "mulaw":
        return g711.mulaw_to_slin(data)
    if encoding == "alaw":
        return g711.alaw_to_slin(data)
    raise ValueError(f"unsupported encoding {encoding!r}")


# ---- caller speech detection --------------------------------------------------------------

SpeechEventKind = Literal["speech_started", "speech_ended"]


@dataclass(frozen=True, slots=True)
class SpeechEvent:
    kind: SpeechEventKind
    # Stream time (seconds of audio fed so far) where the event applies: the first
    # voiced frame for speech_started, the end of the last voiced frame for speech_ended.
    at_s: float
    # For speech_ended: length of the utterance from its first to its last voiced frame.
    duration_s: float = 0.0


class SpeechDetector:
    """Finds utterances in a stream of slin16 PCM: webrtcvad plus an energy floor.

    A frame counts as speech when webrtcvad says so and its RMS level is above
    ``energy_floor_dbfs`` (webrtcvad alone fires on faint noise). An utterance starts
    after ``start_ms`` of consecutive speech frames and ends after ``end_ms`` of
    non-speech (the hangover bridges pauses between words). Feed any byte count; odd
    bytes are carried. Rates webrtcvad does not take are resampled to 16 kHz.
    """

    def __init__(
        self,
        sample_rate: int = 8000,
        *,
        frame_ms: int = 20,
        aggressiveness: int = 2,
        energy_floor_dbfs: float = -50.0,
        start_ms: int = 100,
        end_ms: int = 600,
    ) -> None:
        self.input_rate = sample_rate
        # Resampled here as one stream (stateful), so the VAD gets frames at its own rate.
        self.vad_rate = vad_rate_for(sample_rate)
        self._resampler = (
            soxr.ResampleStream(sample_rate, self.vad_rate, 1, dtype="int16")
            if self.vad_rate != sample_rate
            else None
        )
        self._vad = VoiceActivity(aggressiveness, self.vad_rate, frame_ms)
        self.frame_ms = frame_ms
        self._frame_bytes = self.vad_rate * frame_ms // 1000 * 2
        self._floor = 32768.0 * 10 ** (energy_floor_dbfs / 20)
        self._start_frames = max(1, -(-start_ms // frame_ms))
        self._end_frames = max(1, -(-end_ms // frame_ms))
        self._carry = b""
        self._pending = b""
        self._frames = 0  # frames processed so far (the detector's clock)
        self._voiced_run = 0
        self._silent_run = 0
        self._run_start_frame = 0
        self._utterance_start_frame = 0
        self._last_voiced_frame = 0
        self.in_speech = False

    @property
    def time_s(self) -> float:
        return self._frames * self.frame_ms / 1000

    def feed(self, pcm: bytes) -> list[SpeechEvent]:
        data = self._carry + pcm
        whole = len(data) & ~1
        self._carry = data[whole:]
        data = data[:whole]
        if self._resampler is not None and data:
            samples = np.frombuffer(data, dtype="<i2")
            data = self._resampler.resample_chunk(samples).astype("<i2").tobytes()
        self._pending += data
        events: list[SpeechEvent] = []
        n = self._frame_bytes
        offset = 0
        while len(self._pending) - offset >= n:
            event = self._frame(self._pending[offset : offset + n])
            offset += n
            if event is not None:
                events.append(event)
        self._pending = self._pending[offset:]
        return events

    def _frame(self, frame: bytes) -> SpeechEvent | None:
        index = self._frames
        self._frames += 1
        voiced = slin_rms(frame) >= self._floor and self._vad.is_speech(frame)
        ms = self.frame_ms / 1000
        if not self.in_speech:
            if voiced:
                if self._voiced_run == 0:
                    self._run_start_frame = index
                self._voiced_run += 1
                if self._voiced_run >= self._start_frames:
                    self.in_speech = True
                    self._silent_run = 0
                    self._utterance_start_frame = self._run_start_frame
                    self._last_voiced_frame = index
                    return SpeechEvent("speech_started", self._run_start_frame * ms)
            else:
                self._voiced_run = 0
            return None
        if voiced:
            self._silent_run = 0
            self._last_voiced_frame = index
            return None
        self._silent_run += 1
        if self._silent_run >= self._end_frames:
            self.in_speech = False
            self._voiced_run = 0
            self._silent_run = 0
            end = (self._last_voiced_frame + 1) * ms
            return SpeechEvent("speech_ended", end, end - self._utterance_start_frame * ms)
        return None

    def reset(self) -> None:
        """Forget any utterance in progress (the stream clock keeps running)."""
        self.in_speech = False
        self._voiced_run = 0
        self._silent_run = 0
