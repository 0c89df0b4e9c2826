"""AudioSocket connection rules: the sans-I/O state machine, driven with bytes and a fake clock."""

from __future__ import annotations

import struct
import uuid

import pytest

from voiceline.asterisk.audiosocket_codec import (
    REFUSAL_ERROR_CODE,
    Frame,
    FrameDecoder,
    FrameKind,
    encode_audio,
    encode_error,
    encode_frame,
    encode_hangup,
    encode_uuid,
)
from voiceline.asterisk.audiosocket_rules import (
    NEED_DATA,
    AudioReceived,
    ConnectionRules,
    ConnectionState,
    DtmfReceived,
    ErrorFrameReceived,
    Event,
    NeedData,
    PeerClosed,
    PeerHangup,
    ProtocolViolation,
    UuidReceived,
    UuidTimedOut,
)

CALL_UUID = "0f8fad5b-d9cb-469f-a165-70867728950e"
STARTED_AT = 1000.0
TIMEOUT_S = 2.0


def new_rules(**options: float) -> ConnectionRules:
    return ConnectionRules(started_at=STARTED_AT, uuid_timeout_s=TIMEOUT_S, **options)  # type: ignore[arg-type]


def drain(rules: ConnectionRules, *, accept: bool = True) -> list[Event]:
    """Pull every event, answering a UUID the way the shell does."""
    events: list[Event] = []
    while True:
        event = rules.next_event()
        if event is NEED_DATA:
            return events
        assert not isinstance(event, NeedData)
        events.append(event)
        if isinstance(event, UuidReceived):
            if accept:
                rules.accept()
            else:
                rules.refuse("refused by accept")


def streaming_rules() -> ConnectionRules:
    rules = new_rules()
    rules.receive_data(encode_uuid(CALL_UUID))
    assert drain(rules) == [UuidReceived(CALL_UUID)]
    assert rules.state is ConnectionState.STREAMING
    return rules


# -- the normal life of a call --------------------------------------------------


def test_uuid_then_audio_dtmf_and_error_frames_become_events_in_order() -> None:
    rules = new_rules()
    assert rules.state is ConnectionState.AWAITING_UUID
    stream = (
        encode_uuid(CALL_UUID)
        + encode_audio(bytes(320))
        + encode_frame(FrameKind.DTMF, b"#")
        + encode_audio(b"\x01\x02\x03", rate=16000)
        + encode_error(2)
        + encode_frame(FrameKind.ERROR)
    )
    rules.receive_data(stream)
    events = drain(rules)
    assert events == [
        UuidReceived(CALL_UUID),
        AudioReceived(Frame(FrameKind.SLIN_8K, bytes(320))),
        DtmfReceived("#"),
        AudioReceived(Frame(FrameKind.SLIN_16K, b"\x01\x02\x03")),
        ErrorFrameReceived(2),
        ErrorFrameReceived(None),
    ]
    audio = events[3]
    assert isinstance(audio, AudioReceived)
    assert (audio.kind, audio.sample_rate, audio.payload) == (FrameKind.SLIN_16K, 16000, b"\x01\x02\x03")
    assert rules.state is ConnectionState.STREAMING
    assert rules.uuid == CALL_UUID
    assert (rules.frames_received, rules.bytes_received) == (6, len(stream))


def test_partial_frame_needs_more_data() -> None:
    rules = streaming_rules()
    frame = encode_audio(bytes(320))
    rules.receive_data(frame[:100])
    assert rules.next_event() is NEED_DATA
    assert rules.buffered == 100
    rules.receive_data(frame[100:])
    assert drain(rules) == [AudioReceived(Frame(FrameKind.SLIN_8K, bytes(320)))]


@pytest.mark.parametrize("length", [1, 2, 80, 159, 160, 240, 320, 480, 960, 1920])
def test_any_inbound_audio_length_is_accepted(length: int) -> None:
    # Inbound frames follow the caller's ptime (10, 20, 30, 60 ms...) and may be odd.
    rules = streaming_rules()
    rules.receive_data(encode_frame(FrameKind.SLIN_8K, bytes(length)))
    [event] = drain(rules)
    assert isinstance(event, AudioReceived) and len(event.payload) == length


def test_peer_hangup_frame_ends_the_connection() -> None:
    rules = streaming_rules()
    rules.receive_data(encode_hangup() + encode_audio(bytes(320)))
    assert drain(rules) == [PeerHangup()]
    assert rules.state is ConnectionState.CLOSED
    assert rules.close_reason == "peer hangup"


def test_hangup_before_uuid_is_a_hangup_not_a_violation() -> None:
    rules = new_rules()
    rules.receive_data(encode_hangup())
    assert drain(rules) == [PeerHangup()]


def test_eof_after_whole_frames_is_a_clean_close() -> None:
    rules = streaming_rules()
    rules.receive_data(encode_audio(bytes(320)))
    rules.receive_eof()
    assert drain(rules) == [AudioReceived(Frame(FrameKind.SLIN_8K, bytes(320))), PeerClosed(truncated_bytes=0)]
    assert rules.close_reason == "peer closed"


