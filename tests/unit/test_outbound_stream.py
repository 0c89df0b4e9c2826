"""OutboundStream driven by a fake clock (tests/unit/outbound_sim.py) through every
delivery pattern: idle, steady, burst, jitter, stall, tiny and odd-sized chunks.

Turns, pauses, grace and flush: test_outbound_stream_turns.py; event delivery and
params: test_outbound_stream_events.py; the manager: test_streaming_playback_manager.py.
"""

from __future__ import annotations

import math
import random

import pytest

from outbound_sim import (
    BYTES_PER_S,
    FRAME,
    PERIOD,
    SLIN_16K,
    first_tick_at_or_after,
    padded,
    rand_audio,
    simulate,
    steady,
)

from voiceline.audio.formats import MULAW_8K, SLIN_8K, AudioFormat
from voiceline.core.outbound_stream import OutboundStream
from voiceline.core.stream_events import (
    FallbackRequested,
    StreamingEnded,
    StreamingPaused,
    StreamingResumed,
    StreamingStarted,
    StreamState,
)
from voiceline.core.stream_params import StreamParams


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
