"""Signal level of 16-bit linear audio, shared by the barge-in detector and telemetry."""

from __future__ import annotations

import math

import numpy as np


def slin_rms(pcm: bytes) -> float:
    """RMS of slin16 LE samples on the 16-bit scale (a trailing odd byte is ignored; 0.0 if empty)."""
    # Called for every caller frame of every call: one numpy conversion and one dot
    # product, the square root in plain Python (a numpy ufunc call on a scalar costs
    # more than the sum of squares of a 20 ms frame).
    samples = np.frombuffer(pcm, dtype="<i2", count=len(pcm) // 2).astype(np.float64)
    count = samples.size
    if not count:
        return 0.0
    return math.sqrt(float(samples.dot(samples)) / count)
