"""Test audio for lab calls: G.711 mu-law encode/decode and raw 8 kHz mu-law files of speech
(espeak-ng), tones and silence (sox)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from labenv import SAMPLE_RATE, need_tool, run_tool


# ---------------------------------------------------------------------------
# G.711 mu-law


def _ulaw_byte_to_linear(u: int) -> int:
    u = ~u & 0xFF
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return -magnitude if sign else magnitude


_ULAW_TABLE: tuple[int, ...] = tuple(_ulaw_byte_to_linear(i) for i in range(256))
_ULAW_BIAS = 0x21  # 0x84 >> 2, in the 14-bit domain
_ULAW_CLIP = 8159


def ulaw_decode(data: bytes) -> list[int]:
    """Decode G.711 mu-law bytes to 16-bit linear samples."""
    table = _ULAW_TABLE
    return [table[b] for b in data]


def _linear_to_ulaw(sample: int) -> int:
    # G.711 reference: work on the 14-bit magnitude (arithmetic shift).
    value = int(sample) >> 2
    if value < 0:
        value, mask = -value, 0x7F
    else:
        mask = 0xFF
    value = min(value, _ULAW_CLIP) + _ULAW_BIAS
    segment = max(0, value.bit_length() - 6)
    if segment >= 8:
        return 0x7F ^ mask
    return ((segment << 4) | ((value >> (segment + 1)) & 0x0F)) ^ mask


def ulaw_encode(samples: Iterable[int]) -> bytes:
    """Encode 16-bit linear samples to G.711 mu-law bytes."""
    return bytes(_linear_to_ulaw(int(s)) for s in samples)


def read_ulaw(path: str | os.PathLike[str]) -> list[int]:
    """Decoded samples of a raw 8 kHz mu-law file."""
    return ulaw_decode(Path(path).read_bytes())


def ulaw_out_args(path: str | os.PathLike[str]) -> list[str]:
    return ["-r", str(SAMPLE_RATE), "-c", "1", "-e", "u-law", "-t", "raw", str(path)]


def make_speech_ulaw(
    text: str,
    path: str | os.PathLike[str],
    seconds: float | None = None,
    voice: str | None = None,
    speed: int | None = None,
) -> Path:
    """Speak ``text`` with espeak-ng into a raw 8 kHz mu-law file.

    With ``seconds`` the result is exactly that long: padded with silence,
    or cut if the speech is longer. Returns the path.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [need_tool("espeak-ng")]
    if voice:
        cmd += ["-v", voice]
    if speed:
        cmd += ["-s", str(speed)]
    with tempfile.TemporaryDirectory(prefix="lab-tts-") as tmp:
        wav = Path(tmp) / "speech.wav"
        run_tool(cmd + ["-w", str(wav), text])
        effects: list[str] = []
        if seconds is not None:
            effects = ["pad", "0", f"{seconds:.3f}", "trim", "0", f"{seconds:.3f}"]
        run_tool([need_tool("sox"), str(wav)] + ulaw_out_args(out) + effects)
    return out


def make_tone_ulaw(
    freq: float, seconds: float, path: str | os.PathLike[str], volume: float = 0.5
) -> Path:
    """A sine tone of ``freq`` Hz as raw 8 kHz mu-law (``volume`` 0..1)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    run_tool(
        [need_tool("sox"), "-n"]
        + ulaw_out_args(out)
        + ["synth", f"{seconds:.3f}", "sine", str(freq), "vol", str(volume)]
    )
    return out


def make_silence_ulaw(seconds: float, path: str | os.PathLike[str]) -> Path:
    """Digital silence (0xFF bytes) as raw 8 kHz mu-law."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(b"\xff" * round(seconds * SAMPLE_RATE))
    return out
