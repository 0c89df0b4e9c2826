"""G.711 μ-law and A-law <-> 16-bit linear PCM, table driven with numpy.

Tables are built once from the ITU-T G.711 definitions; conversion is a single
vectorised lookup per chunk, cheap enough for the per-frame path.
"""

from __future__ import annotations

import numpy as np

_BIAS = 0x84
_CLIP = 32635


def _mulaw_decode_table() -> np.ndarray:
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
    return np.where(sign != 0, -magnitude, magnitude).astype(np.int16)


def _alaw_decode_table() -> np.ndarray:
    codes = np.arange(256, dtype=np.int32) ^ 0x55
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = np.where(
        exponent == 0,
        (mantissa << 4) + 8,
        ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0),
    )
    return np.where(sign != 0, magnitude, -magnitude).astype(np.int16)


def _mulaw_encode_table() -> np.ndarray:
    """Encoder over all 65536 linear values (index = sample + 32768)."""
    samples = np.arange(-32768, 32768, dtype=np.int32)
    sign = np.where(samples < 0, 0x80, 0)
    # G.711 works on 14-bit magnitudes: drop the two low bits first (floor, as the
    # reference encoder does) so negative values land in the same segment.
    coarse = samples >> 2
    magnitude = (np.minimum(np.where(coarse < 0, -coarse, coarse), _CLIP >> 2) << 2) + _BIAS
    exponent = np.floor(np.log2(magnitude)).astype(np.int32) - 7
    exponent = np.clip(exponent, 0, 7)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8)


def _alaw_encode_table() -> np.ndarray:
    samples = np.arange(-32768, 32768, dtype=np.int32)
    sign = np.where(samples >= 0, 0x80, 0)
    magnitude = np.minimum(np.where(samples < 0, -samples - 1, samples), 32767) >> 3
    exponent = np.where(magnitude < 32, 0, np.floor(np.log2(np.maximum(magnitude, 1))).astype(np.int32) - 4)
    exponent = np.clip(exponent, 0, 7)
    mantissa = np.where(exponent == 0, magnitude >> 1, magnitude >> exponent) & 0x0F
    return ((sign | (exponent << 4) | mantissa) ^ 0x55).astype(np.uint8)


_MULAW_DECODE = _mulaw_decode_table()
_ALAW_DECODE = _alaw_decode_table()
_MULAW_ENCODE = _mulaw_encode_table()
_ALAW_ENCODE = _alaw_encode_table()


def mulaw_to_slin(data: bytes) -> bytes:
    """μ-law bytes -> 16-bit little-endian linear PCM (twice as many bytes)."""
    return _MULAW_DECODE[np.frombuffer(data, dtype=np.uint8)].astype("<i2").tobytes()


def slin_to_mulaw(data: bytes) -> bytes:
    """16-bit little-endian linear PCM -> μ-law. ``data`` must hold whole samples."""
    samples = np.frombuffer(data, dtype="<i2").astype(np.int32) + 32768
    return _MULAW_ENCODE[samples].tobytes()


def alaw_to_slin(data: bytes) -> bytes:
    return _ALAW_DECODE[np.frombuffer(data, dtype=np.uint8)].astype("<i2").tobytes()


def slin_to_alaw(data: bytes) -> bytes:
    samples = np.frombuffer(data, dtype="<i2").astype(np.int32) + 32768
    return _ALAW_ENCODE[samples].tobytes()
