"""The one webrtcvad wrapper: is this frame of slin16 speech? (pure, per stream)

webrtcvad takes 10, 20 or 30 ms frames at 8, 16, 32 or 48 kHz. ``VoiceActivity``
accepts frames at any rate whose ``frame_ms`` is a whole number of samples; frames
at a rate webrtcvad does not take are resampled one by one (statelessly, soxr) to
16 kHz. A stateless resample is slightly off at frame edges, which does not matter
for a speech/non-speech flag. Streams that resample statefully themselves pass the
VAD rate and nothing is resampled here.

One instance per stream: webrtcvad keeps a noise model that adapts to what it is
shown, so two streams must not share one.
"""

from __future__ import annotations

import numpy as np
import soxr
import webrtcvad

__all__ = ["VAD_FRAME_MS", "VAD_RATES", "VoiceActivity", "vad_rate_for"]

VAD_RATES = (8000, 16000, 32000, 48000)
VAD_FRAME_MS = (10, 20, 30)
_FALLBACK_RATE = 16000


def vad_rate_for(sample_rate: int) -> int:
    """The rate webrtcvad sees for audio at ``sample_rate``."""
    return sample_rate if sample_rate in VAD_RATES else _FALLBACK_RATE


class VoiceActivity:
    """webrtcvad speech flag for exact ``frame_ms`` frames of slin16 LE at ``sample_rate``.

    ``aggressiveness`` 0..3: 0 least, 3 most eager to call audio non-speech.
    """

    __slots__ = ("_vad", "_vad_frame_samples", "frame_ms", "sample_rate", "vad_rate")

    def __init__(self, aggressiveness: int, sample_rate: int, frame_ms: int = 20) -> None:
        if not isinstance(aggressiveness, int) or not 0 <= aggressiveness <= 3:
            raise ValueError(f"vad aggressiveness must be 0..3, got {aggressiveness!r}")
        if frame_ms not in VAD_FRAME_MS:
            raise ValueError(f"frame_ms must be one of {VAD_FRAME_MS} (webrtcvad frame sizes), got {frame_ms}")
        if not isinstance(sample_rate, int) or sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive int, got {sample_rate!r}")
        if sample_rate * frame_ms % 1000:
            raise ValueError(f"{frame_ms} ms at {sample_rate} Hz is not a whole number of samples")
        self.sample_rate = sample_rate
        self.frame_ms = frame_ms
        self.vad_rate = vad_rate_for(sample_rate)
        self._vad_frame_samples = self.vad_rate * frame_ms // 1000
        self._vad = webrtcvad.Vad(aggressiveness)

    def is_speech(self, frame: bytes) -> bool:
        """``frame``: exactly ``frame_ms`` of slin16 LE at ``sample_rate``."""
        if self.vad_rate != self.sample_rate:
            frame = self._resampled(frame)
        return self._vad.is_speech(frame, self.vad_rate)

    def _resampled(self, frame: bytes) -> bytes:
        samples = np.frombuffer(frame, dtype="<i2")
        resampled = soxr.resample(samples, self.sample_rate, self.vad_rate)
        # A stateless resample may come out a sample short or long; webrtcvad needs
        # exact frame sizes.
        fitted = np.zeros(self._vad_frame_samples, dtype="<i2")
        n = min(len(resampled), self._vad_frame_samples)
        fitted[:n] = resampled[:n]
        return fitted.tobytes()
