"""OutboundStream turn handling on a fake clock (tests/unit/outbound_sim.py): pause and
resume, the grace period after a turn, flush (barge-in), back-to-back and queued turns,
overflow, and the soft barge-in hold/release.
"""

from __future__ import annotations

import pytest

from outbound_sim import FRAME, PERIOD, padded, rand_audio, simulate, steady

from voiceline.audio.formats import SLIN_8K
from voiceline.core.outbound_stream import OutboundStream
from voiceline.core.stream_events import (
    FlushResult,
    StreamingEnded,
    StreamingPaused,
    StreamingResumed,
    StreamingStarted,
    StreamState,
)
from voiceline.core.stream_params import StreamParams


# ---- pause semantics --------------------------------------------------------------------


def test_a_40ms_low_watermark_pauses_on_a_late_chunk_the_default_absorbs() -> None:
    """Why the default low watermark is one frame: pausing early only adds silence."""
    audio = rand_audio(150 * FRAME)
    acts = steady(audio, 10 * FRAME, 1.2)  # 200 ms chunks every 166.7 ms from 1 ms
    at, kind, chunk = acts[1]
    acts[1] = (at + 0.040, kind, chunk)  # chunk 1 is 40 ms late: lands at 207.7 ms
    acts.append((acts[-1][0], "end", None))
    # Start at tick 1 with 10 frames; ticks 1..9 play 9 of them; tick 10 (200 ms) sees 1.
    s40 = OutboundStream("c", SLIN_8K, StreamParams(low_watermark_ms=40))
    run40 = simulate(s40, acts, 300)
    assert [k for k, _ in run40.of(StreamingPaused)] == [10]
    assert [k for k, _ in run40.of(StreamingResumed)] == [11]
    assert run40.audio_ticks[:11] == list(range(1, 10)) + [11, 12]
    assert run40.audio_bytes == audio
    # Default watermark: tick 10 plays the last queued frame, chunk 1 is in for tick 11.
    s = OutboundStream("c", SLIN_8K)
    run = simulate(s, acts, 300)
    assert run.of(StreamingPaused) == []
    assert run.audio_ticks == list(range(1, 151))
    assert run.audio_bytes == audio
    assert s.stats.depth.min == 1


def test_resume_needs_min_start_and_does_not_repause_immediately() -> None:
    s = OutboundStream("c", SLIN_8K)
    a = rand_audio(20 * FRAME)
    acts = [(0.0, "push", a[: 6 * FRAME])]  # starts at tick 0, dry at tick 6
    acts += [
        (0.15 + i * 0.03, "push", a[(6 + i) * FRAME : (7 + i) * FRAME])
        for i in range(6)
    ]  # 6 frames by 0.30
    acts += [(0.5, "end", None)]
    run = simulate(s, acts, 60)
    # Dry at tick 6; the 6th frame of the refill lands at 0.30 s, so resume at tick 15
    # (not at the first frame back), then it plays all 6 before it can run dry again.
    assert [k for k, _ in run.of(StreamingPaused)] == [6, 21]
    assert [k for k, _ in run.of(StreamingResumed)] == [15]
    assert run.audio_ticks == list(range(6)) + list(range(15, 21))
    ((k_end, ended),) = run.of(StreamingEnded)
    assert k_end == 50  # end_turn at 0.5 s + 0.5 s grace
    # The second pause is never resumed (the turn ends dry): its silence is not "inserted".
    assert (ended.pauses, ended.silence_frames_inserted, ended.frames_sent) == (
        2,
        9,
        12,
    )


def test_turn_ending_while_paused_drains_without_waiting_for_min_start() -> None:
    s = OutboundStream("c", SLIN_8K)
    a = rand_audio(8 * FRAME + 10)
    acts = [
        (0.0, "push", a[: 6 * FRAME]),
        (0.2, "push", a[6 * FRAME :]),
        (0.2, "end", None),
    ]
    run = simulate(s, acts, 40)
    assert run.audio_ticks == list(range(6)) + [10, 11, 12]
    assert run.audio_bytes == padded(a)
    assert [k for k, _ in run.of(StreamingResumed)] == [10]


