"""Property-based fuzzing of the AudioSocket codec and connection rules (hypothesis).

Deterministic: ``derandomize=True`` derives the examples from each test's source, and no
example database is kept, so every run explores the same cases. Example counts are small
enough for the whole file to run in a few seconds.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voiceline.asterisk.audiosocket_codec import (
    HEADER_SIZE,
    REFUSAL_ERROR_CODE,
    SLIN_RATES,
    UUID_PAYLOAD_SIZE,
    Frame,
    FrameDecoder,
    FrameKind,
    ProtocolError,
    encode_audio,
    encode_error,
    encode_frame,
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

FUZZ = settings(
    max_examples=150,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

AUDIO_LIMIT = 2048  # a small decoder limit keeps the examples small without changing the rules
AUDIO_KINDS = list(SLIN_RATES)
KNOWN_KIND_BYTES = {int(kind) for kind in FrameKind}
UNKNOWN_KIND_BYTES = [byte for byte in range(256) if byte not in KNOWN_KIND_BYTES]
TERMINAL = (PeerHangup, PeerClosed, ProtocolViolation, UuidTimedOut)


# -- strategies ---------------------------------------------------------------------


def uuid_frames() -> st.SearchStrategy[Frame]:
    return st.uuids().map(lambda value: Frame(FrameKind.UUID, value.bytes))


def audio_frames() -> st.SearchStrategy[Frame]:
    return st.builds(Frame, st.sampled_from(AUDIO_KINDS), st.binary(min_size=1, max_size=AUDIO_LIMIT))


def dtmf_frames() -> st.SearchStrategy[Frame]:
    return st.integers(0, 0x7F).map(lambda byte: Frame(FrameKind.DTMF, bytes((byte,))))


def error_frames() -> st.SearchStrategy[Frame]:
    return st.binary(max_size=4).map(lambda payload: Frame(FrameKind.ERROR, payload))


def any_valid_frame() -> st.SearchStrategy[Frame]:
    return st.one_of(
        uuid_frames(), audio_frames(), dtmf_frames(), error_frames(), st.just(Frame(FrameKind.HANGUP, b""))
    )


def encode(frame: Frame) -> bytes:
    return encode_frame(frame.kind, frame.payload)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (taken modulo its length, so any list works)."""
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    bounds = [0, *points, len(data)]
    return [data[start:end] for start, end in zip(bounds, bounds[1:], strict=False)]


cut_lists = st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=12)


# -- codec ------------------------------------------------------------------------------


@FUZZ
@given(frame=any_valid_frame())
def test_every_valid_frame_round_trips(frame: Frame) -> None:
    decoder = FrameDecoder(AUDIO_LIMIT)
    assert decoder.feed(encode(frame)) == [frame]
    assert decoder.buffered == 0


@FUZZ
@given(kind=st.sampled_from(AUDIO_KINDS), payload=st.binary(min_size=1, max_size=AUDIO_LIMIT))
def test_encode_audio_round_trips_at_every_rate(kind: FrameKind, payload: bytes) -> None:
    [frame] = FrameDecoder(AUDIO_LIMIT).feed(encode_audio(payload, rate=SLIN_RATES[kind]))
    assert (frame.kind, frame.sample_rate, frame.payload) == (kind, SLIN_RATES[kind], payload)


@FUZZ
@given(frames=st.lists(any_valid_frame(), max_size=12), cuts=cut_lists)
def test_any_split_of_a_valid_stream_gives_the_same_frames(frames: list[Frame], cuts: list[int]) -> None:
    stream = b"".join(encode(frame) for frame in frames)
    decoder = FrameDecoder(AUDIO_LIMIT)
    decoded: list[Frame] = []
    for chunk in split(stream, cuts):
        decoded += decoder.feed(chunk)
    assert decoded == frames
    assert decoder.buffered == 0


@FUZZ
@given(data=st.binary(max_size=4096), cuts=cut_lists)
def test_garbage_raises_only_protocol_error_and_buffering_stays_bounded(data: bytes, cuts: list[int]) -> None:
    decoder = FrameDecoder(AUDIO_LIMIT)
    failure: ProtocolError | None = None
    for chunk in split(data, cuts):
        try:
            decoder.feed(chunk)
        except ProtocolError as error:
            failure = error
            break
        # Never more than one incomplete frame is held, and no frame is larger than the limit.
        assert decoder.buffered < HEADER_SIZE + max(AUDIO_LIMIT, UUID_PAYLOAD_SIZE)
    if failure is not None:
        assert failure.reason
        assert decoder.failed and decoder.buffered == 0
        try:
            decoder.feed(b"\x10\x00\x01\x00")
        except ProtocolError as again:
            assert again.reason == failure.reason  # a failed decoder stays failed, same reason
        else:
            raise AssertionError("a failed decoder accepted more data")


