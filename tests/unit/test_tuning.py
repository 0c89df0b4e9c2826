"""Tuning hints: each rule with exact suggested values, and the healthy case."""

from __future__ import annotations

import pytest

from voiceline.config import parse_settings
from voiceline.core.stream_params import StreamParams
from voiceline.core.stream_stats import StreamStats
from voiceline.telemetry.tuning import (
    CallStreamingNumbers,
    Hint,
    format_hints,
    tuning_hints,
)
from voiceline.wiring import build_stream_params

DEFAULTS = StreamParams()  # chunk 20, min_start 120, low watermark 20, fallback 4000, grace 500


def clean(**overrides) -> CallStreamingNumbers:
    """A healthy call of a provider ahead of real time (first frame at once)."""
    values = {
        "turns": 4, "frames_sent": 600, "first_frame_latency_ms": (0.0, 20.0, 0.0, 20.0),
        "depth_samples": 400, "depth_min": 30, "depth_mean": 80.0, "depth_p95": 150, "depth_max": 200,
    }
    return CallStreamingNumbers(**{**values, **overrides})


def only(hints: list[Hint]) -> Hint:
    assert len(hints) == 1, hints
    return hints[0]


# ---- healthy -----------------------------------------------------------------------


def test_healthy_call_gets_exactly_one_no_change_hint_with_the_reason():
    hint = only(tuning_hints(clean(), DEFAULTS))
    assert hint == Hint(
        None, None, None,
        "no change needed: 4 turn(s) played without pauses or fallbacks, first frame p50 0 ms,"
        " buffer never below 30 frames",
    )


def test_call_without_agent_audio_has_nothing_to_tune():
    hint = only(tuning_hints(CallStreamingNumbers(), DEFAULTS))
    assert hint.key is None
    assert hint.reason == "no change needed: no agent audio was streamed in this call"


def test_provider_far_ahead_of_real_time_is_not_told_to_lower_min_start():
    # Depth stays far above min_start, but min_start costs no latency: nothing to gain.
    hint = only(tuning_hints(clean(depth_min=100, depth_p95=240), DEFAULTS))
    assert hint.reason.startswith("no change needed")


# ---- pauses --------------------------------------------------------------------------


def test_pauses_raise_min_start_by_the_longest_pause_rounded_up_to_a_frame():
    numbers = clean(pauses=2, silence_frames_inserted=12, pause_durations_ms=(80.0, 137.4), depth_min=0)
    hint = only(tuning_hints(numbers, DEFAULTS))
    assert hint.key == "streaming.min_start_ms"
    assert (hint.current, hint.suggested) == (120, 260)  # 120 + 137.4 -> 257.4 -> 260
    assert hint.reason == (
        "2 pause(s) in agent speech (longest pause 137 ms): a 260 ms cushion would absorb that stall"
    )


def test_pauses_without_durations_use_the_mean_from_inserted_silence():
    numbers = clean(pauses=3, silence_frames_inserted=10, depth_min=0)  # 10 * 20 / 3 = 66.7 ms
    hint = only(tuning_hints(numbers, DEFAULTS))
    assert (hint.current, hint.suggested) == (120, 200)  # 186.7 -> 200
    assert "mean pause 67 ms from inserted silence" in hint.reason


def test_pause_suggestion_is_capped_at_500_ms():
    numbers = clean(pauses=1, pause_durations_ms=(1500.0,), depth_min=0)
    hint = only(tuning_hints(numbers, DEFAULTS))
    assert (hint.current, hint.suggested) == (120, 500)
    assert hint.reason.endswith("capped at 500 ms")


def test_pause_suggestion_stays_below_the_fallback_timeout():
    params = StreamParams(min_start_ms=120, fallback_timeout_ms=300)
    hint = only(tuning_hints(clean(pauses=1, pause_durations_ms=(400.0,), depth_min=0), params))
    assert hint.suggested == 280  # fallback 300 - one frame
    # and the suggestion is a valid configuration
    StreamParams(min_start_ms=hint.suggested, fallback_timeout_ms=300)


def test_pause_suggestion_respects_the_frame_size():
    params = StreamParams(chunk_size_ms=30, min_start_ms=120, low_watermark_ms=30)
    hint = only(tuning_hints(clean(pauses=1, pause_durations_ms=(50.0,), depth_min=0), params))
    assert hint.suggested == 180  # 170 -> next multiple of 30


