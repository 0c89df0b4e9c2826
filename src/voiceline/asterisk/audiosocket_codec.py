"""AudioSocket frame codec: no I/O, only bytes in and frames out.

Wire format (Asterisk 22): one kind byte, a two-byte big-endian payload length,
then the payload.  Asterisk is always the TCP client; it sends a UUID frame
first, then audio and DTMF frames.  We answer with audio frames and, to end a
call, a hangup frame.  This module is where the framing rules live and what the
unit and property tests exercise.
"""

from __future__ import annotations

import struct
import uuid as uuid_module
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

from voiceline.audio import formats

HEADER = struct.Struct(">BH")
HEADER_SIZE = HEADER.size  # 3
MAX_PAYLOAD = 0xFFFF

UUID_PAYLOAD_SIZE = 16
DTMF_PAYLOAD_SIZE = 1
# Asterisk's error payload is a single optional code byte.  A little slack keeps
# us tolerant of a peer that pads it, while a long "error" is clearly garbage.
MAX_ERROR_PAYLOAD = 4
# Larger than 20 ms at 192 kHz (7680 bytes) with room for longer ptimes, yet
# small enough that a corrupt length is refused as soon as its header arrives.
DEFAULT_MAX_AUDIO_PAYLOAD = 16384


class FrameKind(IntEnum):
    HANGUP = 0x00
    UUID = 0x01
    DTMF = 0x03
    SLIN_8K = 0x10
    SLIN_12K = 0x11
    SLIN_16K = 0x12
    SLIN_24K = 0x13
    SLIN_32K = 0x14
    SLIN_44K = 0x15
    SLIN_48K = 0x16
    SLIN_96K = 0x17
    SLIN_192K = 0x18
    ERROR = 0xFF


class ErrorCode(IntEnum):
    """Codes Asterisk puts in the payload of an error frame."""

    HANGUP = 0x01
    FRAME_FORWARDING = 0x02
    MEMORY = 0x04


# Asterisk does not interpret the code of an error frame we send: any kind other
# than hangup or audio makes it drop the call.  We still pick a meaningful code
# so a packet capture reads correctly: "this call is being hung up".
REFUSAL_ERROR_CODE = ErrorCode.HANGUP

# The audio kinds carry the shared slin rates (audio.formats.SLIN_RATES) in order.
_SLIN_KINDS = (
    FrameKind.SLIN_8K, FrameKind.SLIN_12K, FrameKind.SLIN_16K, FrameKind.SLIN_24K, FrameKind.SLIN_32K,
    FrameKind.SLIN_44K, FrameKind.SLIN_48K, FrameKind.SLIN_96K, FrameKind.SLIN_192K,
)
SLIN_RATES: dict[FrameKind, int] = dict(zip(_SLIN_KINDS, formats.SLIN_RATES, strict=True))
_KIND_FOR_RATE: dict[int, FrameKind] = {rate: kind for kind, rate in SLIN_RATES.items()}
_KNOWN_KIND_BYTES = frozenset(int(kind) for kind in FrameKind)


