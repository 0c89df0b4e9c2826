"""The barge-in bench's interruptions: the plan (phrase, level, timing), one interruption as a
call on a simulated Asterisk leg, what the caller leg heard, and the engine's log captured
per call."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benchkit import FRAME_BYTES, FRAME_MS, FRAME_S, RATE, ZERO_FRAME

from voiceline.app import App
from voiceline.sim.audiosocket_caller import CallerLeg
from voiceline.sim.speech import synthesize


PHRASES = (
    "Sorry to interrupt, I need to change my booking please.",
    "Wait, stop, I have a question.",
    "Hold on a second please.",
    "Excuse me, can I talk to a person?",
)
LEVELS = (2000, 2500, 3000, 3500, 4000)  # active RMS of the caller's phrase (16-bit)

ONSET_RMS = 500.0  # caller frame that counts as the start of the interruption
AGENT_RMS = 300.0  # received frame that counts as agent speech
FIRST_PAUSE_GAP_S = 0.12  # agent silence that counts as a pause (shorter dips are between words)
# The simulator answers the caller only after 600 ms without speech (its detector's
# end_ms) plus think time: agent audio sooner after the caller's last voiced frame
# cannot be the answer.
ANSWER_FLOOR_S = 0.6
VOICED_RMS = 30.0  # phrase frames above this may count as voiced for the simulator


def rms(pcm: bytes) -> float:
    x = np.frombuffer(pcm[: len(pcm) & ~1], dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(x * x))) if x.size else 0.0


class LogCapture(io.TextIOBase):
    """The stream structlog's JSON renderer writes to: keeps every record, parsed."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self._partial = ""

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        data = self._partial + text
        *lines, self._partial = data.split("\n")
        for line in lines:
            line = line.strip()
            if not line:
                continue
            try:
                self.records.append(json.loads(line))
            except ValueError:
                self.records.append({"event": "unparsed", "text": line})
        return len(text)

    def for_call(self, call_id: str, event: str | None = None) -> list[dict[str, Any]]:
        return [
            r for r in self.records
            if r.get("call_id") == call_id and (event is None or r.get("event") == event)
        ]


# ---------------------------------------------------------------------------------------
# the interruption plan
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interruption:
    index: int
    phrase: str
    level_rms: int
    trigger_offset_ms: float  # after the first agent frame with speech energy


def make_plan(
    n: int, *, seed: int, trigger_s: float, jitter_ms: float, levels: tuple[int, ...] = LEVELS
) -> list[Interruption]:
    rng = random.Random(seed)
    plan = []
    for i in range(n):
        plan.append(
            Interruption(
                index=i,
                phrase=PHRASES[i % len(PHRASES)],
                level_rms=levels[rng.randrange(len(levels))],
                trigger_offset_ms=round(trigger_s * 1000 + rng.uniform(-jitter_ms, jitter_ms), 1),
            )
        )
    return plan


