"""The level of 16-bit linear audio (voiceline.audio.levels)."""

from __future__ import annotations

import math
import struct

import pytest

from voiceline.audio.levels import slin_rms


def test_rms_of_a_full_scale_square_wave_and_of_a_sine() -> None:
    square = struct.pack("<160h", *([32767, -32767] * 80))
    assert slin_rms(square) == pytest.approx(32767.0)
    sine = struct.pack("<160h", *(round(10000 * math.sin(2 * math.pi * k / 16)) for k in range(160)))
    assert slin_rms(sine) == pytest.approx(10000 / math.sqrt(2), rel=1e-3)


def test_rms_of_nothing_is_zero_and_a_trailing_odd_byte_is_ignored() -> None:
    assert slin_rms(b"") == 0.0
    assert slin_rms(b"\x7f") == 0.0
    assert slin_rms(struct.pack("<h", -32768) + b"\x7f") == 32768.0