def test_pause_of_a_very_short_resumed_gap_still_adds_one_frame():
    hint = only(tuning_hints(clean(pauses=1, pause_durations_ms=(5.0,), silence_frames_inserted=0,
                                   depth_min=0), DEFAULTS))
    assert (hint.current, hint.suggested) == (120, 140)


def test_pause_that_never_resumed_asks_for_no_buffering_change():
    # The provider stopped sending without ending its turn (echo after the caller went
    # quiet): no gap was heard inside speech, so min_start_ms is not the fix.
    hints = tuning_hints(clean(pauses=1, silence_frames_inserted=0, depth_min=0), DEFAULTS)
    assert all(h.key != "streaming.min_start_ms" or h.suggested is None or h.suggested < 120 for h in hints)
    assert not any("pause(s)" in h.reason and "raise" in h.reason for h in hints)


def test_pauses_at_the_cap_already_point_at_the_provider():
    params = StreamParams(min_start_ms=500)
    hint = only(tuning_hints(clean(pauses=4, pause_durations_ms=(900.0,), depth_min=0), params))
    assert hint.key is None
    assert (hint.current, hint.suggested) == (500, None)
    assert "check it" in hint.reason


# ---- lowering min_start -----------------------------------------------------------------


def test_real_time_provider_with_unused_cushion_is_told_to_lower_min_start():
    # min_start 120 ms = 6 frames; never below 5 queued: 5 - 1 (watermark) - 1 (margin) = 3 unused.
    numbers = clean(first_frame_latency_ms=(100.0, 100.0, 100.0), depth_min=5, depth_p95=7, depth_max=8)
    hint = only(tuning_hints(numbers, DEFAULTS))
    assert hint.key == "streaming.min_start_ms"
    assert (hint.current, hint.suggested) == (120, 60)
    assert hint.reason == (
        "no pauses and the buffer never fell below 5 frames while turns played: 60 ms would still"
        " not pause and saves about 60 ms of first-frame latency"
    )
    StreamParams(min_start_ms=hint.suggested)  # a valid configuration


def test_lowering_never_goes_below_one_frame_above_the_watermark():
    params = StreamParams(min_start_ms=200, low_watermark_ms=40)  # 10 frames, watermark 2
    numbers = clean(first_frame_latency_ms=(180.0,), depth_min=12)
    hint = only(tuning_hints(numbers, params))
    assert hint.suggested == 60  # floor: watermark 2 frames + 1
    StreamParams(min_start_ms=hint.suggested, low_watermark_ms=40)


def test_lowering_by_a_single_frame_is_not_worth_a_hint():
    numbers = clean(first_frame_latency_ms=(100.0,), depth_min=3)  # 1 unused frame
    assert only(tuning_hints(numbers, DEFAULTS)).reason.startswith("no change needed")


def test_lowering_needs_a_second_of_playback_as_evidence():
    numbers = clean(first_frame_latency_ms=(100.0,), depth_min=5, depth_samples=49)
    assert only(tuning_hints(numbers, DEFAULTS)).reason.startswith("no change needed")


# ---- provider trouble -----------------------------------------------------------------


def test_fallbacks_suggest_checking_the_provider_or_a_longer_timeout():
    hint = only(tuning_hints(clean(fallbacks=2), DEFAULTS))
    assert hint.key == "streaming.fallback_timeout_ms"
    assert (hint.current, hint.suggested) == (4000, 6000)
    assert hint.reason == (
        "2 turn(s) stalled for 4000 ms and were played from file: check the provider, or if it is"
        " only slow under load raise fallback_timeout_ms to 6000 ms"
    )


def test_fallback_timeout_suggestion_rounds_to_half_seconds_and_caps_at_ten():
    assert only(tuning_hints(clean(fallbacks=1), StreamParams(fallback_timeout_ms=2100))).suggested == 3500
    assert only(tuning_hints(clean(fallbacks=1), StreamParams(fallback_timeout_ms=8000))).suggested == 10000
    at_cap = only(tuning_hints(clean(fallbacks=1), StreamParams(fallback_timeout_ms=10000)))
    assert (at_cap.key, at_cap.suggested) == (None, None)
    assert at_cap.reason.endswith("check the provider")


