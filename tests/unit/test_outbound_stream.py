"""OutboundStream driven by a fake clock through every delivery pattern.

Ticks happen at ``k * 20 ms``; provider actions scheduled at or before a tick's
time are applied before that tick. Audio is random bytes, so no 20 ms frame of it
can be mistaken for silence, and "audio frame" is read from the stream's own
``frames_sent`` counter, not guessed from content.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace

import pytest
import structlog

from voiceline.audio.formats import MULAW_8K, SLIN_8K, AudioFormat
from voiceline.core.pacer import Pacer
from voiceline.core.outbound_stream import OutboundStream
from voiceline.core.stream_events import (
    FallbackRequested,
    FlushResult,
    StreamEvent,
    StreamingEnded,
    StreamingPaused,
    StreamingResumed,
    StreamingStarted,
    StreamState,
)
from voiceline.core.stream_params import StreamParams
from voiceline.core.streaming_playback_manager import StreamingPlaybackManager

PERIOD = 0.020
SLIN_16K = AudioFormat("slin16", 16000)
FRAME = 320  # slin16@8000, 20 ms
BYTES_PER_S = 16000  # slin16@8000


def rand_audio(n: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(n)


@dataclass
class Run:
    stream: OutboundStream
    audio: list[tuple[int, bytes]] = field(default_factory=list)  # (tick, frame)
    events: list[tuple[int, StreamEvent]] = field(default_factory=list)
    flushes: list[FlushResult] = field(default_factory=list)
    silence_ticks: list[int] = field(default_factory=list)

    @property
    def audio_ticks(self) -> list[int]:
        return [k for k, _ in self.audio]

    @property
    def audio_bytes(self) -> bytes:
        return b"".join(f for _, f in self.audio)

    def of(self, kind: type) -> list[tuple[int, StreamEvent]]:
        return [(k, e) for k, e in self.events if isinstance(e, kind)]


def simulate(
    stream: OutboundStream,
    actions: list[tuple],
    ticks: int,
    run: Run | None = None,
    first_tick: int = 0,
) -> Run:
    """actions: (time, "push"|"begin"|"end"|"flush", arg); applied before the tick at >= time."""
    run = run or Run(stream)
    actions = sorted(
        actions, key=lambda a: a[0]
    )  # stable: same-time actions keep their order
    i = 0
    for k in range(first_tick, first_tick + ticks):
        now = k * PERIOD
        while i < len(actions) and actions[i][0] <= now + 1e-12:
            at, kind, arg = actions[i]
            if kind == "push":
                stream.push(arg, at)
            elif kind == "begin":
                stream.begin_turn(at, arg)
            elif kind == "end":
                stream.end_turn(at)
            elif kind == "flush":
                run.flushes.append(stream.flush(at, arg or "barge-in"))
            else:  # pragma: no cover - test bug
                raise AssertionError(kind)
            i += 1
            run.events.extend((k, e) for e in stream.drain_events())
        before = stream.stats.frames_sent
        frame = stream.tick(now)
        assert len(frame) == stream.frame_bytes
        if stream.stats.frames_sent > before:
            run.audio.append((k, frame))
        else:
            assert frame == stream.wire_format.silence(stream.frame_bytes)
            run.silence_ticks.append(k)
        run.events.extend((k, e) for e in stream.drain_events())
    assert i == len(actions), "not every action was applied; run more ticks"
    return run


def steady(
    audio: bytes,
    chunk: int,
    rate: float,
    t0: float = 0.001,
    bytes_per_s: int = BYTES_PER_S,
) -> list[tuple]:
    """Chunks of ``chunk`` bytes delivered at ``rate`` x real time starting at t0."""
    acts = []
    for i, pos in enumerate(range(0, len(audio), chunk)):
        acts.append((t0 + pos / bytes_per_s / rate, "push", audio[pos : pos + chunk]))
    return acts


def padded(audio: bytes, fmt: AudioFormat = SLIN_8K, frame: int = FRAME) -> bytes:
    rem = len(audio) % frame
    return audio + (fmt.silence(frame - rem) if rem else b"")


def first_tick_at_or_after(t: float) -> int:
    return math.ceil(t / PERIOD - 1e-9)


# ---- idle and basics -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "nbytes", "fill"),
    [(SLIN_8K, 320, 0x00), (SLIN_16K, 640, 0x00), (MULAW_8K, 160, 0xFF)],
)
def test_idle_stream_sends_a_silence_frame_every_tick(
    fmt: AudioFormat, nbytes: int, fill: int
) -> None:
    s = OutboundStream("c", fmt)
    assert s.frame_bytes == nbytes
    for k in range(100):
        assert s.tick(k * PERIOD) == bytes([fill]) * nbytes
    assert s.state is StreamState.IDLE
    assert s.stats.silence_frames == 100
    assert s.stats.frames_sent == 0
    assert s.drain_events() == []


def test_ms_settings_become_frame_counts_with_ceil() -> None:
    p = StreamParams(min_start_ms=110, low_watermark_ms=30, max_buffer_ms=1001)
    s = OutboundStream("c", MULAW_8K, p)
    assert (s.min_start_frames, s.low_watermark_frames, s.capacity_frames) == (6, 2, 51)
    assert s.frame_bytes == 160
    d = OutboundStream("c", SLIN_16K)
    assert (d.min_start_frames, d.low_watermark_frames, d.capacity_frames) == (
        6,
        1,
        3000,
    )


# ---- delivery patterns ----------------------------------------------------------------


def test_steady_real_time() -> None:
    audio = rand_audio(100 * FRAME)  # 2 s
    s = OutboundStream("c", SLIN_8K)
    acts = [(0.0, "begin", "t1")] + steady(audio, FRAME, 1.0) + [(1.982, "end", None)]
    run = simulate(s, acts, 140)
    # chunk i lands at 1 ms + 20 ms * i; 6 chunks (min_start) are in by tick 6
    assert run.audio_ticks == list(range(6, 106))
    assert run.audio_bytes == audio
    ((k, started),) = run.of(StreamingStarted)
    assert k == 6
    assert started == StreamingStarted("c", "t1", pytest.approx(119.0), 6)
    assert run.of(StreamingPaused) == []
    ((k_end, ended),) = run.of(StreamingEnded)
    assert k_end == first_tick_at_or_after(1.982 + 0.5) == 125  # waits out the grace
    assert ended == StreamingEnded("c", "t1", 100, 0, 0, 2000, 0, "completed")
    st = s.stats
    assert (st.frames_sent, st.pauses, st.restarts, st.stream_starts, st.turns) == (
        100,
        0,
        0,
        1,
        1,
    )
    assert st.silence_frames == 140 - 100
    # depth sampled on ticks 7..99 (started, turn open): always 6 frames before the pop
    assert st.depth.summary() == {
        "samples": 93,
        "min": 6,
        "mean": 6.0,
        "p95": 6,
        "max": 6,
    }
    assert s.state is StreamState.IDLE


@pytest.mark.parametrize(
    ("rate", "chunk"),
    [
        (1.2, FRAME),
        (2.0, FRAME),
        (1.2, 10 * FRAME),
        (2.0, 5 * FRAME),
        (1.2, 7 * FRAME + 3),
    ],
    ids=["1.2x-20ms", "2x-20ms", "1.2x-200ms", "2x-100ms", "1.2x-odd-143ms"],
)
def test_steady_faster_than_real_time_never_pauses(rate: float, chunk: int) -> None:
    audio = rand_audio(150 * FRAME + 77)  # 3 s + an odd tail
    s = OutboundStream("c", SLIN_8K)
    acts = steady(audio, chunk, rate)
    t_last = acts[-1][0]
    acts.append((t_last + 0.0001, "end", None))
    run = simulate(s, acts, 260)
    # Independent expectation: playback starts at the first tick with >= 6 whole frames in.
    start = next(
        k
        for k in range(260)
        if sum(len(a[2]) for a in acts if a[1] == "push" and a[0] <= k * PERIOD)
        >= 6 * FRAME
    )
    assert run.audio_ticks == list(
        range(start, start + 151)
    )  # contiguous: no gap at all
    assert run.audio_bytes == padded(audio)
    assert len(run.of(StreamingStarted)) == 1
    assert run.of(StreamingPaused) == [] and run.of(StreamingResumed) == []
    ((_, ended),) = run.of(StreamingEnded)
    assert (
        ended.frames_sent,
        ended.silence_frames_inserted,
        ended.pauses,
        ended.reason,
    ) == (151, 0, 0, "completed")
    assert s.stats.pauses == 0 and s.stats.restarts == 0


def test_one_burst_of_5s_at_once() -> None:
    audio = rand_audio(250 * FRAME + 101)  # 5 s + an odd partial frame
    s = OutboundStream("c", SLIN_8K)
    run = simulate(
        s, [(0.003, "begin", None), (0.003, "push", audio), (0.004, "end", None)], 260
    )
    assert run.audio_ticks == list(range(1, 252))
    assert run.audio_bytes == padded(audio)
    assert run.audio[-1][1] == audio[-101:] + b"\x00" * (FRAME - 101)
    ((k, started),) = run.of(StreamingStarted)
    assert (k, started.depth, started.turn_id) == (1, 250, "turn1")
    assert started.first_frame_latency_ms == pytest.approx(17.0)
    ((k_end, ended),) = run.of(StreamingEnded)
    assert k_end == 252  # grace ran out long ago: ends as soon as the audio is out
    assert ended == StreamingEnded("c", "turn1", 251, 0, 0, 251 * 20, 0, "completed")
    assert s.stats.overflow_frames_dropped == 0


def test_burst_with_turn_still_open_plays_then_pauses_dry() -> None:
    audio = rand_audio(50 * FRAME)
    s = OutboundStream("c", SLIN_8K)
    run = simulate(s, [(0.0, "push", audio)], 60)
    assert run.audio_ticks == list(range(50))
    ((k, paused),) = run.of(StreamingPaused)
    assert (k, paused.depth, paused.frames_sent) == (50, 0, 50)
    # While playing with the turn open the depth before each pop went 49 .. 1, then 0 paused
    d = s.stats.depth
    assert (d.min, d.max, d.count) == (0, 49, 59)


def test_jitter_random_sizes_and_gaps_at_1_2x_never_pauses() -> None:
    rng = random.Random(20240601)
    audio = rand_audio(4 * BYTES_PER_S + 13, seed=3)  # 4 s, odd total
    acts: list[tuple] = []
    pos, last_t = 0, 0.0
    while pos < len(audio):
        n = rng.randint(1, 2 * FRAME)  # up to 40 ms, odd sizes included
        nominal = pos / BYTES_PER_S / 1.2  # when a 1.2x provider would send it
        at = max(
            last_t, nominal + rng.uniform(0.0, 0.060)
        )  # up to 60 ms late, in order
        acts.append((at, "push", audio[pos : pos + n]))
        pos += n
        last_t = at
    acts.append((last_t, "end", None))
    # No pause is guaranteed: frame k is complete by (k+1)*20/1.2 ms + 60 ms, and with
    # start only after 6 frames (>= 1280 bytes pushed, i.e. >= 66.7 ms nominal) it is
    # needed at >= 66.7 + 20k ms, which is later for every k >= 3.
    run = simulate(s := OutboundStream("c", SLIN_8K), acts, 300)
    nframes = math.ceil(len(audio) / FRAME)
    start = run.audio_ticks[0]
    assert run.audio_ticks == list(range(start, start + nframes))
    assert run.audio_bytes == padded(audio)
    assert len(run.of(StreamingStarted)) == 1
    assert run.of(StreamingPaused) == []
    ((_, ended),) = run.of(StreamingEnded)
    assert (ended.frames_sent, ended.pauses, ended.silence_frames_inserted) == (
        nframes,
        0,
        0,
    )
    assert s.stats.depth.min is not None and s.stats.depth.min >= 1


def _stall_actions(audio: bytes, stall_s: float) -> list[tuple]:
    """Real-time 20 ms chunks; chunk 50 onwards arrive ``stall_s`` late."""
    acts: list[tuple] = [(0.0, "begin", "t1")]
    for i in range(len(audio) // FRAME):
        at = 0.001 + i * PERIOD + (stall_s if i >= 50 else 0.0)
        acts.append((at, "push", audio[i * FRAME : (i + 1) * FRAME]))
    return acts


def test_stall_3s_shorter_than_fallback_pauses_and_resumes() -> None:
    audio = rand_audio(100 * FRAME)
    s = OutboundStream("c", SLIN_8K)
    acts = _stall_actions(audio, 3.0) + [(4.982, "end", None)]
    run = simulate(s, acts, 290)
    # Frames 0..49 at ticks 6..55; tick 56 finds nothing: pause. Chunks 50..55 land at
    # 4.001..4.101 s, so min_start (6 frames) is back at tick 206 (4.12 s).
    assert run.audio_ticks == list(range(6, 56)) + list(range(206, 256))
    assert run.audio_bytes == audio
    assert [(k, e) for k, e in run.of(StreamingPaused)] == [
        (56, StreamingPaused("c", "t1", 0, 50))
    ]
    ((k_res, resumed),) = run.of(StreamingResumed)
    assert (k_res, resumed.depth) == (206, 6)
    assert resumed.paused_ms == pytest.approx(3000.0)
    assert len(run.of(StreamingStarted)) == 1  # the stream was never restarted
    assert run.of(FallbackRequested) == []
    ((_, ended),) = run.of(StreamingEnded)
    assert ended == StreamingEnded(
        "c", "t1", 100, 150, 1, (100 + 150) * 20, 0, "completed"
    )
    assert s.stats.restarts == 0 and s.stats.fallbacks == 0


def test_stall_3s_longer_than_fallback_hands_the_rest_over() -> None:
    audio = rand_audio(100 * FRAME)
    trickle = rand_audio(
        3 * FRAME + 101, seed=99
    )  # arrives during the stall, < min_start
    params = StreamParams(fallback_timeout_ms=2000)
    s = OutboundStream("call-9", SLIN_8K, params)
    acts = _stall_actions(audio, 3.0)
    # the trickle replaces nothing: it is extra audio inside the stall
    acts.append((2.0, "push", trickle))
    acts.append((4.982, "end", None))
    acts.append((6.0, "begin", "t2"))
    acts.append((6.0, "push", audio[: 10 * FRAME]))
    acts.append((6.0, "end", None))
    run = simulate(s, acts, 330)
    # Last agent frame at tick 55 (1.10 s) + 2 s timeout = tick 155.
    (k_fb, fb), (k_rest, rest) = run.of(FallbackRequested)
    assert k_fb == 155
    assert fb == FallbackRequested(
        "call-9", "t1", trickle, "voiceline-call-9-turn1-fallback"
    )
    # Chunks of t1 still arriving are collected and handed over when its grace closes.
    assert k_rest == first_tick_at_or_after(4.982 + 0.5)
    assert rest.audio == audio[50 * FRAME :]
    assert rest.playback_id == "voiceline-call-9-turn1-fallback-rest"
    ends = run.of(StreamingEnded)
    assert ends[0] == (
        155,
        StreamingEnded("call-9", "t1", 50, 0, 1, 1000, 0, "fallback"),
    )
    # Only silence between the fallback and turn 2; turn 2 streams normally.
    assert run.audio_ticks == list(range(6, 56)) + list(range(300, 310))
    assert (
        run.audio[-10:]
        and b"".join(f for _, f in run.audio[-10:]) == audio[: 10 * FRAME]
    )
    assert [e.turn_id for _, e in run.of(StreamingStarted)] == ["t1", "t2"]
    assert ends[1] == (
        325,
        StreamingEnded("call-9", "t2", 10, 0, 0, 200, 0, "completed"),
    )
    assert s.stats.fallbacks == 1


def test_fallback_when_provider_never_sends_audio() -> None:
    s = OutboundStream("c", SLIN_8K)
    run = simulate(s, [(0.01, "begin", None)], 210)
    ((k, fb),) = run.of(FallbackRequested)
    assert k == first_tick_at_or_after(0.01 + 4.0) == 201
    assert fb.audio == b""
    ((_, ended),) = run.of(StreamingEnded)
    assert (ended.reason, ended.frames_sent) == ("fallback", 0)
    assert run.of(StreamingStarted) == []


def test_fallback_disabled_with_zero_timeout() -> None:
    s = OutboundStream("c", SLIN_8K, StreamParams(fallback_timeout_ms=0))
    run = simulate(s, [(0.0, "begin", None)], 600)
    assert run.of(FallbackRequested) == [] and s.state is StreamState.BUFFERING


def test_tiny_chunks_1_to_7_bytes() -> None:
    rng = random.Random(5)
    audio = rand_audio(BYTES_PER_S + 1, seed=11)  # 1 s + 1 byte
    acts, pos = [], 0
    while pos < len(audio):
        n = rng.randint(1, 7)
        acts.append((0.001 + pos / BYTES_PER_S / 1.2, "push", audio[pos : pos + n]))
        pos += n
    acts.append((acts[-1][0], "end", None))
    s = OutboundStream("c", SLIN_8K)
    run = simulate(s, acts, 80)
    assert len(run.audio) == 51
    assert run.audio_bytes == padded(audio)
    assert run.audio[-1][1] == audio[-1:] + b"\x00" * 319
    start = run.audio_ticks[0]
    assert run.audio_ticks == list(range(start, start + 51))
    assert run.of(StreamingPaused) == []


@pytest.mark.parametrize(
    ("fmt", "frame"), [(SLIN_8K, 320), (SLIN_16K, 640), (MULAW_8K, 160)]
)
def test_odd_byte_counts_carry_over_exactly(fmt: AudioFormat, frame: int) -> None:
    sizes = [321, 319, 1, 639, 3, 1001, 157, 2049, 5]
    audio = rand_audio(sum(sizes), seed=frame)
    acts, pos = [], 0
    for i, n in enumerate(sizes):
        acts.append((0.001 * i, "push", audio[pos : pos + n]))
        pos += n
    acts.append((0.01, "end", None))
    s = OutboundStream("c", fmt)
    run = simulate(s, acts, 40)
    nframes = math.ceil(len(audio) / frame)
    assert run.audio_ticks == list(range(1, 1 + nframes))
    assert run.audio_bytes == padded(audio, fmt, frame)
    tail = len(audio) % frame
    assert run.audio[-1][1][tail:] == fmt.silence(frame - tail)


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


# ---- event delivery -------------------------------------------------------------------------


def test_on_event_callback_may_reenter_the_stream() -> None:
    seen: list[StreamEvent] = []
    box: list[OutboundStream] = []

    def on_event(ev: StreamEvent) -> None:
        seen.append(ev)
        if isinstance(ev, StreamingStarted):
            box[0].flush(0.0)  # barge-in from inside the callback

    s = OutboundStream("c", SLIN_8K, on_event=on_event)
    box.append(s)
    s.push(rand_audio(10 * FRAME), 0.0)
    frame = s.tick(0.0)
    assert frame != b"\x00" * FRAME  # the frame of this tick was already taken
    assert [type(e).__name__ for e in seen] == ["StreamingStarted", "StreamingEnded"]
    assert s.drain_events() == []
    assert s.tick(0.02) == b"\x00" * FRAME


def test_on_event_exceptions_propagate() -> None:
    def boom(ev: StreamEvent) -> None:
        raise RuntimeError("consumer bug")

    s = OutboundStream("c", SLIN_8K, on_event=boom)
    s.push(rand_audio(10 * FRAME), 0.0)
    with pytest.raises(RuntimeError, match="consumer bug"):
        s.tick(0.0)


def test_events_raised_inside_push_are_delivered_to_on_event() -> None:
    seen: list[StreamEvent] = []
    s = OutboundStream(
        "c", SLIN_8K, StreamParams(fallback_timeout_ms=1000), on_event=seen.append
    )
    s.begin_turn(0.0)
    for k in range(51):  # nothing arrives: fallback at tick 50 (1.0 s)
        s.tick(k * PERIOD)
    s.push(b"abc", 1.1)  # collected for the fallen-back turn
    s.end_turn(1.2)
    s.push(b"zz", 1.8)  # grace over: the rest is handed over, then this chunk is late
    assert [type(e).__name__ for e in seen] == [
        "FallbackRequested",
        "StreamingEnded",
        "FallbackRequested",
    ]
    assert isinstance(seen[-1], FallbackRequested) and seen[-1].audio == b"abc"
    assert s.stats.late_chunks_dropped == 1


@pytest.mark.parametrize("level", ["DEBUG", "INFO"])
def test_stream_logs_transitions_only_at_debug(level: str) -> None:
    s = OutboundStream("c", SLIN_8K, StreamParams(logging_level=level))
    a = rand_audio(20 * FRAME)
    acts = [
        (0.0, "push", a[: 10 * FRAME]),
        (0.3, "push", a[10 * FRAME :]),
        (0.3, "end", None),
        (1.0, "push", b"late"),
    ]
    with structlog.testing.capture_logs() as logs:
        simulate(s, acts, 60)
    names = {r["event"] for r in logs}
    if level == "DEBUG":
        assert {
            "streaming paused",
            "streaming resumed",
            "streaming late chunk dropped",
        } <= names
        assert all(r["log_level"] == "debug" for r in logs)
    else:
        assert logs == []


# ---- params --------------------------------------------------------------------------------------


def test_default_params_are_valid() -> None:
    p = StreamParams()
    p.validate()
    assert (p.chunk_size_ms, p.min_start_ms, p.low_watermark_ms) == (20, 120, 20)
    assert (p.max_buffer_ms, p.fallback_timeout_ms, p.provider_grace_ms) == (
        60_000,
        4000,
        500,
    )


@pytest.mark.parametrize(
    ("changes", "field_name"),
    [
        ({"chunk_size_ms": 25}, "chunk_size_ms"),
        ({"chunk_size_ms": 0}, "chunk_size_ms"),
        ({"chunk_size_ms": 80}, "chunk_size_ms"),
        ({"min_start_ms": 10}, "min_start_ms"),
        ({"low_watermark_ms": 10}, "low_watermark_ms"),
        ({"low_watermark_ms": 120}, "low_watermark_ms"),
        (
            {"low_watermark_ms": 110},
            "low_watermark_ms",
        ),  # ceil: 6 frames == min_start frames
        ({"max_buffer_ms": 100}, "max_buffer_ms"),
        ({"fallback_timeout_ms": 100}, "fallback_timeout_ms"),
        ({"provider_grace_ms": -1}, "provider_grace_ms"),
        ({"min_start_ms": 1.5}, "min_start_ms"),
        ({"logging_level": "LOUD"}, "logging_level"),
    ],
)
def test_invalid_params_name_the_field(changes: dict, field_name: str) -> None:
    with pytest.raises(ValueError, match=field_name):
        replace(StreamParams(), **changes)


def test_flush_rejects_unknown_reason() -> None:
    with pytest.raises(ValueError):
        OutboundStream("c", SLIN_8K).flush(0.0, "because")


# ---- manager (driven through Pacer.run_tick with a fake clock) -------------------------------------


def test_manager_sends_frames_logs_once_per_turn_and_closes(fake_clock) -> None:
    clock = fake_clock
    pacer = Pacer(clock=clock)
    mgr = StreamingPlaybackManager(StreamParams(), pacer)
    sent: list[bytes] = []
    events: list[StreamEvent] = []
    audio = rand_audio(30 * FRAME)
    with structlog.testing.capture_logs() as logs:
        stream = mgr.open("call-1", SLIN_8K, sent.append, events.append)
        stream.begin_turn(0.0, "t1")
        stream.push(audio, 0.0)
        stream.end_turn(0.0)
        for k in range(40):
            clock.t = k * PERIOD
            pacer.run_tick(clock.t)
        stream.begin_turn(clock.t, "t2")
        stream.push(audio[: 10 * FRAME], clock.t)
        for k in range(40, 45):
            clock.t = k * PERIOD
            pacer.run_tick(clock.t)
        res = mgr.close("call-1")
    assert len(sent) == 45 and all(len(f) == FRAME for f in sent)
    assert b"".join(sent[:30]) == audio
    assert res is not None and res.turn_id == "t2"
    assert not pacer.is_registered("call-1") and mgr.get("call-1") is None
    assert mgr.close("call-1") is None
    info = [
        (r["event"], r.get("turn_id"), r.get("reason"))
        for r in logs
        if r["log_level"] == "info"
    ]
    assert info == [
        ("STREAMING STARTED", "t1", None),
        ("STREAMING ENDED", "t1", "completed"),
        ("STREAMING STARTED", "t2", None),
        ("STREAMING ENDED", "t2", "call-ended"),
    ]
    assert all(r["call_id"] == "call-1" for r in logs if r["log_level"] == "info")
    assert [type(e).__name__ for e in events] == [
        "StreamingStarted",
        "StreamingEnded",
        "StreamingStarted",
        "StreamingEnded",
    ]


def test_manager_rejects_async_send_frame_and_pacer_drops_only_that_stream(fake_clock) -> None:
    clock = fake_clock
    pacer = Pacer(clock=clock)
    mgr = StreamingPlaybackManager(StreamParams(), pacer)

    async def bad_send(frame: bytes) -> None:  # pragma: no cover - never awaited
        pass

    good: list[bytes] = []
    mgr.open("bad", SLIN_8K, bad_send)
    mgr.open("good", SLIN_8K, good.append)
    with structlog.testing.capture_logs() as logs:
        pacer.run_tick(0.0)
        pacer.run_tick(0.02)
    assert not pacer.is_registered("bad") and pacer.is_registered("good")
    assert len(good) == 2
    assert pacer.stats.tick_errors == 1
    (err,) = [r for r in logs if r["log_level"] == "error"]
    assert err["stream_id"] == "bad"


def test_manager_removes_a_stream_whose_send_frame_raises_and_tells_its_owner_once(fake_clock) -> None:
    # Defect 9.4: the pacer dropped the stream but the call went on with no audio,
    # nobody told, and the manager still listed the stream as open.
    clock = fake_clock
    pacer = Pacer(clock=clock)
    mgr = StreamingPlaybackManager(StreamParams(), pacer)
    boom = ConnectionResetError("audiosocket gone")
    failures: list[BaseException] = []
    sent_before: list[bytes] = []
    sent_after: list[bytes] = []

    def broken_send(frame: bytes) -> None:
        raise boom

    mgr.open("before", SLIN_8K, sent_before.append)
    mgr.open("bad", SLIN_8K, broken_send, on_failure=failures.append)
    mgr.open("after", SLIN_8K, sent_after.append)
    with structlog.testing.capture_logs() as logs:
        pacer.run_tick(0.0)
        pacer.run_tick(0.02)
    assert failures == [boom]
    assert mgr.get("bad") is None and len(mgr) == 2
    assert not pacer.is_registered("bad") and pacer.stats.tick_errors == 1
    assert len(sent_before) == 2 and len(sent_after) == 2  # the failing tick served both
    (err,) = [r for r in logs if r["log_level"] == "error"]
    assert err["stream_id"] == "bad" and err["exc_info"]
    assert mgr.close("bad") is None  # the owner's usual close stays harmless


def test_manager_reports_a_raising_stream_tick_through_on_failure(fake_clock) -> None:
    clock = fake_clock
    pacer = Pacer(clock=clock)
    mgr = StreamingPlaybackManager(StreamParams(), pacer)
    failures: list[BaseException] = []
    sent: list[bytes] = []
    stream = mgr.open("c", SLIN_8K, sent.append, on_failure=failures.append)
    pacer.run_tick(0.0)
    bug = AssertionError("state machine bug")

    def broken_tick(now: float) -> bytes:
        raise bug

    stream.tick = broken_tick  # type: ignore[method-assign]
    with structlog.testing.capture_logs():
        pacer.run_tick(0.02)
        pacer.run_tick(0.04)
    assert failures == [bug] and len(sent) == 1
    assert mgr.get("c") is None and not pacer.is_registered("c")
    # The call id is free again once the stream failed (a new call may reuse it).
    mgr.open("c", SLIN_8K, sent.append)


def test_manager_validates_pacer_period_and_duplicate_open(fake_clock) -> None:
    with pytest.raises(ValueError, match="chunk_size_ms"):
        StreamingPlaybackManager(
            StreamParams(chunk_size_ms=10, min_start_ms=120, low_watermark_ms=10),
            Pacer(),
        )
    mgr = StreamingPlaybackManager(StreamParams(), Pacer(clock=fake_clock))
    mgr.open("x", SLIN_8K, lambda f: None)
    with pytest.raises(ValueError):
        mgr.open("x", SLIN_8K, lambda f: None)


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
