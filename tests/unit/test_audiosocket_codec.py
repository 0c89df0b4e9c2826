"""AudioSocket codec: encoding, incremental decoding and every protocol violation."""

from __future__ import annotations

import struct
import uuid

import pytest

from voiceline.asterisk.audiosocket import (
    AudioSocketServer,
    normalise_peer_address,
    parse_allowed_peers,
    peer_is_allowed,
)
from voiceline.asterisk.audiosocket_codec import (
    SLIN_RATES,
    ErrorCode,
    Frame,
    FrameDecoder,
    FrameKind,
    ProtocolError,
    encode_audio,
    encode_error,
    encode_frame,
    encode_hangup,
    encode_uuid,
    slin_kind_for_rate,
)

CALL_UUID = "0f8fad5b-d9cb-469f-a165-70867728950e"
AUDIO_20MS_8K = bytes(range(256)) + bytes(64)  # 320 bytes, not all zeros


def header(kind: int, length: int) -> bytes:
    return struct.pack(">BH", kind, length)


def sample_payload(kind: FrameKind) -> bytes:
    """A valid payload for every kind, so a round trip covers them all."""
    if kind is FrameKind.HANGUP:
        return b""
    if kind is FrameKind.UUID:
        return uuid.UUID(CALL_UUID).bytes
    if kind is FrameKind.DTMF:
        return b"#"
    if kind is FrameKind.ERROR:
        return bytes((ErrorCode.FRAME_FORWARDING,))
    # Audio: 20 ms at the kind's rate, odd byte values so corruption would show.
    return bytes((i * 7 + 1) & 0xFF for i in range(SLIN_RATES[kind] // 50 * 2))


# -- rates table --------------------------------------------------------------


def test_rates_table_covers_every_audio_kind_with_asterisk_rates() -> None:
    assert SLIN_RATES == {
        FrameKind.SLIN_8K: 8000,
        FrameKind.SLIN_12K: 12000,
        FrameKind.SLIN_16K: 16000,
        FrameKind.SLIN_24K: 24000,
        FrameKind.SLIN_32K: 32000,
        FrameKind.SLIN_44K: 44100,
        FrameKind.SLIN_48K: 48000,
        FrameKind.SLIN_96K: 96000,
        FrameKind.SLIN_192K: 192000,
    }
    assert [int(kind) for kind in SLIN_RATES] == list(range(0x10, 0x19))


@pytest.mark.parametrize(("kind", "rate"), list(SLIN_RATES.items()))
def test_slin_kind_for_rate_inverts_the_table(kind: FrameKind, rate: int) -> None:
    assert slin_kind_for_rate(rate) is kind


@pytest.mark.parametrize("rate", [0, 11025, 22050, 44000, 384000])
def test_slin_kind_for_unsupported_rate_raises(rate: int) -> None:
    with pytest.raises(ValueError, match=str(rate)):
        slin_kind_for_rate(rate)


# -- encoding -----------------------------------------------------------------


def test_encoded_frame_layout_is_kind_length_payload() -> None:
    assert encode_frame(FrameKind.SLIN_8K, b"\x01\x02\x03") == b"\x10\x00\x03\x01\x02\x03"
    assert encode_hangup() == b"\x00\x00\x00"
    assert encode_error(ErrorCode.MEMORY) == b"\xff\x00\x01\x04"
    assert encode_uuid(CALL_UUID) == b"\x01\x00\x10" + uuid.UUID(CALL_UUID).bytes
    assert encode_uuid(uuid.UUID(CALL_UUID)) == encode_uuid(CALL_UUID)


def test_length_is_big_endian() -> None:
    encoded = encode_frame(FrameKind.SLIN_8K, bytes(0x0102))
    assert encoded[1:3] == b"\x01\x02"


def test_encode_audio_picks_kind_from_rate() -> None:
    assert encode_audio(b"\x01\x00", rate=16000)[0] == FrameKind.SLIN_16K
    assert encode_audio(b"\x01\x00")[0] == FrameKind.SLIN_8K


def test_encode_audio_accepts_odd_length_payload() -> None:
    # Asterisk accepts odd-length audio payloads, so we must not reject them.
    assert encode_audio(b"\x01\x02\x03") == b"\x10\x00\x03\x01\x02\x03"


def test_encode_audio_rejects_empty_payload() -> None:
    # Asterisk hangs up on a zero-length audio frame.
    with pytest.raises(ValueError, match="empty"):
        encode_audio(b"")


def test_encode_audio_rejects_unsupported_rate() -> None:
    with pytest.raises(ValueError, match="22050"):
        encode_audio(b"\x00\x00", rate=22050)


def test_encode_frame_rejects_payload_over_16_bits() -> None:
    assert len(encode_frame(FrameKind.SLIN_8K, bytes(0xFFFF))) == 0xFFFF + 3
    with pytest.raises(ValueError, match="65536"):
        encode_frame(FrameKind.SLIN_8K, bytes(0x10000))


@pytest.mark.parametrize("kind_byte", [0x02, 0x04, 0x19, 0xFE])
def test_encode_frame_rejects_unknown_kind(kind_byte: int) -> None:
    with pytest.raises(ValueError, match=f"0x{kind_byte:02x}"):
        encode_frame(kind_byte, b"x")


@pytest.mark.parametrize("code", [-1, 256])
def test_encode_error_rejects_code_outside_a_byte(code: int) -> None:
    with pytest.raises(ValueError):
        encode_error(code)


def test_encode_uuid_rejects_malformed_uuid() -> None:
    with pytest.raises(ValueError):
        encode_uuid("not-a-uuid")


# -- round trip ---------------------------------------------------------------


@pytest.mark.parametrize("kind", list(FrameKind), ids=lambda kind: kind.name)
def test_every_kind_round_trips(kind: FrameKind) -> None:
    payload = sample_payload(kind)
    frames = FrameDecoder().feed(encode_frame(kind, payload))
    assert frames == [Frame(kind, payload)]
    assert type(frames[0].payload) is bytes
    assert frames[0].kind is kind


def test_frame_accessors() -> None:
    decoder = FrameDecoder()
    uuid_frame, dtmf_frame, error_frame, bare_error, audio_frame = decoder.feed(
        encode_uuid(CALL_UUID.upper())
        + encode_frame(FrameKind.DTMF, b"7")
        + encode_error(ErrorCode.HANGUP)
        + encode_frame(FrameKind.ERROR)
        + encode_audio(b"\x01\x00", rate=48000)
    )
    assert uuid_frame.uuid == CALL_UUID  # canonical lowercase hyphenated
    assert dtmf_frame.dtmf == "7"
    assert error_frame.error_code == ErrorCode.HANGUP
    assert bare_error.error_code is None
    assert audio_frame.is_audio and audio_frame.sample_rate == 48000
    assert not uuid_frame.is_audio and uuid_frame.sample_rate is None


def test_frame_accessor_on_wrong_kind_raises() -> None:
    audio = Frame(FrameKind.SLIN_8K, b"\x00\x00")
    with pytest.raises(ValueError, match="UUID"):
        _ = audio.uuid
    with pytest.raises(ValueError, match="DTMF"):
        _ = audio.dtmf
    with pytest.raises(ValueError, match="ERROR"):
        _ = audio.error_code


# -- incremental decoding -----------------------------------------------------


def multi_frame_stream() -> tuple[bytes, list[Frame]]:
    frames = [
        Frame(FrameKind.UUID, uuid.UUID(CALL_UUID).bytes),
        Frame(FrameKind.SLIN_8K, AUDIO_20MS_8K),
        Frame(FrameKind.DTMF, b"5"),
        Frame(FrameKind.SLIN_16K, b"\x7f"),  # odd length, one byte
        Frame(FrameKind.ERROR, b""),
        Frame(FrameKind.SLIN_8K, AUDIO_20MS_8K[::-1]),
        Frame(FrameKind.HANGUP, b""),
    ]
    return b"".join(encode_frame(f.kind, f.payload) for f in frames), frames


def test_one_byte_feeds_decode_the_whole_stream() -> None:
    stream, expected = multi_frame_stream()
    decoder = FrameDecoder()
    decoded: list[Frame] = []
    for index in range(len(stream)):
        decoded += decoder.feed(stream[index : index + 1])
    assert decoded == expected
    assert decoder.buffered == 0


def test_every_split_point_decodes_identically() -> None:
    stream, expected = multi_frame_stream()
    for split in range(len(stream) + 1):
        decoder = FrameDecoder()
        decoded = decoder.feed(stream[:split]) + decoder.feed(stream[split:])
        assert decoded == expected, f"split at {split}"
        assert decoder.buffered == 0


def test_every_pair_of_split_points_decodes_identically() -> None:
    # Three chunks catch bugs that only show when a header itself is split.
    stream, expected = multi_frame_stream()
    for first in range(0, len(stream) + 1, 7):
        for second in range(first, len(stream) + 1, 5):
            decoder = FrameDecoder()
            decoded = decoder.feed(stream[:first]) + decoder.feed(stream[first:second]) + decoder.feed(stream[second:])
            assert decoded == expected, f"splits at {first}, {second}"


def test_buffered_counts_bytes_of_the_incomplete_frame() -> None:
    decoder = FrameDecoder()
    encoded = encode_audio(AUDIO_20MS_8K)
    assert decoder.feed(encoded[:100]) == []
    assert decoder.buffered == 100
    assert decoder.feed(encoded[100:] + encoded[:2]) == [Frame(FrameKind.SLIN_8K, AUDIO_20MS_8K)]
    assert decoder.buffered == 2


def test_empty_feed_returns_nothing() -> None:
    assert FrameDecoder().feed(b"") == []


def test_any_inbound_audio_length_up_to_the_limit_is_accepted() -> None:
    # Inbound audio follows the caller's ptime, so 10, 30 or 60 ms frames are legal.
    decoder = FrameDecoder(max_audio_payload=960)
    for length in (1, 160, 319, 480, 960):
        assert decoder.feed(encode_frame(FrameKind.SLIN_8K, bytes(length)))[0].payload == bytes(length)


# -- protocol errors ----------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x02", "0x02"),  # Go-library "silence", never sent by Asterisk
        (b"\x04", "0x04"),
        (b"\x19", "0x19"),
        (b"\xfe", "0xfe"),
        (header(FrameKind.UUID, 15), "UUID"),
        (header(FrameKind.UUID, 17), "UUID"),
        (header(FrameKind.DTMF, 0), "DTMF"),
        (header(FrameKind.DTMF, 2), "DTMF"),
        (header(FrameKind.DTMF, 1) + b"\xb5", "ASCII"),
        (header(FrameKind.SLIN_8K, 0), "empty"),
        (header(FrameKind.SLIN_192K, 0), "empty"),
        (header(FrameKind.SLIN_8K, 16385), "16385"),
        (header(FrameKind.ERROR, 200), "error payload"),
        (header(FrameKind.HANGUP, 1), "hangup"),
    ],
)
def test_malformed_input_raises_protocol_error(data: bytes, reason: str) -> None:
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError, match=reason) as caught:
        decoder.feed(data)
    assert reason in caught.value.reason