def slin_kind_for_rate(rate: int) -> FrameKind:
    """The audio frame kind carrying signed linear audio at ``rate`` Hz."""
    try:
        return _KIND_FOR_RATE[rate]
    except KeyError:
        supported = ", ".join(str(r) for r in sorted(_KIND_FOR_RATE))
        raise ValueError(f"AudioSocket has no frame kind for {rate} Hz (supported: {supported})") from None


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid AudioSocket stream.

    ``decoded`` holds the frames that were complete and valid before the
    malformed one within the same :meth:`FrameDecoder.feed` call, so a caller
    can still act on them (for example, log the call's UUID) before closing.
    """

    def __init__(self, reason: str, decoded: Sequence[Frame] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.decoded: tuple[Frame, ...] = tuple(decoded)


@dataclass(frozen=True, slots=True)
class Frame:
    kind: FrameKind
    payload: bytes

    @property
    def is_audio(self) -> bool:
        return self.kind in SLIN_RATES

    @property
    def sample_rate(self) -> int | None:
        """Sample rate in Hz for audio frames, ``None`` for every other kind."""
        return SLIN_RATES.get(self.kind)

    @property
    def uuid(self) -> str:
        """Canonical lowercase, hyphenated form of a UUID frame's payload."""
        self._require_kind(FrameKind.UUID)
        return str(uuid_module.UUID(bytes=self.payload))

    @property
    def dtmf(self) -> str:
        """The digit of a DTMF frame (``0-9``, ``*``, ``#``, ``A-D``)."""
        self._require_kind(FrameKind.DTMF)
        return self.payload.decode("ascii")

    @property
    def error_code(self) -> int | None:
        """First payload byte of an error frame; ``None`` when the peer sent no code."""
        self._require_kind(FrameKind.ERROR)
        return self.payload[0] if self.payload else None

    def _require_kind(self, expected: FrameKind) -> None:
        # Reading a UUID out of an audio frame is a programming error, not data.
        if self.kind is not expected:
            raise ValueError(f"{self.kind.name} frame has no {expected.name} payload")


def encode_frame(kind: FrameKind | int, payload: bytes = b"") -> bytes:
    """Header plus payload as one ``bytes`` object, ready for a single write.

    Only the framing is checked (known kind, length fits 16 bits); the
    ``encode_*`` helpers below add the per-kind rules.
    """
    try:
        kind = FrameKind(kind)
    except ValueError:
        raise ValueError(f"unknown AudioSocket frame kind 0x{int(kind):02x}") from None
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds the {MAX_PAYLOAD}-byte frame limit")
    return HEADER.pack(kind, len(payload)) + bytes(payload)


def encode_audio(payload: bytes, rate: int = 8000) -> bytes:
    """An audio frame of signed linear 16-bit little-endian samples at ``rate`` Hz."""
    return _encode_audio_kind(slin_kind_for_rate(rate), payload)


_AUDIO_HEADERS: dict[tuple[int, int], bytes] = {}


def _encode_audio_kind(kind: FrameKind, payload: bytes) -> bytes:
    # Every 20 ms frame of a call has the same kind and length: cache the 3-byte header.
    header = _AUDIO_HEADERS.get((kind, len(payload)))
    if header is None:
        if kind not in SLIN_RATES:
            raise ValueError(f"{kind.name} is not an audio frame kind")
        if not payload:
            # Asterisk hangs up the channel when it receives a zero-length audio frame.
            raise ValueError("audio payload must not be empty")
        header = encode_frame(kind, payload)[:3]
        if len(_AUDIO_HEADERS) < 256:
            _AUDIO_HEADERS[(kind, len(payload))] = header
    return header + payload


def encode_hangup() -> bytes:
    return encode_frame(FrameKind.HANGUP)


def encode_error(code: int) -> bytes:
    if not 0 <= code <= 0xFF:
        raise ValueError(f"error code must fit in one byte, got {code}")
    return encode_frame(FrameKind.ERROR, bytes((code,)))


def encode_uuid(uuid_str: str | uuid_module.UUID) -> bytes:
    call_uuid = uuid_str if isinstance(uuid_str, uuid_module.UUID) else uuid_module.UUID(uuid_str)
    return encode_frame(FrameKind.UUID, call_uuid.bytes)


class FrameDecoder:
    """Incremental AudioSocket parser: feed it bytes as they arrive, get whole frames.

    Headers are validated as soon as they are complete (the kind byte even
    earlier), so a bogus length is refused without waiting for its payload.
    After a :class:`ProtocolError` the stream position is unknown, so the
    decoder stays failed and every later :meth:`feed` raises the same reason.
    """

    def __init__(self, max_audio_payload: int = DEFAULT_MAX_AUDIO_PAYLOAD) -> None:
        if not 1 <= max_audio_payload <= MAX_PAYLOAD:
            raise ValueError(f"max_audio_payload must be within 1..{MAX_PAYLOAD}, got {max_audio_payload}")
        self.max_audio_payload = max_audio_payload
        self._buffer = bytearray()
        self._failure: str | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buffer)

    @property
    def failed(self) -> bool:
        return self._failure is not None

    def feed(self, data: bytes) -> list[Frame]:
        if self._failure is not None:
            raise ProtocolError(self._failure)
        buffer = self._buffer
        buffer += data
        frames: list[Frame] = []
        offset = 0
        try:
            while True:
                available = len(buffer) - offset
                if available == 0:
                    break
                kind = self._check_kind(buffer[offset])
                if available < HEADER_SIZE:
                    break
                _, length = HEADER.unpack_from(buffer, offset)
                self._check_length(kind, length)
                end = offset + HEADER_SIZE + length
                if len(buffer) < end:
                    break
                payload = bytes(buffer[offset + HEADER_SIZE : end])
                self._check_payload(kind, payload)
                frames.append(Frame(kind, payload))
                offset = end
        except ProtocolError as error:
            self._failure = error.reason
            buffer.clear()
            raise ProtocolError(error.reason, frames) from None
        # One compaction per feed keeps the cost linear however the stream is split.
        del buffer[:offset]
        return frames

    @staticmethod
    def _check_kind(kind_byte: int) -> FrameKind:
        if kind_byte not in _KNOWN_KIND_BYTES:
            if kind_byte == 0x02:
                # 0x02 "silence" exists only in the Go library; Asterisk never sends it.
                raise ProtocolError("unknown frame kind 0x02 (Go-library silence, not sent by Asterisk)")
            raise ProtocolError(f"unknown frame kind 0x{kind_byte:02x}")
        return FrameKind(kind_byte)

    def _check_length(self, kind: FrameKind, length: int) -> None:
        if kind is FrameKind.UUID and length != UUID_PAYLOAD_SIZE:
            raise ProtocolError(f"UUID payload must be {UUID_PAYLOAD_SIZE} bytes, header says {length}")
        if kind is FrameKind.DTMF and length != DTMF_PAYLOAD_SIZE:
            raise ProtocolError(f"DTMF payload must be {DTMF_PAYLOAD_SIZE} byte, header says {length}")
        if kind is FrameKind.HANGUP and length != 0:
            raise ProtocolError(f"hangup frame must be empty, header says {length} bytes")
        if kind is FrameKind.ERROR and length > MAX_ERROR_PAYLOAD:
            raise ProtocolError(f"error payload of {length} bytes exceeds {MAX_ERROR_PAYLOAD}")
        if kind in SLIN_RATES:
            if length == 0:
                raise ProtocolError(f"empty {kind.name} audio frame")
            if length > self.max_audio_payload:
                raise ProtocolError(f"{kind.name} audio payload of {length} bytes exceeds {self.max_audio_payload}")

    @staticmethod
    def _check_payload(kind: FrameKind, payload: bytes) -> None:
        if kind is FrameKind.DTMF and not payload.isascii():
            raise ProtocolError(f"DTMF payload 0x{payload[0]:02x} is not an ASCII digit")