def test_late_chunks_double_the_provider_grace():
    hint = only(tuning_hints(clean(late_chunks_dropped=3), DEFAULTS))
    assert hint.key == "streaming.provider_grace_ms"
    assert (hint.current, hint.suggested) == (500, 1000)
    assert hint.reason == (
        "3 chunk(s) arrived more than 500 ms after their turn ended and were dropped: raise"
        " provider_grace_ms to 1000 ms"
    )


def test_late_chunks_from_zero_grace_and_at_the_cap():
    assert only(tuning_hints(clean(late_chunks_dropped=1), StreamParams(provider_grace_ms=0))).suggested == 100
    assert only(tuning_hints(clean(late_chunks_dropped=1), StreamParams(provider_grace_ms=1500))).suggested == 2000
    capped = only(tuning_hints(clean(late_chunks_dropped=1), StreamParams(provider_grace_ms=2000)))
    assert (capped.key, capped.suggested) == (None, None)


def test_late_chunks_after_barge_in_are_expected():
    hint = only(tuning_hints(clean(late_chunks_dropped=7, barge_ins=1), DEFAULTS))
    assert hint.key is None
    assert hint.reason.endswith("7 late chunk(s) follow barge-ins, as expected")


def test_slow_provider_start_is_reported():
    numbers = clean(first_frame_latency_ms=(250.0, 300.0, 400.0), depth_min=1)
    hint = only(tuning_hints(numbers, DEFAULTS))
    assert hint.key is None
    assert hint.reason == (
        "first frame p50 300 ms is well above min_start_ms 120 ms: the provider delivers the start"
        " of its answers slower than real time, check it"
    )


def test_restarts_are_a_bug_report_and_come_first():
    hints = tuning_hints(clean(restarts=1, fallbacks=1), DEFAULTS)
    assert [h.key for h in hints] == [None, "streaming.fallback_timeout_ms"]
    assert "bug" in hints[0].reason and "1x" in hints[0].reason


def test_several_problems_give_several_hints_in_order():
    numbers = clean(fallbacks=1, pauses=1, pause_durations_ms=(100.0,), late_chunks_dropped=2, depth_min=0)
    hints = tuning_hints(numbers, DEFAULTS)
    assert [h.key for h in hints] == [
        "streaming.fallback_timeout_ms", "streaming.min_start_ms", "streaming.provider_grace_ms",
    ]
    assert [h.suggested for h in hints] == [6000, 220, 1000]


# ---- inputs and output -------------------------------------------------------------------


def test_numbers_from_stream_stats_dict():
    stats = StreamStats(turns=2, pauses=1, frames_sent=300, silence_frames_inserted=5, late_chunks_dropped=1)
    stats.first_frame_latency_ms.extend([100.0, 40.0])
    for depth in (3, 4, 5, 6):
        stats.depth.add(depth)
    numbers = CallStreamingNumbers.from_stats(stats.as_dict(), pause_durations_ms=[60.0], barge_ins=2)
    assert numbers == CallStreamingNumbers(
        turns=2, pauses=1, restarts=0, fallbacks=0, late_chunks_dropped=1, frames_sent=300,
        silence_frames_inserted=5, first_frame_latency_ms=(100.0, 40.0), depth_samples=4, depth_min=3,
        depth_mean=4.5, depth_p95=6, depth_max=6, pause_durations_ms=(60.0,), barge_ins=2,
    )
    assert numbers.first_frame_p50_ms == 40.0
    assert numbers.first_frame_max_ms == 100.0


def test_hints_take_the_params_the_composition_root_built():
    settings, _ = parse_settings({"streaming": {"fallback_timeout_ms": 3000}}, env={})
    hint = only(tuning_hints(clean(fallbacks=1), build_stream_params(settings)))
    assert (hint.key, hint.current, hint.suggested) == ("streaming.fallback_timeout_ms", 3000, 4500)


def test_format_hints_joins_hints_on_one_line():
    hints = [
        Hint("streaming.min_start_ms", 120, 260, "2 pauses"),
        Hint(None, None, None, "check the provider"),
    ]
    assert format_hints(hints) == "streaming.min_start_ms 120 -> 260: 2 pauses | check the provider"


@pytest.mark.parametrize("latencies, p50", [((), None), ((5.0,), 5.0), ((1.0, 9.0), 1.0), ((3.0, 1.0, 2.0), 2.0)])
def test_first_frame_p50_is_nearest_rank(latencies, p50):
    assert CallStreamingNumbers(first_frame_latency_ms=latencies).first_frame_p50_ms == p50