@FUZZ
@given(
    frames=st.lists(any_valid_frame(), max_size=6),
    bad_kind=st.sampled_from(UNKNOWN_KIND_BYTES),
    tail=st.binary(max_size=64),
    cuts=cut_lists,
)
def test_frames_before_garbage_are_kept_with_the_error(
    frames: list[Frame], bad_kind: int, tail: bytes, cuts: list[int]
) -> None:
    stream = b"".join(encode(frame) for frame in frames) + bytes((bad_kind,)) + tail
    decoder = FrameDecoder(AUDIO_LIMIT)
    decoded: list[Frame] = []
    reason = None
    for chunk in split(stream, cuts):
        try:
            decoded += decoder.feed(chunk)
        except ProtocolError as error:
            decoded += error.decoded
            reason = error.reason
            break
    assert decoded == frames
    assert reason is not None and f"0x{bad_kind:02x}" in reason


# -- connection rules ---------------------------------------------------------------------


@dataclass(frozen=True)
class Garbage:
    """Bytes that break the stream where they appear: an unknown kind byte, then anything."""

    data: bytes


Item = Frame | Garbage

garbage = st.builds(
    lambda kind, rest: Garbage(bytes((kind,)) + rest), st.sampled_from(UNKNOWN_KIND_BYTES), st.binary(max_size=32)
)
script_items: st.SearchStrategy[Item] = st.one_of(
    uuid_frames(), uuid_frames(), audio_frames(), audio_frames(), dtmf_frames(), error_frames(),
    st.just(Frame(FrameKind.HANGUP, b"")), garbage,
)


def item_bytes(item: Item) -> bytes:
    return item.data if isinstance(item, Garbage) else encode(item)


def expected_events(items: list[Item], *, accept: bool, eof: bool) -> tuple[list[Event], ConnectionState]:
    """The rules written out plainly, as a reference for the machine."""
    events: list[Event] = []
    have_uuid = False
    for item in items:
        if isinstance(item, Garbage):
            return [*events, ProtocolViolation(f"unknown frame kind 0x{item.data[0]:02x}")], ConnectionState.CLOSED
        if item.kind is FrameKind.HANGUP:
            return [*events, PeerHangup()], ConnectionState.CLOSED
        if item.kind is FrameKind.UUID:
            if have_uuid:
                return [*events, ProtocolViolation("second UUID frame")], ConnectionState.CLOSED
            events.append(UuidReceived(item.uuid))
            if not accept:
                return events, ConnectionState.CLOSED
            have_uuid = True
        elif not have_uuid:
            return [*events, ProtocolViolation(f"{item.kind.name} frame before UUID")], ConnectionState.CLOSED
        elif item.is_audio:
            events.append(AudioReceived(item))
        elif item.kind is FrameKind.DTMF:
            events.append(DtmfReceived(item.dtmf))
        else:
            events.append(ErrorFrameReceived(item.error_code))
    if eof:
        return [*events, PeerClosed()], ConnectionState.CLOSED
    return events, ConnectionState.STREAMING if have_uuid else ConnectionState.AWAITING_UUID


def without_detail(event: Event) -> Event:
    # The codec adds a hint to some reasons, e.g. "unknown frame kind 0x02 (Go-library silence...)".
    if isinstance(event, ProtocolViolation):
        return ProtocolViolation(event.reason.split(" (", 1)[0])
    return event


def run_rules(
    rules: ConnectionRules, chunks: list[bytes], *, accept: bool, eof: bool
) -> tuple[list[Event], list[bytes]]:
    """Drive the machine like the shell does; returns the events and the bytes it asked to send."""
    events: list[Event] = []
    sent: list[bytes] = []

    def drain() -> None:
        while True:
            event = rules.next_event()
            if event is NEED_DATA:
                return
            assert not isinstance(event, NeedData)
            events.append(event)
            if isinstance(event, UuidReceived):
                if accept:
                    rules.accept()
                else:
                    sent.append(rules.refuse("refused by accept").data)

    for chunk in chunks:
        rules.receive_data(chunk)
        drain()
    if eof:
        rules.receive_eof()
        drain()
    return events, sent


def assert_well_formed(events: list[Event], rules: ConnectionRules) -> None:
    """Invariants of any run: UUID first, at most one terminal event and it is last."""
    terminal_positions = [i for i, event in enumerate(events) if isinstance(event, TERMINAL)]
    assert len(terminal_positions) <= 1
    if terminal_positions:
        assert terminal_positions[0] == len(events) - 1
        assert rules.state is ConnectionState.CLOSED
        assert rules.close_reason == events[-1].close_reason  # type: ignore[union-attr]
    assert sum(isinstance(event, UuidReceived) for event in events) <= 1
    for index, event in enumerate(events):
        if isinstance(event, AudioReceived | DtmfReceived | ErrorFrameReceived):
            assert isinstance(events[0], UuidReceived) and index > 0
    assert rules.next_event() is NEED_DATA or rules.state is ConnectionState.STREAMING


