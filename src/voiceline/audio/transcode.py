"""Stateful conversion between two AudioFormats (encoding and sample rate).

One ``Transcoder`` per call and direction: the resampler keeps filter state across
chunks (so chunk edges do not click) and an odd trailing byte of 16-bit audio is
carried to the next chunk instead of being dropped.
"""

from __future__ import annotations

import numpy as np
import soxr

from voiceline.audio import g711
from voiceline.audio.formats import AudioFormat

_TO_SLIN = {"mulaw": g711.mulaw_to_slin, "alaw": g711.alaw_to_slin}
_FROM_SLIN = {"mulaw": g711.slin_to_mulaw, "alaw": g711.slin_to_alaw}


class Transcoder:
    def __init__(self, source: AudioFormat, target: AudioFormat) -> None:
        self.source = source
        self.target = target
        self._carry = b""
        self._resampler = (
            soxr.ResampleStream(source.sample_rate, target.sample_rate, 1, dtype="int16", quality="HQ")
            if source.sample_rate != target.sample_rate
            else None
        )

    @property
    def is_identity(self) -> bool:
        return self.source == self.target

    def convert(self, data: bytes, *, last: bool = False) -> bytes:
        if self.is_identity:
            return data
        slin = self._decode(data)
        if self._resampler is not None:
            samples = np.frombuffer(slin, dtype="<i2")
            slin = self._resampler.resample_chunk(samples, last=last).astype("<i2").tobytes()
        if self.target.encoding == "slin16":
            return slin
        return _FROM_SLIN[self.target.encoding](slin)

    def _decode(self, data: bytes) -> bytes:
        if self.source.encoding != "slin16":
            return _TO_SLIN[self.source.encoding](data)
        data = self._carry + data
        whole = len(data) & ~1
        self._carry = data[whole:]
        return data[:whole]