def test_unknown_kind_is_refused_from_its_first_byte() -> None:
    with pytest.raises(ProtocolError, match="0x42"):
        FrameDecoder().feed(b"\x42")


def test_oversized_length_is_refused_from_the_header_alone() -> None:
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError, match="65535"):
        decoder.feed(header(FrameKind.SLIN_8K, 0xFFFF))  # exactly 3 bytes, no payload


def test_oversized_length_split_across_feeds_is_refused_when_header_completes() -> None:
    decoder = FrameDecoder(max_audio_payload=320)
    assert decoder.feed(b"\x10") == []
    assert decoder.feed(b"\x01") == []
    with pytest.raises(ProtocolError, match="321"):
        decoder.feed(b"\x41")


def test_audio_limit_is_configurable() -> None:
    decoder = FrameDecoder(max_audio_payload=320)
    assert decoder.feed(encode_audio(bytes(320)))[0].payload == bytes(320)
    with pytest.raises(ProtocolError):
        decoder.feed(header(FrameKind.SLIN_8K, 321))


@pytest.mark.parametrize("limit", [0, 65536])
def test_audio_limit_must_fit_a_frame(limit: int) -> None:
    with pytest.raises(ValueError):
        FrameDecoder(max_audio_payload=limit)


def test_failed_decoder_stays_failed() -> None:
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError) as first:
        decoder.feed(b"\x77")
    assert decoder.failed
    with pytest.raises(ProtocolError) as second:
        decoder.feed(encode_audio(AUDIO_20MS_8K))  # perfectly valid, but the stream is lost
    assert second.value.reason == first.value.reason
    assert decoder.buffered == 0


