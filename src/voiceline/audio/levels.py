"""Signal level of 16-bit linear audio, shared by the barge-in detector and telemetry."""

from __future__ import annotations

import numpy as np


def slin_rms(pcm: bytes) -> float:
    """RMS of slin16 LE samples on the 16-bit scale (a trailing odd byte is ignored; 0.0 if empty)."""
    samples = np.frombuffer(pcm, dtype="<i2", count=len(pcm) // 2).astype(np.float64)
    if not samples.size:
        return 0.0
    return float(np.sqrt(np.dot(samples, samples) / samples.size))