def test_eof_inside_a_frame_reports_the_truncated_bytes() -> None:
    rules = streaming_rules()
    rules.receive_data(encode_audio(bytes(320))[:50])
    rules.receive_eof()
    assert drain(rules) == [PeerClosed(truncated_bytes=50)]


def test_eof_before_any_uuid_is_a_clean_close() -> None:
    # Asterisk's AudioSocket() connects before the channel is answered and may give up.
    rules = new_rules()
    rules.receive_eof()
    assert drain(rules) == [PeerClosed()]


# -- violations ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before_uuid", "kind_name"),
    [
        (encode_audio(bytes(320)), "SLIN_8K"),
        (encode_audio(bytes(640), rate=16000), "SLIN_16K"),
        (encode_frame(FrameKind.DTMF, b"1"), "DTMF"),
        (encode_error(1), "ERROR"),
    ],
)
def test_frame_before_uuid_is_a_violation(before_uuid: bytes, kind_name: str) -> None:
    rules = new_rules()
    rules.receive_data(before_uuid + encode_uuid(CALL_UUID))
    [event] = drain(rules)
    assert event == ProtocolViolation(f"{kind_name} frame before UUID")
    assert rules.state is ConnectionState.CLOSED
    assert rules.uuid is None
    assert rules.close_reason == f"protocol error: {kind_name} frame before UUID"


def test_second_uuid_is_a_violation() -> None:
    rules = streaming_rules()
    rules.receive_data(encode_uuid(str(uuid.uuid4())) + encode_audio(bytes(320)))
    assert drain(rules) == [ProtocolViolation("second UUID frame")]
    assert rules.uuid == CALL_UUID  # the first one stands


def test_zero_length_audio_is_a_violation() -> None:
    rules = streaming_rules()
    rules.receive_data(struct.pack(">BH", FrameKind.SLIN_8K, 0))
    [event] = drain(rules)
    assert isinstance(event, ProtocolViolation) and "empty SLIN_8K" in event.reason


def test_frames_before_garbage_are_delivered_then_the_violation() -> None:
    rules = new_rules()
    rules.receive_data(encode_uuid(CALL_UUID) + encode_audio(bytes(320)) + b"\x02\x00\x00")
    events = drain(rules)
    assert events[:2] == [UuidReceived(CALL_UUID), AudioReceived(Frame(FrameKind.SLIN_8K, bytes(320)))]
    assert isinstance(events[2], ProtocolViolation) and "0x02" in events[2].reason
    assert len(events) == 3


def test_oversize_length_is_a_violation_as_soon_as_its_header_arrives() -> None:
    rules = new_rules(max_audio_payload=320)
    rules.receive_data(encode_uuid(CALL_UUID))
    drain(rules)
    rules.receive_data(struct.pack(">BH", FrameKind.SLIN_8K, 321))
    [event] = drain(rules)
    assert isinstance(event, ProtocolViolation) and "321" in event.reason


def test_nothing_is_reported_after_the_connection_ended() -> None:
    rules = streaming_rules()
    rules.receive_data(b"\x77")
    assert len(drain(rules)) == 1
    received = rules.bytes_received
    rules.receive_data(encode_audio(bytes(320)))
    rules.receive_eof()
    assert drain(rules) == []
    assert rules.bytes_received == received
    assert rules.check_timeout(STARTED_AT + 100) is None


# -- the UUID timeout ----------------------------------------------------------------


def test_uuid_timeout_fires_at_the_deadline_and_not_before() -> None:
    rules = new_rules()
    assert rules.uuid_deadline == STARTED_AT + TIMEOUT_S
    assert rules.check_timeout(STARTED_AT + TIMEOUT_S - 1e-6) is None
    assert rules.state is ConnectionState.AWAITING_UUID
    assert rules.check_timeout(STARTED_AT + TIMEOUT_S) == UuidTimedOut(TIMEOUT_S)
    assert rules.state is ConnectionState.CLOSED
    assert rules.close_reason == "no UUID within timeout"
    assert rules.check_timeout(STARTED_AT + 10 * TIMEOUT_S) is None  # reported once


def test_partial_uuid_does_not_stop_the_timeout() -> None:
    rules = new_rules()
    rules.receive_data(encode_uuid(CALL_UUID)[:10])
    assert drain(rules) == []
    assert rules.check_timeout(STARTED_AT + TIMEOUT_S) == UuidTimedOut(TIMEOUT_S)


def test_uuid_cancels_the_timeout() -> None:
    rules = streaming_rules()
    assert rules.uuid_deadline is None
    assert rules.check_timeout(STARTED_AT + 100 * TIMEOUT_S) is None
    assert rules.state is ConnectionState.STREAMING


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="uuid_timeout_s"):
        ConnectionRules(started_at=0.0, uuid_timeout_s=0.0)