def phrase_frames(text: str, level_rms: float) -> list[bytes]:
    """The phrase as 20 ms frames, scaled so its active frames (RMS > 500) have ``level_rms``."""
    pcm = np.frombuffer(synthesize(text, RATE), dtype="<i2").astype(np.float64)
    pad = (-len(pcm)) % (FRAME_BYTES // 2)
    pcm = np.concatenate([pcm, np.zeros(pad)])
    frames = pcm.reshape(-1, FRAME_BYTES // 2)
    frame_rms = np.sqrt(np.mean(frames * frames, axis=1))
    active = frames[frame_rms > ONSET_RMS]
    gain = level_rms / float(np.sqrt(np.mean(active * active)))
    scaled = np.clip(frames * gain, -32768, 32767).astype("<i2")
    return [row.tobytes() for row in scaled]


# ---------------------------------------------------------------------------------------
# one interruption
# ---------------------------------------------------------------------------------------


@dataclass
class Row:
    config: str
    index: int
    call_id: str
    phrase: str
    level_rms: int
    trigger_offset_ms: float
    error: str | None = None
    first_agent_ms: float | None = None  # connect -> first agent frame with speech energy
    onset_after_agent_ms: float | None = None  # how far into the agent's speech the caller cut in
    phrase_ms: float | None = None
    reaction_ms: float | None = None  # caller leg: first pause - onset
    # Caller leg: the last loud agent frame before the answer - onset. Equals
    # reaction_ms unless agent speech came back after the first pause (resumed_frames).
    final_stop_ms: float | None = None
    agent_silent_at_onset: bool = False  # the agent was already in a pause at the onset
    agent_frames_after_onset: int = 0  # loud agent frames heard between onset and stop
    resumed_frames: int = 0  # loud agent frames after the stop, before the answer could start
    answer_heard_ms: float | None = None  # phrase end -> first agent frame of the answer
    engine_reaction_ms: list[float] = field(default_factory=list)
    barge_ins: int = 0  # barge_in log lines for this call
    barge_in_sources: dict[str, int] = field(default_factory=dict)
    session_barge_ins: int | None = None  # conversation.barge_ins before hang-up
    barge_in_attempts: int | None = None
    missed: bool = False  # the engine never confirmed a barge-in for this interruption
    soft_pauses: int = 0  # timeline soft_pause events
    soft_resumes: int = 0  # timeline soft_resume events (engine-side false resumes)
    provider_heard_caller: bool = False  # a user transcript came back from the provider
    end_reason: str | None = None
    # Evidence, in ms relative to the onset: arrival of each loud agent frame from 200 ms
    # before the onset until the answer could start, and the engine's discrete timeline
    # events (approximate: the engine's timeline starts when it accepted the leg).
    heard_ms: list[int] = field(default_factory=list)
    engine_events_ms: list[list[Any]] = field(default_factory=list)


def answer_start(row: Row, onset: float, speech_end: float) -> tuple[float, bool]:
    """Earliest arrival time that can belong to the agent's answer to the interruption.

    From the engine's timeline when it has one: the first ``agent_on`` after its
    barge-in (less 20 ms for the timeline's approximate alignment). Otherwise the
    simulator's own floor: it answers no sooner than 600 ms after the caller's last
    voiced frame (its end-of-speech hangover). The flag: the time is the engine's."""
    barge = next((t for t, kind, _ in row.engine_events_ms if kind == "barge_in"), None)
    if barge is not None:
        on = next((t for t, kind, _ in row.engine_events_ms if kind == "agent_on" and t > barge), None)
        if on is not None:
            return onset + (on - 20) / 1000, True
    return speech_end + ANSWER_FLOOR_S, False


def caller_analysis(row: Row, leg: CallerLeg, connected_at: float, onset: float, speech_end: float) -> None:
    loud = sorted(f.at for f in leg.audio_frames() if rms(f.payload) > AGENT_RMS)
    if not loud:
        row.error = "no agent audio received"
        return
    row.first_agent_ms = round((loud[0] - connected_at) * 1000, 1)
    row.onset_after_agent_ms = round((onset - loud[0]) * 1000, 1)
    # The first pause: the last loud frame before the first gap of >= 120 ms that is
    # not entirely over before the onset.
    stop = None
    for t, nxt in zip(loud, [*loud[1:], float("inf")]):
        if nxt - t >= FIRST_PAUSE_GAP_S and nxt > onset:
            stop = t
            break
    if stop is None:  # unreachable: the last loud frame is followed by an infinite gap
        row.error = "no agent stop found"
        return
    row.agent_silent_at_onset = stop < onset
    row.reaction_ms = round(max(0.0, stop - onset) * 1000, 1)
    row.agent_frames_after_onset = sum(1 for t in loud if onset <= t <= stop)
    answer_at, answered = answer_start(row, onset, speech_end)
    row.resumed_frames = sum(1 for t in loud if stop < t < answer_at)
    final = max((t for t in loud if t < answer_at), default=stop)
    row.final_stop_ms = round(max(0.0, final - onset) * 1000, 1)
    row.heard_ms = [round((t - onset) * 1000) for t in loud if onset - 0.2 <= t < answer_at]
    answer = [t for t in loud if t >= answer_at]
    if answer and answered:
        row.answer_heard_ms = round((answer[0] - speech_end) * 1000, 1)


async def run_interruption(
    app: App, capture: LogCapture, config: str, item: Interruption, *, tail_s: float, agent_timeout_s: float
) -> Row:
    assert app.audiosocket is not None and app.engine is not None
    leg = CallerLeg("127.0.0.1", app.audiosocket.bound_port)
    row = Row(config, item.index, leg.call_uuid, item.phrase, item.level_rms, item.trigger_offset_ms)
    frames = phrase_frames(item.phrase, item.level_rms)
    row.phrase_ms = len(frames) * FRAME_MS
    await leg.connect()
    connected_at = time.monotonic()
    start = connected_at
    tick = 0
    scanned = 0
    first_agent: float | None = None
    trigger: float | None = None
    phrase_pos: int | None = None
    onset: float | None = None
    phrase_end: float | None = None
    speech_end: float | None = None
    while True:
        now = time.monotonic()
        if first_agent is None:
            received = leg.received
            for f in received[scanned:]:
                if 0x10 <= f.kind <= 0x18 and rms(f.payload) > AGENT_RMS:
                    first_agent = f.at
                    trigger = first_agent + item.trigger_offset_ms / 1000
                    break
            scanned = len(received)
            if first_agent is None and now - start > agent_timeout_s:
                row.error = f"no agent audio within {agent_timeout_s:.0f} s"
                break
        if leg.closed_reason is not None:
            row.error = f"leg closed early: {leg.closed_reason}"
            break
        if phrase_pos is None and trigger is not None and now >= trigger:
            phrase_pos = 0
        frame = ZERO_FRAME
        if phrase_pos is not None and phrase_pos < len(frames):
            frame = frames[phrase_pos]
            phrase_pos += 1
            if onset is None and rms(frame) > ONSET_RMS:
                onset = now  # sent right now: the write below goes straight to the socket
            if rms(frame) > VOICED_RMS:
                speech_end = now + FRAME_S
            if phrase_pos == len(frames):
                phrase_end = now + FRAME_S
        await leg.play(frame, realtime=False)
        if phrase_end is not None and now >= phrase_end + tail_s:
            break
        tick += 1
        delay = start + tick * FRAME_S - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    # engine-side view of the call, before hang-up removes it
    call = app.engine.call(leg.call_uuid)
    if call is not None:
        conv = call.session.conversation
        row.session_barge_ins = conv.barge_ins
        row.barge_in_attempts = conv.barge_in_attempts
        kinds = Counter(event[1] for event in call.sink.timeline_events())
        row.soft_pauses = kinds.get("soft_pause", 0)
        row.soft_resumes = kinds.get("soft_resume", 0)
        if onset is not None:
            shift = (onset - connected_at) * 1000
            row.engine_events_ms = [
                [round(t - shift), kind, value] for t, kind, value in call.sink.timeline_events()
                if kind not in ("depth", "caller_energy")
            ]
    with contextlib.suppress(OSError):  # the engine may have closed the leg first
        await leg.hangup()
    deadline = time.monotonic() + 5.0
    while app.engine.call(leg.call_uuid) is not None and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    for _ in range(50):  # the call_summary is logged as the call ends
        if capture.for_call(leg.call_uuid, "call_summary"):
            break
        await asyncio.sleep(0.02)

    events = capture.for_call(leg.call_uuid, "barge_in")
    row.barge_ins = len(events)
    row.barge_in_sources = dict(Counter(str(e.get("source")) for e in events))
    row.engine_reaction_ms = [float(e["reaction_ms"]) for e in events if e.get("reaction_ms") is not None]
    if row.error is None and onset is not None and speech_end is not None and phrase_end is not None:
        caller_analysis(row, leg, connected_at, onset, speech_end)
        row.missed = row.barge_ins == 0
    elif row.error is None:
        row.error = "phrase not sent"
    row.provider_heard_caller = any(
        e.get("role") == "user" for e in capture.for_call(leg.call_uuid, "transcript")
    )
    summary = capture.for_call(leg.call_uuid, "call_summary")
    row.end_reason = summary[-1].get("end_reason") if summary else None
    return row