def test_protocol_error_carries_frames_decoded_before_it() -> None:
    good = encode_uuid(CALL_UUID) + encode_audio(AUDIO_20MS_8K)
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError) as caught:
        decoder.feed(good + b"\x02\x00\x00")
    assert [frame.kind for frame in caught.value.decoded] == [FrameKind.UUID, FrameKind.SLIN_8K]
    assert caught.value.decoded[0].uuid == CALL_UUID


def test_buffer_is_compacted_on_every_feed() -> None:
    # Consumed bytes must leave the buffer, or a long call would grow it (and
    # every compaction) without bound.
    frame = encode_audio(AUDIO_20MS_8K)
    stream = frame * 200
    decoder = FrameDecoder()
    count = 0
    for index in range(0, len(stream), 7):
        count += len(decoder.feed(stream[index : index + 7]))
        assert decoder.buffered < len(frame)
    assert count == 200


# -- peer allow-list (pure helpers behind the server's check) ------------------


@pytest.mark.parametrize(
    ("peer", "allowed"),
    [
        ("127.0.0.1", True),
        ("::ffff:127.0.0.1", True),  # IPv4-mapped, as a dual-stack listener reports it
        ("::1", True),
        ("10.1.2.3", True),
        ("10.1.2.3%eth0", True),
        ("127.0.0.2", False),
        ("::ffff:127.0.0.2", False),
        ("192.168.1.10", False),
        ("::2", False),
    ],
)
def test_peer_allow_list(peer: str, allowed: bool) -> None:
    networks = parse_allowed_peers(["127.0.0.1", "::1/128", "10.0.0.0/8"])  # plain IPs mean /32, /128
    assert peer_is_allowed(normalise_peer_address(peer), networks) is allowed


def test_ipv4_mapped_peer_is_normalised_to_ipv4() -> None:
    assert str(normalise_peer_address("::ffff:10.0.0.7")) == "10.0.0.7"


@pytest.mark.parametrize(
    ("allowed_peers", "error"),
    [
        (["10.0.0.1/8"], ValueError),  # host bits set: almost certainly a typo
        (["not-an-ip"], ValueError),
        ([], ValueError),
        ("127.0.0.1/32", TypeError),  # a bare string, not a list of networks
    ],
)
def test_bad_allow_list_is_rejected_at_construction(allowed_peers: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        AudioSocketServer("127.0.0.1", 0, lambda conn: None, allowed_peers=allowed_peers)  # type: ignore[arg-type]