# ---- grace --------------------------------------------------------------------------------


def test_late_chunk_inside_grace_is_played() -> None:
    a, late = rand_audio(50 * FRAME), rand_audio(2 * FRAME + 5, seed=2)
    s = OutboundStream("c", SLIN_8K)
    run = simulate(s, [(0.0, "push", a), (0.01, "end", None), (0.3, "push", late)], 80)
    assert run.audio_bytes == padded(a + late)
    assert run.audio_ticks == list(range(53))
    assert s.stats.late_chunks_dropped == 0


def test_late_chunk_after_grace_dropped_counted_and_not_played_into_next_turn() -> None:
    a, late, b = (
        rand_audio(50 * FRAME),
        rand_audio(FRAME, seed=2),
        rand_audio(10 * FRAME, seed=3),
    )
    s = OutboundStream("c", SLIN_8K)
    acts = [
        (0.0, "begin", "t1"),
        (0.0, "push", a),
        (0.01, "end", None),
        (0.6, "push", late),  # grace ended at 0.51; t1 is still draining
        (1.5, "push", late),  # after t1 finished, before the next begin_turn
        (2.0, "begin", "t2"),
        (2.0, "push", b),
        (2.0, "end", None),
    ]
    run = simulate(s, acts, 130)
    assert run.audio_bytes == a + b
    assert run.audio_ticks == list(range(50)) + list(range(100, 110))
    ends = [e for _, e in run.of(StreamingEnded)]
    assert [(e.turn_id, e.late_chunks_dropped) for e in ends] == [("t1", 1), ("t2", 0)]
    assert s.stats.late_chunks_dropped == 2


def test_grace_chunk_after_final_padded_frame_keeps_sample_alignment() -> None:
    a = rand_audio(3 * FRAME + 101)  # ends inside a 16-bit sample
    late = rand_audio(1 + 2 * FRAME, seed=4)  # first byte completes that sample
    s = OutboundStream("c", SLIN_8K)
    run = simulate(s, [(0.0, "push", a), (0.0, "end", None), (0.1, "push", late)], 30)
    assert run.audio_ticks == [0, 1, 2, 3, 5, 6]
    assert run.audio_bytes == padded(a) + late[1:]
    ((k, ended),) = run.of(StreamingEnded)
    assert k == 25
    assert (ended.frames_sent, ended.silence_frames_inserted) == (6, 1)


def test_begin_turn_ends_grace() -> None:
    a, b, c = (rand_audio(10 * FRAME, seed=i) for i in (1, 2, 3))
    s = OutboundStream("c", SLIN_8K)
    acts = [
        (0.0, "begin", "t1"),
        (0.0, "push", a),
        (0.0, "end", None),
        (0.1, "begin", "t2"),
        (0.1, "push", b),
        (0.2, "push", c),
    ]
    run = simulate(s, acts, 40)
    assert run.audio_bytes == a + b + c  # c belongs to t2, never to t1
    assert s.stats.late_chunks_dropped == 0


def test_zero_grace_drops_anything_after_end_turn() -> None:
    s = OutboundStream("c", SLIN_8K, StreamParams(provider_grace_ms=0))
    a = rand_audio(10 * FRAME)
    run = simulate(s, [(0.0, "push", a), (0.0, "end", None), (0.0, "push", b"xx")], 15)
    assert run.audio_bytes == a and s.stats.late_chunks_dropped == 1
    assert [k for k, _ in run.of(StreamingEnded)] == [10]


# ---- flush (barge-in) --------------------------------------------------------------------------


