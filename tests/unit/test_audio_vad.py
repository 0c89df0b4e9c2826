"""The shared webrtcvad wrapper (audio/vad.py) and the shared slin rate table."""

from __future__ import annotations

import numpy as np
import pytest

from voiceline.audio.formats import SLIN_FORMAT_NAMES, SLIN_RATES
from voiceline.audio.vad import VoiceActivity, vad_rate_for
from voiceline.sim.speech import synthesize


def frames(pcm: bytes, rate: int, frame_ms: int = 20) -> list[bytes]:
    n = rate * frame_ms // 1000 * 2
    return [pcm[i : i + n] for i in range(0, len(pcm) - n + 1, n)]


@pytest.mark.espeak
@pytest.mark.parametrize("rate", [8000, 16000, 24000, 44100])
def test_speech_is_speech_and_silence_is_not_at_any_slin_rate(rate: int) -> None:
    vad = VoiceActivity(2, rate)
    speech = frames(synthesize("Hello, this is the booking line.", rate), rate)
    voiced = [vad.is_speech(f) for f in speech]
    assert sum(voiced) >= len(voiced) // 2
    quiet = VoiceActivity(2, rate)
    assert not any(quiet.is_speech(f) for f in frames(b"\x00\x00" * rate, rate))


def test_rates_webrtcvad_does_not_take_are_resampled_to_16k() -> None:
    assert [vad_rate_for(r) for r in (8000, 12000, 16000, 24000, 48000, 192000)] == [
        8000, 16000, 16000, 16000, 48000, 16000,
    ]
    assert VoiceActivity(0, 24000).vad_rate == 16000


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((4, 8000, 20), "aggressiveness"),
        ((2, 8000, 25), "frame_ms"),
        ((2, 0, 20), "sample_rate"),
        ((2, 11025, 10), "whole number of samples"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(args: tuple[int, int, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        VoiceActivity(*args)


def test_a_frame_from_a_stateless_resample_always_fits_the_vad() -> None:
    vad = VoiceActivity(3, 44100, 30)  # 1323 samples -> 480 at 16 kHz, with rounding
    rng = np.random.default_rng(1)
    for _ in range(5):
        vad.is_speech(rng.integers(-2000, 2000, 1323, dtype=np.int16).tobytes())


def test_one_table_of_slin_rates_with_their_asterisk_names() -> None:
    assert SLIN_RATES == (8000, 12000, 16000, 24000, 32000, 44100, 48000, 96000, 192000)
    assert SLIN_FORMAT_NAMES[8000] == "slin" and SLIN_FORMAT_NAMES[44100] == "slin44"
    assert all(name.startswith("slin") for name in SLIN_FORMAT_NAMES.values())
