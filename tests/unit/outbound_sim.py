"""Fake-clock driver for OutboundStream tests (shared by the test_outbound_stream* files).

Ticks happen at ``k * 20 ms``; provider actions scheduled at or before a tick's
time are applied before that tick. Audio is random bytes, so no 20 ms frame of it
can be mistaken for silence, and "audio frame" is read from the stream's own
``frames_sent`` counter, not guessed from content.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from voiceline.audio.formats import SLIN_8K, AudioFormat
from voiceline.core.outbound_stream import OutboundStream
from voiceline.core.stream_events import FlushResult, StreamEvent


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