def test_flush_drops_everything_and_late_chunks_of_the_turn() -> None:
    a = rand_audio(100 * FRAME + 7)
    b = rand_audio(8 * FRAME, seed=5)
    s = OutboundStream("c", SLIN_8K)
    acts = [
        (0.0, "begin", "t1"),
        (0.0, "push", a),
        (1.0, "flush", None),  # before tick 50: 50 frames played
        (1.1, "push", b"late chunk"),
        (1.2, "end", None),  # the provider's done marker for the flushed turn: ignored
        (1.5, "begin", "t2"),
        (1.5, "push", b),
        (1.5, "end", None),
    ]
    run = simulate(s, acts, 110)
    (res,) = run.flushes
    assert res == FlushResult(
        played_ms=1000.0, dropped_frames=51, turn_id="t1"
    )  # 50 whole + the partial
    assert run.audio_ticks == list(range(50)) + list(range(75, 83))
    assert run.audio_bytes == a[: 50 * FRAME] + b
    ends = run.of(StreamingEnded)
    assert ends[0] == (50, StreamingEnded("c", "t1", 50, 0, 0, 1000, 0, "barge-in"))
    assert ends[1] == (100, StreamingEnded("c", "t2", 8, 0, 0, 160, 0, "completed"))
    assert [e.turn_id for _, e in run.of(StreamingStarted)] == ["t1", "t2"]
    assert s.stats.late_chunks_dropped == 1
    assert s.stats.flushed_frames == 51


def test_flush_while_buffering_and_with_queued_turns() -> None:
    s = OutboundStream("c", SLIN_8K)
    a, b = rand_audio(20 * FRAME), rand_audio(3 * FRAME, seed=2)
    s.begin_turn(0.0, "t1")
    s.push(a, 0.0)
    s.end_turn(0.0)
    s.begin_turn(0.0, "t2")
    s.push(b, 0.0)
    for k in range(5):
        s.tick(k * PERIOD)
    res = s.flush(0.1)
    assert res == FlushResult(played_ms=100.0, dropped_frames=15 + 3, turn_id="t1")
    ends = [e for e in s.drain_events() if isinstance(e, StreamingEnded)]
    assert [(e.turn_id, e.reason, e.frames_sent) for e in ends] == [
        ("t1", "barge-in", 5),
        ("t2", "barge-in", 0),
    ]
    assert s.state is StreamState.IDLE
    assert s.flush(0.2) == FlushResult(0.0, 0, None)


# ---- turns ------------------------------------------------------------------------------------


def test_back_to_back_turns_play_without_a_gap_one_start_each() -> None:
    a, b = rand_audio(50 * FRAME + 30), rand_audio(25 * FRAME, seed=2)
    s = OutboundStream("c", SLIN_8K)
    acts = [
        (0.0, "begin", "t1"),
        (0.0, "push", a),
        (0.01, "end", None),
        (0.1, "begin", "t2"),
        (0.1, "push", b),
        (0.11, "end", None),
    ]
    run = simulate(s, acts, 120)
    assert run.audio_ticks == list(range(76))
    assert run.audio_bytes == padded(a) + b
    starts = run.of(StreamingStarted)
    ends = run.of(StreamingEnded)
    assert [(k, e.turn_id) for k, e in starts] == [(0, "t1"), (51, "t2")]
    assert starts[1][1].first_frame_latency_ms == pytest.approx(0.0)
    assert [(k, e.turn_id, e.frames_sent) for k, e in ends] == [
        (51, "t1", 51),
        (76, "t2", 25),
    ]
    assert s.stats.turns == 2 and s.stats.stream_starts == 2 and s.stats.restarts == 0


def test_begin_turn_implicitly_ends_an_open_turn() -> None:
    a, b = rand_audio(10 * FRAME + 3), rand_audio(10 * FRAME, seed=2)
    s = OutboundStream("c", SLIN_8K)
    run = simulate(
        s,
        [
            (0.0, "push", a),
            (0.05, "begin", "t2"),
            (0.05, "push", b),
            (0.05, "end", None),
        ],
        40,
    )
    assert run.audio_bytes == padded(a) + b
    assert [e.turn_id for _, e in run.of(StreamingEnded)] == ["turn1", "t2"]


