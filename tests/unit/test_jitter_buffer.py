"""JitterBuffer: exact re-framing, carried remainders, overflow policy, end-of-turn padding."""

from __future__ import annotations

import random

import pytest

from voiceline.core.jitter_buffer import JitterBuffer


def _drain(jb: JitterBuffer) -> list[bytes]:
    frames = []
    while (f := jb.pop()) is not None:
        frames.append(f)
    return frames


def test_exact_frames_pass_through() -> None:
    jb = JitterBuffer(320, 100)
    data = bytes(range(256)) * 5  # 1280 bytes = 4 frames
    assert jb.push(data) == 0
    assert jb.depth_frames == 4
    assert jb.partial_bytes == 0
    frames = _drain(jb)
    assert [len(f) for f in frames] == [320] * 4
    assert b"".join(frames) == data
    assert jb.pop() is None


def test_remainder_is_carried_across_pushes() -> None:
    jb = JitterBuffer(320, 100)
    jb.push(b"\x01" * 100)
    assert (jb.depth_frames, jb.partial_bytes) == (0, 100)
    jb.push(b"\x02" * 219)
    assert (jb.depth_frames, jb.partial_bytes) == (0, 319)
    jb.push(b"\x03" * 2)
    assert (jb.depth_frames, jb.partial_bytes) == (1, 1)
    assert jb.pop() == b"\x01" * 100 + b"\x02" * 219 + b"\x03"
    assert jb.queued_bytes == 1


@pytest.mark.parametrize("frame_bytes", [160, 320, 640])
def test_random_chunk_sizes_concatenate_exactly(frame_bytes: int) -> None:
    rng = random.Random(1234 + frame_bytes)
    data = rng.randbytes(50_001)
    jb = JitterBuffer(frame_bytes, 10_000)
    out: list[bytes] = []
    pos = 0
    while pos < len(data):
        n = rng.choice([1, 2, 3, 7, 159, 161, 319, 321, 999, 4_001])
        jb.push(data[pos : pos + n])
        pos += n
        if rng.random() < 0.3:
            out.extend(_drain(jb))
    out.extend(_drain(jb))
    assert all(len(f) == frame_bytes for f in out)
    whole = len(data) // frame_bytes
    assert len(out) == whole
    assert jb.partial_bytes == len(data) - whole * frame_bytes
    tail = jb.take_partial_padded(b"\x00")
    assert tail is not None and len(tail) == frame_bytes
    assert b"".join(out) + tail == data + b"\x00" * (
        frame_bytes - len(data) % frame_bytes
    )


def test_accepts_bytearray_and_memoryview() -> None:
    jb = JitterBuffer(4, 10)
    jb.push(bytearray(b"abc"))
    jb.push(memoryview(b"defgh"))
    assert _drain(jb) == [b"abcd", b"efgh"]


def test_empty_push_is_noop() -> None:
    jb = JitterBuffer(320, 10)
    assert jb.push(b"") == 0
    assert (jb.depth_frames, jb.partial_bytes) == (0, 0)


def test_overflow_drops_newest_and_counts() -> None:
    jb = JitterBuffer(4, 3)
    # 5 whole frames + 2 bytes: frames 0..2 kept, 3..4 dropped, the remainder carried.
    assert jb.push(b"AAAABBBBCCCCDDDDEEEEff") == 2
    assert jb.frames_dropped == 2
    assert jb.partial_bytes == 2
    # Completing the partial while full drops that frame too.
    assert jb.push(b"gg") == 1
    assert jb.frames_dropped == 3
    assert _drain(jb) == [b"AAAA", b"BBBB", b"CCCC"]
    # Room again: newer audio is accepted.
    assert jb.push(b"HHHH") == 0
    assert _drain(jb) == [b"HHHH"]


def test_capacity_can_be_lowered_without_dropping_queued_frames() -> None:
    jb = JitterBuffer(2, 10)
    jb.push(b"aabbcc")
    jb.capacity_frames = 1
    assert jb.depth_frames == 3
    assert jb.push(b"dd") == 1
    assert _drain(jb) == [b"aa", b"bb", b"cc"]
    with pytest.raises(ValueError):
        jb.capacity_frames = -1


def test_flush_reports_frames_and_partial_bytes() -> None:
    jb = JitterBuffer(320, 100)
    jb.push(b"\x05" * (320 * 3 + 17))
    assert jb.flush() == (3, 17)
    assert (jb.depth_frames, jb.partial_bytes) == (0, 0)
    assert jb.flush() == (0, 0)


def test_take_all_returns_frames_and_raw_partial_in_order() -> None:
    jb = JitterBuffer(3, 10)
    jb.push(b"abcdefgh")
    assert jb.take_all() == b"abcdefgh"
    assert jb.queued_bytes == 0


def test_take_partial_padded_patterns() -> None:
    jb = JitterBuffer(8, 10)
    assert jb.take_partial_padded(b"\xff") is None
    jb.push(b"xyz")
    assert jb.take_partial_padded(b"\xff") == b"xyz" + b"\xff" * 5
    assert jb.partial_bytes == 0
    jb.push(b"q")
    assert jb.take_partial_padded(b"\x01\x02") == b"q\x01\x02\x01\x02\x01\x02\x01"


def test_take_partial_padded_refuses_while_frames_queued() -> None:
    jb = JitterBuffer(4, 10)
    jb.push(b"abcdef")
    with pytest.raises(RuntimeError):
        jb.take_partial_padded(b"\x00")
    assert jb.pop() == b"abcd"
    assert jb.take_partial_padded(b"\x00") == b"ef\x00\x00"


def test_invalid_construction() -> None:
    with pytest.raises(ValueError):
        JitterBuffer(0, 10)
    with pytest.raises(ValueError):
        JitterBuffer(320, -1)
