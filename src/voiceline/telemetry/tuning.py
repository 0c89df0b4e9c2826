"""Per-call tuning hints for the outbound streaming settings.

``tuning_hints(numbers, params)`` is a pure function of one call's streaming
numbers and the ``StreamParams`` the call ran with (the one object the streaming
core itself uses, so a hint reasons with the same frame counts the stream did). It answers "should I change
``streaming.*`` after this call, and to what?" with computed values and a
one-sentence reason each, so an operator can act on a single call's log line.

How each rule reasons (``low_watermark_ms`` is one frame by default, so a pause
means a tick found nothing to send; see ``streaming_playback_manager``):

* **pauses** — a paused turn resumes once ``min_start_ms`` is queued again, so a
  pause of ``P`` ms comes from a provider stall of at most ``min_start + P``. A
  cushion of ``min_start + P_longest`` would have absorbed the worst stall:
  suggest that, rounded up to a whole frame and capped (``MAX_MIN_START_MS`` and
  below ``fallback_timeout_ms``), because every ms of cushion is first-frame
  latency for a real-time provider. Without per-pause durations the mean pause is
  estimated from the silence inserted inside speech.
* **lower min_start** — only when the call was otherwise clean. The lowest depth
  seen while turns played (``depth_min``) is the part of the cushion the
  provider's jitter never touched: lowering ``min_start`` by that much, less the
  low watermark and one frame of margin, would still never have paused. It is
  only worth saying when it saves real first-frame latency: a provider far ahead
  of real time fills ``min_start`` with its first chunk, so its latency is ~0 and
  a lower value would gain nothing even though its depth stays high.
* **slow start** — first-frame latency is measured from the turn's first chunk,
  so it is about ``min_start`` for a real-time provider; far above that, the
  provider delivers the start of its answers slower than real time.
* **fallbacks** — a turn stalled for ``fallback_timeout_ms`` and was played from
  a file: either the provider is broken or it is slow under load.
* **late chunks** — chunks arriving after ``provider_grace_ms``. Stragglers of a
  turn cut by barge-in are counted the same way and are expected, so the rule is
  skipped for calls with barge-ins (the counters cannot tell them apart).
* **restarts** — 0 by construction; anything else is an engine bug.

A call that needs no change gets exactly one hint with ``key=None`` saying why.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from voiceline.core.stream_params import StreamParams

__all__ = [
    "CallStreamingNumbers",
    "Hint",
    "format_hints",
    "tuning_hints",
]

# Cushion beyond this is latency every real-time turn pays; longer stalls are a
# provider problem rather than something to buffer around.
MAX_MIN_START_MS = 500
# A longer stall timeout leaves the caller in dead air longer than a person waits.
MAX_FALLBACK_TIMEOUT_MS = 10_000
FALLBACK_TIMEOUT_STEP_MS = 500
FALLBACK_TIMEOUT_FACTOR = 1.5
# Late chunks say nothing about how late they were: double the grace per call.
MAX_PROVIDER_GRACE_MS = 2000
PROVIDER_GRACE_STEP_MS = 100
# Lowering min_start is only advised on enough evidence and for a real gain.
MIN_DEPTH_SAMPLES_TO_LOWER = 50  # one second of playback at 20 ms frames
MIN_GAIN_FRAMES_TO_LOWER = 2
# First-frame latency this far above min_start means a slow provider start.
SLOW_START_MARGIN_MS = 100


@dataclass(frozen=True)
class Hint:
    """One suggestion. ``key`` is the config key to change, or None for advice
    that no setting fixes (provider trouble, a bug, or "no change needed")."""

    key: str | None
    current: int | None
    suggested: int | None
    reason: str


@dataclass(frozen=True)
class CallStreamingNumbers:
    """One call's streaming outcome, as the hints need it.

    Depths are whole frames sampled once per tick while a turn played with the
    provider still sending. ``pause_durations_ms`` holds one entry per resumed
    pause (``StreamingResumed.paused_ms``) when the caller collected them.
    """

    turns: int = 0
    pauses: int = 0
    restarts: int = 0
    fallbacks: int = 0
    late_chunks_dropped: int = 0
    frames_sent: int = 0
    silence_frames_inserted: int = 0
    first_frame_latency_ms: tuple[float, ...] = ()
    depth_samples: int = 0
    depth_min: int | None = None
    depth_mean: float | None = None
    depth_p95: int | None = None
    depth_max: int | None = None
    pause_durations_ms: tuple[float, ...] = ()
    barge_ins: int = 0

    @classmethod
    def from_stats(
        cls,
        stats: Mapping[str, Any],
        *,
        pause_durations_ms: Iterable[float] = (),
        barge_ins: int = 0,
    ) -> CallStreamingNumbers:
        """Build from ``StreamStats.as_dict()`` (also as stored in call history)."""
        depth = stats.get("depth") or {}
        return cls(
            turns=int(stats.get("turns", 0)),
            pauses=int(stats.get("pauses", 0)),
            restarts=int(stats.get("restarts", 0)),
            fallbacks=int(stats.get("fallbacks", 0)),
            late_chunks_dropped=int(stats.get("late_chunks_dropped", 0)),
            frames_sent=int(stats.get("frames_sent", 0)),
            silence_frames_inserted=int(stats.get("silence_frames_inserted", 0)),
            first_frame_latency_ms=tuple(float(v) for v in stats.get("first_frame_latency_ms", ())),
            depth_samples=int(depth.get("samples") or 0),
            depth_min=depth.get("min"),
            depth_mean=depth.get("mean"),
            depth_p95=depth.get("p95"),
            depth_max=depth.get("max"),
            pause_durations_ms=tuple(float(v) for v in pause_durations_ms),
            barge_ins=barge_ins,
        )

    @property
    def first_frame_p50_ms(self) -> float | None:
        return _nearest_rank(self.first_frame_latency_ms, 50)

    @property
    def first_frame_max_ms(self) -> float | None:
        return max(self.first_frame_latency_ms) if self.first_frame_latency_ms else None


def tuning_hints(numbers: CallStreamingNumbers, params: StreamParams) -> list[Hint]:
    """Every hint that applies, most urgent first; exactly one hint if none does."""
    hints: list[Hint] = []
    for rule in (_restarts, _fallbacks, _pauses, _late_chunks, _slow_start):
        hint = rule(numbers, params)
        if hint is not None:
            hints.append(hint)
    if not hints:
        hints.append(_lower_min_start(numbers, params) or _no_change(numbers, params))
    return hints


def format_hints(hints: Sequence[Hint]) -> str:
    """One line for the call summary log and the history record."""
    return " | ".join(_format_hint(h) for h in hints)


# ---- rules ------------------------------------------------------------------------


def _restarts(n: CallStreamingNumbers, p: StreamParams) -> Hint | None:
    if n.restarts <= 0:
        return None
    return Hint(
        None, None, None,
        f"a turn's stream started more than once ({n.restarts}x), which the engine never"
        " should: please report this call id with its logs as a bug",
    )


def _fallbacks(n: CallStreamingNumbers, p: StreamParams) -> Hint | None:
    current = p.fallback_timeout_ms
    if n.fallbacks <= 0 or current <= 0:  # a disabled timeout never falls back
        return None
    suggested = min(
        _round_up(current * FALLBACK_TIMEOUT_FACTOR, FALLBACK_TIMEOUT_STEP_MS), MAX_FALLBACK_TIMEOUT_MS
    )
    if suggested <= current:
        return Hint(
            None, current, None,
            f"{n.fallbacks} turn(s) stalled for fallback_timeout_ms ({current} ms, already at the"
            f" {MAX_FALLBACK_TIMEOUT_MS} ms limit) and were played from file: check the provider",
        )
    return Hint(
        "streaming.fallback_timeout_ms", current, suggested,
        f"{n.fallbacks} turn(s) stalled for {current} ms and were played from file: check the"
        f" provider, or if it is only slow under load raise fallback_timeout_ms to {suggested} ms",
    )


def _pauses(n: CallStreamingNumbers, p: StreamParams) -> Hint | None:
    if n.pauses <= 0:
        return None
    if not n.pause_durations_ms and n.silence_frames_inserted == 0:
        # Paused and never resumed: the provider stopped sending without closing its
        # turn (echo after the caller went quiet, a stall that fell back). No gap was
        # heard inside speech, so buffering more would not have helped.
        return None
    current = p.min_start_ms
    if n.pause_durations_ms:
        stall_ms = max(n.pause_durations_ms)
        measured = f"longest pause {stall_ms:.0f} ms"
    else:
        stall_ms = n.silence_frames_inserted * p.chunk_size_ms / n.pauses
        measured = f"mean pause {stall_ms:.0f} ms from inserted silence"
    cap = MAX_MIN_START_MS
    if p.fallback_timeout_ms:
        # The config requires min_start < fallback_timeout by at least a frame.
        cap = min(cap, p.fallback_timeout_ms - p.chunk_size_ms)
    cap = _round_down(cap, p.chunk_size_ms)
    # At least one frame more: a pause with no measurable length still ran dry.
    wanted = _round_up(current + max(stall_ms, p.chunk_size_ms), p.chunk_size_ms)
    suggested = min(wanted, cap)
    if suggested <= current:
        return Hint(
            None, current, None,
            f"{n.pauses} pause(s) in agent speech ({measured}) with min_start_ms already at"
            f" {current} ms: the provider stalls longer than buffering should hide, check it",
        )
    capped = f", capped at {cap} ms" if suggested < wanted else ""
    return Hint(
        "streaming.min_start_ms", current, suggested,
        f"{n.pauses} pause(s) in agent speech ({measured}): a {suggested} ms cushion would"
        f" absorb that stall{capped}",
    )


def _late_chunks(n: CallStreamingNumbers, p: StreamParams) -> Hint | None:
    if n.late_chunks_dropped <= 0 or n.barge_ins > 0:
        return None
    current = p.provider_grace_ms
    suggested = min(
        _round_up(max(current * 2, PROVIDER_GRACE_STEP_MS), PROVIDER_GRACE_STEP_MS), MAX_PROVIDER_GRACE_MS
    )
    if suggested <= current:
        return Hint(
            None, current, None,
            f"{n.late_chunks_dropped} chunk(s) arrived more than {current} ms after their turn"
            " ended and were dropped: check the provider's end-of-turn marker",
        )
    return Hint(
        "streaming.provider_grace_ms", current, suggested,
        f"{n.late_chunks_dropped} chunk(s) arrived more than {current} ms after their turn"
        f" ended and were dropped: raise provider_grace_ms to {suggested} ms",
    )


def _slow_start(n: CallStreamingNumbers, p: StreamParams) -> Hint | None:
    p50 = n.first_frame_p50_ms
    if p50 is None or p50 <= p.min_start_ms + SLOW_START_MARGIN_MS:
        return None
    return Hint(
        None, None, None,
        f"first frame p50 {p50:.0f} ms is well above min_start_ms {p.min_start_ms} ms: the"
        " provider delivers the start of its answers slower than real time, check it",
    )


def _lower_min_start(n: CallStreamingNumbers, p: StreamParams) -> Hint | None:
    p50 = n.first_frame_p50_ms
    if n.depth_min is None or p50 is None or n.depth_samples < MIN_DEPTH_SAMPLES_TO_LOWER:
        return None
    frame = p.chunk_size_ms
    low_frames = p.frames(p.low_watermark_ms)
    current_frames = p.frames(p.min_start_ms)
    unused_frames = n.depth_min - low_frames - 1  # keep one frame of margin
    floor_frames = low_frames + 1  # the config requires min_start above the watermark
    suggested_frames = max(floor_frames, current_frames - max(unused_frames, 0))
    saved_ms = min((current_frames - suggested_frames) * frame, p50)
    if saved_ms < MIN_GAIN_FRAMES_TO_LOWER * frame:
        return None
    suggested = suggested_frames * frame
    return Hint(
        "streaming.min_start_ms", p.min_start_ms, suggested,
        f"no pauses and the buffer never fell below {n.depth_min} frames while turns played:"
        f" {suggested} ms would still not pause and saves about {saved_ms:.0f} ms of first-frame"
        " latency",
    )


def _no_change(n: CallStreamingNumbers, p: StreamParams) -> Hint:
    if n.turns == 0 or n.frames_sent == 0:
        return Hint(None, None, None, "no change needed: no agent audio was streamed in this call")
    p50 = n.first_frame_p50_ms
    latency = f", first frame p50 {p50:.0f} ms" if p50 is not None else ""
    depth = f", buffer never below {n.depth_min} frames" if n.depth_min is not None else ""
    stragglers = (
        f"; {n.late_chunks_dropped} late chunk(s) follow barge-ins, as expected"
        if n.late_chunks_dropped and n.barge_ins
        else ""
    )
    return Hint(
        None, None, None,
        f"no change needed: {n.turns} turn(s) played without pauses or fallbacks{latency}{depth}"
        f"{stragglers}",
    )


# ---- helpers ----------------------------------------------------------------------


def _format_hint(hint: Hint) -> str:
    if hint.key is None:
        return hint.reason
    return f"{hint.key} {hint.current} -> {hint.suggested}: {hint.reason}"


def _round_up(value: float, step: int) -> int:
    return int(math.ceil(value / step - 1e-9) * step)


def _round_down(value: float, step: int) -> int:
    return int(math.floor(value / step + 1e-9) * step)


def _nearest_rank(values: Sequence[float], percentile: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(percentile / 100 * len(ordered)))
    return ordered[rank - 1]