def test_push_auto_begins_the_first_turn() -> None:
    s = OutboundStream("c", SLIN_8K)
    assert s.current_turn_id is None
    s.push(rand_audio(FRAME), 0.0)
    assert s.current_turn_id == "turn1"
    assert s.state is StreamState.BUFFERING


def test_empty_turn_ends_after_grace_without_start() -> None:
    s = OutboundStream("c", SLIN_8K)
    run = simulate(s, [(0.0, "begin", "t1"), (0.1, "end", None)], 40)
    assert run.of(StreamingStarted) == []
    assert [(k, e.frames_sent, e.reason) for k, e in run.of(StreamingEnded)] == [
        (30, 0, "completed")
    ]


def test_close_ends_the_turn_with_call_ended() -> None:
    s = OutboundStream("c", SLIN_8K)
    s.push(rand_audio(20 * FRAME), 0.0)
    for k in range(3):
        s.tick(k * PERIOD)
    res = s.close(0.06)
    assert res.dropped_frames == 17 and res.played_ms == 60.0
    (ended,) = [e for e in s.drain_events() if isinstance(e, StreamingEnded)]
    assert ended.reason == "call-ended"
    s.push(b"after", 0.1)
    assert s.stats.late_chunks_dropped == 1
    assert s.tick(0.1) == b"\x00" * FRAME
    assert s.close(0.2) == FlushResult(0.0, 0)
    with pytest.raises(RuntimeError):
        s.begin_turn(0.3)


def test_overflow_drops_newest_frames_and_counts() -> None:
    s = OutboundStream("c", SLIN_8K, StreamParams(max_buffer_ms=200))
    a = rand_audio(50 * FRAME)
    assert s.push(a, 0.0) == 40
    s.end_turn(0.0)
    run = simulate(s, [], 20)
    assert run.audio_bytes == a[: 10 * FRAME]
    assert s.stats.overflow_frames_dropped == 40


def test_queued_turns_share_the_capacity() -> None:
    s = OutboundStream("c", SLIN_8K, StreamParams(max_buffer_ms=200))
    s.push(rand_audio(8 * FRAME), 0.0)
    s.begin_turn(0.0)
    assert s.push(rand_audio(5 * FRAME), 0.0) == 3
    assert s.depth_frames == 10


# ---- soft barge-in hold/release ------------------------------------------------------


def test_hold_sends_silence_without_consuming_and_release_resumes_exactly():
    stream = OutboundStream("c", SLIN_8K, StreamParams(fallback_timeout_ms=200))
    audio = bytes(range(256)) * 25  # 6400 bytes = 20 frames
    stream.begin_turn(0.0)
    stream.push(audio, 0.0)
    sent = [stream.tick(i * 0.02) for i in range(5)]
    assert b"".join(sent) == audio[: 5 * 320]
    assert stream.hold(0.1)
    held = [stream.tick(0.1 + i * 0.02) for i in range(15)]  # 300 ms: longer than the fallback timeout
    assert all(f == b"\x00" * 320 for f in held)
    assert not stream.last_tick_sent_audio
    assert stream.depth_frames == 15
    stream.release(0.4)
    rest = [stream.tick(0.4 + i * 0.02) for i in range(15)]
    assert b"".join(rest) == audio[5 * 320:]
    assert stream.stats.pauses == 0 and stream.stats.fallbacks == 0


def test_hold_needs_a_playing_turn_and_flush_clears_it():
    stream = OutboundStream("c", SLIN_8K)
    assert not stream.hold(0.0)  # nothing playing
    stream.begin_turn(0.0)
    stream.push(b"\x01\x00" * 1600, 0.0)
    stream.tick(0.0)
    assert stream.hold(0.02) and stream.held
    result = stream.flush(0.04)
    assert not stream.held and result.dropped_frames == 9
    assert stream.tick(0.06) == b"\x00" * 320
