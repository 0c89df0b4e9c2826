"""A small RGB raster canvas and a PNG encoder, with numpy, zlib and struct only.

The call report is an operator's picture, not a publication plot, so the engine
does not take on matplotlib/PIL for it: filled rectangles, straight lines and a
5x7 bitmap font (upper-case ASCII; lower case is drawn as upper case) are enough.
Everything drawn is clipped to the canvas.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path

import numpy as np

__all__ = ["GLYPH_ADVANCE", "GLYPH_HEIGHT", "Canvas", "Colour", "encode_png", "write_png"]

Colour = tuple[int, int, int]

GLYPH_WIDTH = 5
GLYPH_HEIGHT = 7
GLYPH_ADVANCE = GLYPH_WIDTH + 1  # one column of spacing between characters

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOUR_TYPE_RGB = 2
_FILTER_NONE = 0

# Rows top to bottom, bit 4 = leftmost pixel.
_FONT: dict[str, tuple[int, ...]] = {
    " ": (0, 0, 0, 0, 0, 0, 0),
    "0": (0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E),
    "1": (0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E),
    "2": (0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F),
    "3": (0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E),
    "4": (0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02),
    "5": (0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E),
    "6": (0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E),
    "7": (0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08),
    "8": (0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E),
    "9": (0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C),
    "A": (0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11),
    "B": (0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E),
    "C": (0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E),
    "D": (0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C),
    "E": (0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F),
    "F": (0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10),
    "G": (0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F),
    "H": (0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11),
    "I": (0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E),
    "J": (0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C),
    "K": (0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11),
    "L": (0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F),
    "M": (0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11),
    "N": (0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11),
    "O": (0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E),
    "P": (0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10),
    "Q": (0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D),
    "R": (0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11),
    "S": (0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E),
    "T": (0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04),
    "U": (0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E),
    "V": (0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04),
    "W": (0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A),
    "X": (0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11),
    "Y": (0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04),
    "Z": (0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F),
    ".": (0, 0, 0, 0, 0, 0x0C, 0x0C),
    ",": (0, 0, 0, 0, 0x0C, 0x04, 0x08),
    ":": (0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0),
    ";": (0, 0x0C, 0x0C, 0, 0x0C, 0x04, 0x08),
    "-": (0, 0, 0, 0x1F, 0, 0, 0),
    "+": (0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0),
    "_": (0, 0, 0, 0, 0, 0, 0x1F),
    "=": (0, 0, 0x1F, 0, 0x1F, 0, 0),
    ">": (0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08),
    "<": (0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02),
    "(": (0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02),
    ")": (0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08),
    "[": (0x0E, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0E),
    "]": (0x0E, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0E),
    "/": (0, 0x01, 0x02, 0x04, 0x08, 0x10, 0),
    "%": (0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03),
    "!": (0x04, 0x04, 0x04, 0x04, 0x04, 0, 0x04),
    "?": (0x0E, 0x11, 0x01, 0x02, 0x04, 0, 0x04),
    "'": (0x0C, 0x04, 0x08, 0, 0, 0, 0),
    '"': (0x0A, 0x0A, 0, 0, 0, 0, 0),
    "*": (0, 0x04, 0x15, 0x0E, 0x15, 0x04, 0),
    "#": (0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A),
    "|": (0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04),
    "@": (0x0E, 0x11, 0x01, 0x0D, 0x15, 0x15, 0x0E),
    "&": (0x0C, 0x12, 0x14, 0x08, 0x15, 0x12, 0x0D),
}


def _glyph_mask(rows: tuple[int, ...]) -> np.ndarray:
    bits = np.array([[(row >> (GLYPH_WIDTH - 1 - col)) & 1 for col in range(GLYPH_WIDTH)] for row in rows])
    return bits.astype(bool)


_MASKS = {char: _glyph_mask(rows) for char, rows in _FONT.items()}


class Canvas:
    """An RGB image (``pixels``: height x width x 3, uint8) with clipped drawing."""

    def __init__(self, width: int, height: int, background: Colour = (255, 255, 255)) -> None:
        if width <= 0 or height <= 0:
            raise ValueError(f"canvas must be at least 1x1, got {width}x{height}")
        self.width = width
        self.height = height
        self.pixels = np.empty((height, width, 3), dtype=np.uint8)
        self.pixels[:, :] = background

    def fill_rect(self, x0: float, y0: float, x1: float, y1: float, colour: Colour) -> None:
        """Fill the pixels from (x0, y0) up to, not including, (x1, y1)."""
        left, right = sorted((round(x0), round(x1)))
        top, bottom = sorted((round(y0), round(y1)))
        left, top = max(left, 0), max(top, 0)
        right, bottom = min(right, self.width), min(bottom, self.height)
        if left < right and top < bottom:
            self.pixels[top:bottom, left:right] = colour

    def line(self, x0: float, y0: float, x1: float, y1: float, colour: Colour, width: int = 1) -> None:
        steps = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
        xs = np.rint(np.linspace(x0, x1, steps)).astype(np.int64)
        ys = np.rint(np.linspace(y0, y1, steps)).astype(np.int64)
        self._plot(xs, ys, colour, width)

    def polyline(self, points: Sequence[tuple[float, float]], colour: Colour, width: int = 1) -> None:
        if len(points) == 1:
            x, y = points[0]
            self._plot(np.array([round(x)]), np.array([round(y)]), colour, width)
        for (x0, y0), (x1, y1) in pairwise(points):
            self.line(x0, y0, x1, y1, colour, width)

    def text(self, x: float, y: float, text: str, colour: Colour, scale: int = 1) -> None:
        """Draw ``text`` with its top-left corner at (x, y); unknown characters as '?'."""
        left, top = round(x), round(y)
        for i, char in enumerate(text.upper()):
            mask = _MASKS.get(char, _MASKS["?"])
            if scale > 1:
                mask = np.kron(mask, np.ones((scale, scale), dtype=bool))
            self._stamp(left + i * GLYPH_ADVANCE * scale, top, mask, colour)

    @staticmethod
    def text_width(text: str, scale: int = 1) -> int:
        return max(len(text) * GLYPH_ADVANCE - 1, 0) * scale

    def _plot(self, xs: np.ndarray, ys: np.ndarray, colour: Colour, width: int) -> None:
        lo = -(width // 2)
        for dx in range(lo, lo + width):
            for dy in range(lo, lo + width):
                px, py = xs + dx, ys + dy
                inside = (px >= 0) & (px < self.width) & (py >= 0) & (py < self.height)
                self.pixels[py[inside], px[inside]] = colour

    def _stamp(self, left: int, top: int, mask: np.ndarray, colour: Colour) -> None:
        h, w = mask.shape
        x0, y0 = max(left, 0), max(top, 0)
        x1, y1 = min(left + w, self.width), min(top + h, self.height)
        if x0 >= x1 or y0 >= y1:
            return
        visible = mask[y0 - top : y1 - top, x0 - left : x1 - left]
        self.pixels[y0:y1, x0:x1][visible] = colour


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of an RGB image (height x width x 3, uint8): 8-bit truecolour, no filter."""
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"expected a height x width x 3 uint8 array, got {pixels.shape} {pixels.dtype}")
    height, width = pixels.shape[:2]
    scanlines = np.empty((height, 1 + width * 3), dtype=np.uint8)
    scanlines[:, 0] = _FILTER_NONE  # every row starts with its filter type
    scanlines[:, 1:] = pixels.reshape(height, width * 3)
    header = struct.pack(">IIBBBBB", width, height, 8, _COLOUR_TYPE_RGB, 0, 0, 0)
    return b"".join(
        (
            _PNG_SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 6)),
            _chunk(b"IEND", b""),
        )
    )


def write_png(path: str | Path, pixels: np.ndarray) -> None:
    Path(path).write_bytes(encode_png(pixels))


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)