@FUZZ
@given(
    items=st.lists(script_items, max_size=10),
    cuts=cut_lists,
    accept=st.booleans(),
    eof=st.booleans(),
)
def test_rules_follow_the_reference_model_however_the_bytes_are_split(
    items: list[Item], cuts: list[int], accept: bool, eof: bool
) -> None:
    rules = ConnectionRules(started_at=0.0, uuid_timeout_s=1.0, max_audio_payload=AUDIO_LIMIT)
    stream = b"".join(item_bytes(item) for item in items)
    events, sent = run_rules(rules, split(stream, cuts), accept=accept, eof=eof)

    want_events, want_state = expected_events(items, accept=accept, eof=eof)
    assert [without_detail(event) for event in events] == want_events
    assert rules.state is want_state
    assert_well_formed(events, rules)
    refused = not accept and any(isinstance(event, UuidReceived) for event in events)
    assert sent == ([encode_error(REFUSAL_ERROR_CODE)] if refused else [])
    if refused:
        assert rules.close_reason == "refused by accept"


@FUZZ
@given(
    items=st.lists(script_items, min_size=1, max_size=8),
    cuts=cut_lists,
    check_after=st.integers(min_value=0, max_value=20),
    now=st.floats(min_value=0.0, max_value=3.0, allow_nan=False),
)
def test_uuid_timeout_interleaved_with_any_stream(
    items: list[Item], cuts: list[int], check_after: int, now: float
) -> None:
    rules = ConnectionRules(started_at=0.0, uuid_timeout_s=1.0, max_audio_payload=AUDIO_LIMIT)
    stream = b"".join(item_bytes(item) for item in items)
    chunks = split(stream, cuts)
    events: list[Event] = []
    for index, chunk in enumerate(chunks):
        if index == check_after % len(chunks):
            waiting_for_uuid = rules.state is ConnectionState.AWAITING_UUID
            timed_out = rules.check_timeout(now)
            if waiting_for_uuid and now >= 1.0:
                assert timed_out == UuidTimedOut(1.0)
                events.append(timed_out)
            else:
                assert timed_out is None
        more, _ = run_rules(rules, [chunk], accept=True, eof=False)
        events += more
    assert_well_formed(events, rules)
    if any(isinstance(event, UuidTimedOut) for event in events):
        assert not any(isinstance(event, UuidReceived) for event in events)
        assert events == [UuidTimedOut(1.0)]


@FUZZ
@given(data=st.binary(max_size=2048), cuts=cut_lists, accept=st.booleans(), eof=st.booleans())
def test_rules_never_crash_on_random_bytes(data: bytes, cuts: list[int], accept: bool, eof: bool) -> None:
    rules = ConnectionRules(started_at=0.0, uuid_timeout_s=1.0, max_audio_payload=AUDIO_LIMIT)
    events, _ = run_rules(rules, split(data, cuts), accept=accept, eof=eof)
    assert_well_formed(events, rules)
    if eof:
        assert rules.state is ConnectionState.CLOSED


@FUZZ
@given(prefix=st.lists(script_items, max_size=4), call_uuid=st.uuids(), audio=audio_frames(), cuts=cut_lists)
def test_a_valid_call_after_any_prefix_either_streams_or_ended_for_a_stated_reason(
    prefix: list[Item], call_uuid: uuid.UUID, audio: Frame, cuts: list[int]
) -> None:
    rules = ConnectionRules(started_at=0.0, uuid_timeout_s=1.0, max_audio_payload=AUDIO_LIMIT)
    stream = b"".join(item_bytes(item) for item in prefix) + encode_frame(FrameKind.UUID, call_uuid.bytes) + encode(audio)
    events, _ = run_rules(rules, split(stream, cuts), accept=True, eof=False)
    assert_well_formed(events, rules)
    if not prefix:
        assert events == [UuidReceived(str(call_uuid)), AudioReceived(audio)]
    if rules.state is ConnectionState.STREAMING:
        assert events[-1] == AudioReceived(audio)
    else:
        assert rules.state is ConnectionState.CLOSED and rules.close_reason


@FUZZ
@given(items=st.lists(script_items, max_size=12), cuts=cut_lists)
def test_the_audio_fast_path_gives_the_same_events_as_the_general_path(items: list[Item], cuts: list[int]) -> None:
    # What the shell does with each read: the fast path when it applies, else the
    # general one. The caller must not be able to tell the difference.
    stream = b"".join(item_bytes(item) for item in items)

    def run(fast: bool) -> list[object]:
        rules = ConnectionRules(started_at=0.0, uuid_timeout_s=5.0, max_audio_payload=AUDIO_LIMIT)
        seen: list[object] = []
        for chunk in split(stream, cuts):
            taken = rules.take_audio(chunk) if fast else None
            if taken is not None:
                seen += [AudioReceived(frame) for frame in taken]
                continue
            rules.receive_data(chunk)
            while (event := rules.next_event()) is not NEED_DATA:
                seen.append(event)
                if isinstance(event, UuidReceived):
                    rules.accept()
        rules.receive_eof()
        while (event := rules.next_event()) is not NEED_DATA:
            seen.append(event)
        return [seen, rules.frames_received, rules.bytes_received, rules.state, rules.close_reason]

    assert run(fast=True) == run(fast=False)