# -- decisions and local endings ----------------------------------------------------------


def test_refusal_hands_back_the_error_frame_and_discards_what_follows() -> None:
    rules = new_rules()
    rules.receive_data(encode_uuid(CALL_UUID) + encode_audio(bytes(320)))
    assert rules.next_event() == UuidReceived(CALL_UUID)
    assert rules.state is ConnectionState.AWAITING_DECISION
    reply = rules.refuse("refused by accept")
    assert FrameDecoder().feed(reply.data) == [Frame(FrameKind.ERROR, bytes((REFUSAL_ERROR_CODE,)))]
    assert reply.close_reason == "refused by accept"
    assert rules.state is ConnectionState.CLOSED
    assert rules.next_event() is NEED_DATA  # the audio after the UUID is never delivered


def test_next_event_before_answering_the_uuid_is_a_usage_error() -> None:
    rules = new_rules()
    rules.receive_data(encode_uuid(CALL_UUID) + encode_audio(bytes(320)))
    assert isinstance(rules.next_event(), UuidReceived)
    with pytest.raises(RuntimeError, match="accept"):
        rules.next_event()


@pytest.mark.parametrize("decision", ["accept", "refuse"])
def test_deciding_without_a_pending_uuid_is_a_usage_error(decision: str) -> None:
    rules = new_rules()
    with pytest.raises(RuntimeError, match=decision):
        rules.accept() if decision == "accept" else rules.refuse("no")
    streaming = streaming_rules()
    with pytest.raises(RuntimeError, match=decision):
        streaming.accept() if decision == "accept" else streaming.refuse("no")


def test_local_hangup_hands_back_the_hangup_frame_once() -> None:
    rules = streaming_rules()
    reply = rules.hangup()
    assert reply is not None
    assert (reply.data, reply.close_reason) == (encode_hangup(), "local hangup")
    assert rules.state is ConnectionState.CLOSED
    assert rules.hangup() is None


def test_close_is_idempotent_and_keeps_the_first_reason() -> None:
    rules = streaming_rules()
    assert rules.close("server stopping") is True
    assert rules.close("peer closed") is False
    assert rules.close_reason == "server stopping"
    rules.receive_data(encode_audio(bytes(320)))
    assert drain(rules) == []


# -- the streaming fast path ------------------------------------------------------------


def test_take_audio_hands_back_whole_audio_frames_and_counts_them_like_receive_data() -> None:
    rules = streaming_rules()
    frames_before, bytes_before = rules.frames_received, rules.bytes_received
    data = encode_audio(b"\x01\x02" * 80) + encode_audio(b"\x03\x04" * 160, rate=16000)
    taken = rules.take_audio(data)
    assert taken == [Frame(FrameKind.SLIN_8K, b"\x01\x02" * 80), Frame(FrameKind.SLIN_16K, b"\x03\x04" * 160)]
    assert rules.frames_received == frames_before + 2
    assert rules.bytes_received == bytes_before + len(data)
    assert rules.next_event() is NEED_DATA


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(encode_audio(b"\x00" * 320)[:-1], id="partial frame at the end"),
        pytest.param(encode_audio(b"\x00" * 320) + encode_frame(FrameKind.DTMF, b"5"), id="a DTMF frame"),
        pytest.param(encode_audio(b"\x00" * 320) + encode_hangup(), id="a hangup frame"),
        pytest.param(encode_error(3), id="an error frame"),
        pytest.param(b"\x10\x00\x00", id="empty audio (a violation)"),
        pytest.param(b"\x10\xff\xff" + b"\x00" * 10, id="oversize audio (a violation)"),
        pytest.param(b"\x02\x00\x01\x00", id="unknown kind (a violation)"),
        pytest.param(b"", id="no data"),
    ],
)
def test_take_audio_leaves_anything_else_to_the_general_path_untouched(data: bytes) -> None:
    rules = streaming_rules()
    counters = (rules.frames_received, rules.bytes_received)
    assert rules.take_audio(data) is None
    assert (rules.frames_received, rules.bytes_received) == counters
    assert rules.buffered == 0 and rules.next_event() is NEED_DATA


def test_take_audio_only_applies_to_a_streaming_connection_with_nothing_pending() -> None:
    audio = encode_audio(b"\x00" * 320)
    before_uuid = new_rules()
    assert before_uuid.take_audio(audio) is None  # audio before the UUID is the general path's violation
    rules = streaming_rules()
    rules.receive_data(audio[:5])  # half a frame waits in the decoder
    assert rules.take_audio(audio) is None
    rules = streaming_rules()
    rules.receive_data(audio)  # a frame not yet pulled as an event comes first
    assert rules.take_audio(audio) is None
    rules = streaming_rules()
    rules.receive_eof()
    assert rules.take_audio(audio) is None
    rules.close("gone")
    assert rules.take_audio(audio) is None
