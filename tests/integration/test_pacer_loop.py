"""The real asyncio Pacer: one task ticking many streams at real time, without bursts.

These assert behaviour (tick count, spacing, isolation), not performance: the
margins (±2 ticks over a second, >= 10 ms between ticks) hold on any machine that
can run the event loop at all.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time

import structlog

from voiceline.audio.formats import SLIN_8K
from voiceline.core.pacer import Pacer
from voiceline.core.stream_params import StreamParams
from voiceline.core.streaming_playback_manager import StreamingPlaybackManager

PERIOD = 0.020
FRAME = 320


async def test_50_streams_for_a_second_tick_at_real_time_without_bursts() -> None:
    loop = asyncio.get_running_loop()
    pacer = Pacer()
    mgr = StreamingPlaybackManager(StreamParams(), pacer)
    sent: dict[str, list[tuple[float, bytes]]] = {}
    pushed: dict[str, bytes] = {}
    rng = random.Random(42)
    for i in range(50):
        call_id = f"call-{i}"
        sent[call_id] = []
        stream = mgr.open(
            call_id,
            SLIN_8K,
            lambda frame, log=sent[call_id]: log.append((loop.time(), frame)),
        )
        # Half a second of agent audio in one burst, odd length: plays then drains.
        audio = rng.randbytes(25 * FRAME + 1 + i)
        pushed[call_id] = audio
        stream.push(audio, loop.time())
        stream.end_turn(loop.time())

    t0 = loop.time()
    pacer.start()
    await asyncio.sleep(1.0)
    await pacer.stop()
    elapsed = loop.time() - t0
    for call_id in list(sent):
        mgr.close(call_id)

    expected = int(elapsed / PERIOD) + 1  # the first tick is at start
    stats = pacer.stats
    counts = {len(frames) for frames in sent.values()}
    assert len(counts) == 1, "every stream gets every tick"
    ticks = counts.pop()
    assert abs(ticks - expected) <= 2, (ticks, expected, stats)
    assert stats.ticks == ticks

    times = [t for t, _ in sent["call-0"]]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.010, f"burst: ticks {min(gaps) * 1000:.2f} ms apart ({stats})"

    for call_id, frames in sent.items():
        assert all(len(f) == FRAME for _, f in frames)
        audio = pushed[call_id]
        played = b"".join(f for _, f in frames[:26])
        assert played[: len(audio)] == audio  # the whole turn, in order, from tick 0
        assert played[len(audio) :] == b"\x00" * (len(played) - len(audio))  # padding
        assert all(
            f == b"\x00" * FRAME for _, f in frames[26:]
        )  # then silence keeps flowing


async def test_a_failing_stream_is_removed_and_the_others_keep_ticking() -> None:
    pacer = Pacer()
    good: list[float] = []
    bad_calls = 0

    def bad(now: float) -> None:
        nonlocal bad_calls
        bad_calls += 1
        raise RuntimeError("broken stream")

    pacer.register("good", good.append)
    pacer.register("bad", bad)
    with structlog.testing.capture_logs() as logs:
        pacer.start()
        await asyncio.sleep(0.2)
        await pacer.stop()
    assert bad_calls == 1
    assert not pacer.is_registered("bad") and pacer.is_registered("good")
    assert len(good) >= 8
    errors = [r for r in logs if r["log_level"] == "error"]
    assert [r["stream_id"] for r in errors] == ["bad"]


async def test_a_stream_whose_transport_breaks_is_reported_to_its_owner_on_the_running_loop() -> None:
    pacer = Pacer()
    mgr = StreamingPlaybackManager(StreamParams(), pacer)
    loop = asyncio.get_running_loop()
    owner_told: asyncio.Future[BaseException] = loop.create_future()
    good_went_on: asyncio.Future[None] = loop.create_future()
    good_after_failure = 0
    broken_after = 3
    bad_frames = 0

    def good_send(frame: bytes) -> None:
        nonlocal good_after_failure
        if owner_told.done():
            good_after_failure += 1
            if good_after_failure == 3 and not good_went_on.done():
                good_went_on.set_result(None)

    def flaky_send(frame: bytes) -> None:
        nonlocal bad_frames
        if bad_frames == broken_after:
            raise BrokenPipeError("caller hung up")
        bad_frames += 1

    mgr.open("good", SLIN_8K, good_send)
    mgr.open("bad", SLIN_8K, flaky_send, on_failure=owner_told.set_result)
    with structlog.testing.capture_logs() as logs:
        pacer.start()
        exc = await asyncio.wait_for(owner_told, timeout=5.0)
        await asyncio.wait_for(good_went_on, timeout=5.0)  # the other call keeps its audio
        await pacer.stop()
    assert isinstance(exc, BrokenPipeError)
    assert bad_frames == broken_after
    assert mgr.get("bad") is None and mgr.get("good") is not None
    errors = [r for r in logs if r["log_level"] == "error"]
    assert [r["stream_id"] for r in errors] == ["bad"]


async def test_a_blocked_loop_skips_ticks_instead_of_bursting() -> None:
    pacer = Pacer()
    times: list[float] = []
    blocked = False

    def tick(now: float) -> None:
        nonlocal blocked
        times.append(now)
        if len(times) == 5 and not blocked:
            blocked = True
            time.sleep(0.101)  # a misbehaving coroutine stalls the whole loop

    pacer.register("s", tick)
    pacer.start()
    await asyncio.sleep(0.4)
    await pacer.stop()
    stats = pacer.stats
    assert stats.skipped_ticks >= 4
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[4] >= 0.1  # the stall itself
    # After the stall: one tick for the latest slot, then back on the grid. No burst.
    assert min(gaps) >= 0.010, gaps
    assert stats.max_lateness_ms >= 80.0


async def test_stop_is_idempotent_and_start_restarts() -> None:
    pacer = Pacer()
    n: list[float] = []
    pacer.register("s", n.append)
    await pacer.stop()
    pacer.start()
    pacer.start()  # no second task
    await asyncio.sleep(0.05)
    await pacer.stop()
    await pacer.stop()
    assert not pacer.running
    assert 2 <= len(n) <= 5
