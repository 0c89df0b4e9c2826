"""OutboundStream event delivery (on_event callback, logging) and StreamParams validation."""

from __future__ import annotations

from dataclasses import replace

import pytest
import structlog

from outbound_sim import FRAME, PERIOD, rand_audio, simulate

from voiceline.audio.formats import SLIN_8K
from voiceline.core.outbound_stream import OutboundStream
from voiceline.core.stream_events import FallbackRequested, StreamEvent, StreamingStarted
from voiceline.core.stream_params import StreamParams


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
