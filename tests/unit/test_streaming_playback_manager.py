"""StreamingPlaybackManager driven through Pacer.run_tick with a fake clock."""

from __future__ import annotations

import pytest
import structlog

from outbound_sim import FRAME, PERIOD, rand_audio

from voiceline.audio.formats import SLIN_8K
from voiceline.core.pacer import Pacer
from voiceline.core.stream_events import StreamEvent
from voiceline.core.stream_params import StreamParams
from voiceline.core.streaming_playback_manager import StreamingPlaybackManager


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


def test_manager_refuses_an_async_send_frame_at_open_and_other_streams_tick(fake_clock) -> None:
    # A coroutine function as send_frame would make coroutines nobody awaits: the
    # call's audio would vanish without a word. Refused before the stream exists.
    clock = fake_clock
    pacer = Pacer(clock=clock)
    mgr = StreamingPlaybackManager(StreamParams(), pacer)

    async def bad_send(frame: bytes) -> None:  # pragma: no cover - never called
        pass

    good: list[bytes] = []
    with pytest.raises(TypeError, match="coroutine function"):
        mgr.open("bad", SLIN_8K, bad_send)
    mgr.open("good", SLIN_8K, good.append)
    pacer.run_tick(0.0)
    pacer.run_tick(0.02)
    assert not pacer.is_registered("bad") and mgr.get("bad") is None
    assert len(good) == 2
    assert pacer.stats.tick_errors == 0


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
