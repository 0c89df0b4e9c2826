import math

import numpy as np

from voiceline.audio.formats import MULAW_8K, SLIN_8K, AudioFormat
from voiceline.audio.g711 import alaw_to_slin, mulaw_to_slin, slin_to_alaw, slin_to_mulaw
from voiceline.audio.transcode import Transcoder


def test_mulaw_roundtrip_is_stable_for_every_code():
    codes = bytes(range(256))
    decoded = mulaw_to_slin(codes)
    # 0x7F and 0xFF both mean zero; every other code survives decode+encode exactly
    again = slin_to_mulaw(decoded)
    assert [a for a, b in zip(codes, again) if a != b] == [0x7F]


def test_alaw_roundtrip_is_stable_for_every_code():
    codes = bytes(range(256))
    assert slin_to_alaw(alaw_to_slin(codes)) == codes


def test_mulaw_known_values():
    assert mulaw_to_slin(b"\xff") == b"\x00\x00"
    assert np.frombuffer(mulaw_to_slin(b"\x00"), "<i2")[0] == -32124
    assert np.frombuffer(mulaw_to_slin(b"\x80"), "<i2")[0] == 32124


def test_mulaw_quantisation_error_is_small_relative():
    x = np.arange(-32000, 32000, 13, dtype=np.int16)
    y = np.frombuffer(mulaw_to_slin(slin_to_mulaw(x.tobytes())), "<i2").astype(float)
    rel = np.abs(y - x) / np.maximum(np.abs(x), 256)
    assert rel.max() < 0.07


def _tone(rate: int, seconds: float, freq: float = 440.0) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    return (np.sin(2 * math.pi * freq * t) * 8000).astype("<i2").tobytes()


def test_transcoder_resamples_statefully_and_carries_odd_bytes():
    src = AudioFormat("slin16", 24000)
    pcm = _tone(24000, 1.0)
    t = Transcoder(src, MULAW_8K)
    out = b"".join(t.convert(pcm[i : i + 333]) for i in range(0, len(pcm), 333)) + t.convert(b"", last=True)
    assert len(out) == 8000  # one second of μ-law at 8 kHz, nothing lost at odd chunk edges
    back = np.frombuffer(mulaw_to_slin(out), "<i2").astype(float)
    spectrum = np.abs(np.fft.rfft(back[1000:7000]))
    peak_hz = np.argmax(spectrum) * 8000 / 6000
    assert abs(peak_hz - 440) < 3


def test_identity_transcoder_returns_input():
    t = Transcoder(SLIN_8K, SLIN_8K)
    assert t.is_identity and t.convert(b"\x01\x02\x03") == b"\x01\x02\x03"
