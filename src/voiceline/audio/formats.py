"""Audio formats the engine moves between the phone leg and providers.

A format is an encoding plus a sample rate; everything else (bytes per sample,
bytes per 20 ms frame) is derived so no module keeps its own copy of the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Encoding = Literal["slin16", "mulaw", "alaw"]

_BYTES_PER_SAMPLE: dict[str, int] = {"slin16": 2, "mulaw": 1, "alaw": 1}


@dataclass(frozen=True, slots=True)
class AudioFormat:
    encoding: Encoding
    sample_rate: int

    def __post_init__(self) -> None:
        if self.encoding not in _BYTES_PER_SAMPLE:
            raise ValueError(f"unknown audio encoding {self.encoding!r}")
        if self.sample_rate <= 0:
            raise ValueError(f"sample rate must be positive, got {self.sample_rate}")

    @property
    def bytes_per_sample(self) -> int:
        return _BYTES_PER_SAMPLE[self.encoding]

    def bytes_for_ms(self, ms: float) -> int:
        """Bytes of audio covering ``ms`` milliseconds, rounded down to whole samples."""
        samples = int(self.sample_rate * ms / 1000)
        return samples * self.bytes_per_sample

    def ms_for_bytes(self, nbytes: int) -> float:
        return nbytes / self.bytes_per_sample * 1000 / self.sample_rate

    def silence(self, nbytes: int) -> bytes:
        """Silence of ``nbytes`` in this encoding (0xFF is μ-law zero, 0xD5 A-law zero)."""
        fill = {"slin16": b"\x00", "mulaw": b"\xff", "alaw": b"\xd5"}[self.encoding]
        return fill * nbytes

    def __str__(self) -> str:
        return f"{self.encoding}@{self.sample_rate}"


SLIN_8K = AudioFormat("slin16", 8000)
MULAW_8K = AudioFormat("mulaw", 8000)

# The signed-linear rates Asterisk carries, with each one's Asterisk format name
# (ARI externalMedia ``format``, dialplan codec). AudioSocket has one audio frame
# kind per rate (0x10-0x18, in this order) and the config accepts exactly these.
SLIN_FORMAT_NAMES: dict[int, str] = {
    8000: "slin",
    12000: "slin12",
    16000: "slin16",
    24000: "slin24",
    32000: "slin32",
    44100: "slin44",
    48000: "slin48",
    96000: "slin96",
    192000: "slin192",
}
SLIN_RATES: tuple[int, ...] = tuple(SLIN_FORMAT_NAMES)
