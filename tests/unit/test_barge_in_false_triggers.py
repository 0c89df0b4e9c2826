"""CI suite: what comes back up the line while the agent talks must not barge in.

Every case plays a 10 s synthesized agent sentence through a closed loop built like the
engine: in each 20 ms slot the "engine" sends an agent frame (or silence while
soft-paused, nothing after a flush or the end of the turn), the "line" returns the
agent's own audio as echo (attenuated, delayed, G.711 μ-law coded together with
whatever else is on the line), and the inbound frame goes to ``BargeInDetector.feed``
with the frame sent in that slot as ``reference``, exactly what the engine passes.
Before playback the detector hears 1 s of the line alone (the engine feeds every
inbound frame), which is where its noise floor comes from.

Each case has a positive control: the same line plus a caller interrupting at a
normal level (active speech RMS 2000, i.e. RMS over the frames within 40 dB of the
loudest) that must still be CONFIRMED within min_ms + 100 ms of the caller's onset
(the first frame where the clean caller signal reaches energy_threshold). The table
also shows when the agent went quiet: onset -> SOFT_PAUSE, which is what the caller
hears as the agent yielding.

``pytest -s`` prints the measured table.

Echo handling limit (documented, not hidden): the echo test assumes the line's echo
return loss is at least ~8 dB. -10 dB echo never qualifies as speech; -6 dB echo
occasionally produces a SOFT_PAUSE + RESUME (the agent is silenced for < 260 ms) but
never a confirmation (``test_echo_beyond_the_design_limit_never_confirms``).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest

from voiceline.audio import g711
from voiceline.core.barge_in import (
    BargeInDetector,
    BargeInParams,
    BargeInStats,
    Decision,
)
from voiceline.sim.speech import synthesize

pytestmark = pytest.mark.espeak  # caller and agent speak with espeak-ng

RATE = 8000
FRAME = 160  # samples per 20 ms frame
FRAME_MS = 20
LEAD_IN_FRAMES = 50  # the line before the agent talks
TAIL_FRAMES = 20  # the line after the agent's last frame (its echo still arrives)
AGENT_SECONDS = 10.0
AGENT_TEXT = (
    "Thank you for calling the voiceline support desk. I can help you with your account, your recent "
    "orders, delivery questions and billing. Please tell me in a few words what you are calling about today."
)
CALLER_LEVEL = 2000.0
# (text, voice, onset into playback in seconds): three voices, three places in the agent's sentence
CALLERS = (
    ("Wait, stop, that is not what I asked for.", "en-us+f3", 1.5),
    ("No no, I want to cancel my order.", "en-us+m3", 4.2),
    ("Hold on a second please.", "en-us", 6.1),
)

D = Decision


# ---- the line ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LineCase:
    name: str
    echo_db: float | None = None  # echo level relative to what the agent sent
    echo_delay_ms: int = 45
    noise: str | None = None  # "white", "pink" (telephone band 300-3400 Hz), "pink-fullband"
    noise_rms: float = 0.0
    clicks_s: tuple[float, ...] = ()  # 5 ms full-scale impulse at these times into playback
    knocks_s: tuple[float, ...] = ()  # 40 ms door knock at these times into playback
    impulsive: bool = False  # allowed one SOFT_PAUSE + RESUME per impulse, never a confirm
    # False where the line is too noisy for a caller at CALLER_LEVEL to be told apart
    positive_control: bool = True


ECHO_CASES = [
    LineCase(f"echo {db} dB @{ms} ms", echo_db=db, echo_delay_ms=ms) for db in (-15, -10) for ms in (30, 45, 60)
]
NOISE_CASES = [
    LineCase("white 300", noise="white", noise_rms=300),
    LineCase("white 800", noise="white", noise_rms=800),
    LineCase("pink 300", noise="pink", noise_rms=300),
    LineCase("pink 800", noise="pink", noise_rms=800),
    LineCase("pink 800 full band", noise="pink-fullband", noise_rms=800),
    LineCase("white 800 + echo -15", noise="white", noise_rms=800, echo_db=-15),
    LineCase("pink 800 + echo -15", noise="pink", noise_rms=800, echo_db=-15),
    LineCase("pink 800 + echo -10 @60", noise="pink", noise_rms=800, echo_db=-10, echo_delay_ms=60),
    # Above energy_threshold: only the noise floor holds these back (without it RMS
    # 1000 white noise confirmed). A caller at RMS 2000 is < 3 dB above this noise, so
    # no positive control.
    LineCase("white 1500 (noisy line)", noise="white", noise_rms=1500, positive_control=False),
    LineCase("pink 1500 + echo -15 (noisy line)", noise="pink", noise_rms=1500, echo_db=-15, positive_control=False),
]
IMPULSE_CASES = [
    LineCase("click in agent speech", clicks_s=(1.0,), impulsive=True),
    LineCase("click in agent pause", clicks_s=(3.55,), impulsive=True),
    LineCase("knock in agent speech", knocks_s=(1.0,), impulsive=True),
    LineCase("knock in agent pause", knocks_s=(3.55,), impulsive=True),
    LineCase("click + echo -15", clicks_s=(2.0,), echo_db=-15, impulsive=True),
    LineCase("knock + echo -15", knocks_s=(2.0,), echo_db=-15, impulsive=True),
    LineCase(
        "clicks, knocks, pink 500, echo -15",
        clicks_s=(1.2, 6.0),
        knocks_s=(2.5, 8.0),
        noise="pink",
        noise_rms=500,
        echo_db=-15,
        impulsive=True,
    ),
]
ALL_CASES = ECHO_CASES + NOISE_CASES + IMPULSE_CASES


def _telephone_band(x: np.ndarray) -> np.ndarray:
    spectrum = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(len(x), 1 / RATE)
    spectrum[(freqs < 300) | (freqs > 3400)] = 0
    return np.fft.irfft(spectrum, len(x))


def _noise(kind: str, rms: float, n: int, rng: np.random.Generator) -> np.ndarray:
    white = rng.normal(0.0, 1.0, n)
    if kind == "white":
        shaped = white
    else:
        spectrum = np.fft.rfft(white)
        bins = np.arange(len(spectrum), dtype=np.float64)
        bins[0] = 1.0
        shaped = np.fft.irfft(spectrum / np.sqrt(bins), n)  # 1/f power
        if kind == "pink":
            shaped = _telephone_band(shaped)
    return shaped * (rms / np.sqrt(np.mean(shaped**2)))


def _click() -> np.ndarray:
    return np.full(RATE * 5 // 1000, 32767.0)


def _knock(rng: np.random.Generator) -> np.ndarray:
    """40 ms: a damped low thump plus a short broadband crack."""
    t = np.arange(RATE * 40 // 1000) / RATE
    return 20000 * np.exp(-t / 0.012) * np.sin(2 * np.pi * 180 * t) + rng.normal(0, 3000, len(t)) * np.exp(-t / 0.005)


def background(case: LineCase, n: int) -> np.ndarray:
    """Everything on the line except echo and caller speech, with the lead-in first."""
    # crc32, not hash(): str hashes change from run to run
    rng = np.random.default_rng(zlib.crc32(case.name.encode()))
    x = np.zeros(n)
    if case.noise is not None:
        x += _noise(case.noise, case.noise_rms, n, rng)
    lead_in = LEAD_IN_FRAMES * FRAME
    for at in case.clicks_s:
        click = _click()
        start = lead_in + int(at * RATE)
        x[start : start + len(click)] += click
    for at in case.knocks_s:
        knock = _knock(rng)
        start = lead_in + int(at * RATE)
        x[start : start + len(knock)] += knock
    return x


# ---- audio -------------------------------------------------------------------------------------


def pcm(text: str, voice: str = "en-us") -> np.ndarray:
    return np.frombuffer(synthesize(text, RATE, voice=voice), dtype="<i2").astype(np.float64)


def frame_rms(x: np.ndarray) -> np.ndarray:
    frames = x[: len(x) // FRAME * FRAME].reshape(-1, FRAME)
    return np.sqrt(np.mean(frames**2, axis=1))


def caller_speech(text: str, voice: str) -> np.ndarray:
    """The phrase from its first sound, scaled to an active speech level of CALLER_LEVEL."""
    x = pcm(text, voice)
    levels = frame_rms(x)
    x = x[int(np.argmax(levels >= 0.01 * levels.max())) * FRAME :]
    levels = frame_rms(x)
    active = levels >= 0.01 * levels.max()
    return x * (CALLER_LEVEL / np.sqrt(np.mean(levels[active] ** 2)))


_AGENT_CACHE: list[np.ndarray] = []


def agent_frames() -> list[bytes]:
    if not _AGENT_CACHE:
        audio = pcm(AGENT_TEXT)
        assert len(audio) >= AGENT_SECONDS * RATE
        _AGENT_CACHE.append(audio[: int(AGENT_SECONDS * RATE)])
    audio = np.clip(_AGENT_CACHE[0], -32768, 32767).astype("<i2")
    return [audio[i : i + FRAME].tobytes() for i in range(0, len(audio) - FRAME + 1, FRAME)]


def through_the_line(x: np.ndarray) -> bytes:
    """slin16 as it reaches us from a G.711 μ-law phone line."""
    clipped = np.clip(np.round(x), -32768, 32767).astype("<i2").tobytes()
    return g711.mulaw_to_slin(g711.slin_to_mulaw(clipped))


# ---- the closed loop ---------------------------------------------------------------------------


@dataclass
class Outcome:
    decisions: list[Decision]  # slot 0 = first frame after playback_started
    stats: BargeInStats
    agent_frames_played: int
    agent_frames_total: int
    confirm_slot: int | None = None
    soft_slots: list[int] = field(default_factory=list)
    resume_slots: list[int] = field(default_factory=list)


def simulate(case: LineCase, params: BargeInParams, caller: tuple[np.ndarray, float] | None = None) -> Outcome:
    agent = agent_frames()
    slots = len(agent) + TAIL_FRAMES
    total = (LEAD_IN_FRAMES + slots) * FRAME
    line = background(case, total)
    if caller is not None:
        speech, onset_s = caller
        start = (LEAD_IN_FRAMES * FRAME) + int(onset_s * RATE)
        line[start : start + len(speech)] += speech[: total - start]
    delay = int(RATE * case.echo_delay_ms / 1000)
    sent = np.zeros(slots * FRAME + delay)  # what the engine sent, already shifted by the echo delay
    echo_gain = 0.0 if case.echo_db is None else 10 ** (case.echo_db / 20)

    detector = BargeInDetector(params)
    for k in range(LEAD_IN_FRAMES):
        inbound = through_the_line(line[k * FRAME : (k + 1) * FRAME])
        assert detector.feed(inbound, (k - LEAD_IN_FRAMES) * FRAME_MS / 1000) is D.NONE
    detector.playback_started(0.0)
    outcome = Outcome([], detector.stats, 0, len(agent))
    playing, paused, position = True, False, 0
    for k in range(slots):
        now = (k + 1) * FRAME_MS / 1000
        reference: bytes | None = None
        if playing and not paused:
            if position < len(agent):
                reference = agent[position]
                position += 1
                sent[delay + k * FRAME : delay + (k + 1) * FRAME] = np.frombuffer(reference, dtype="<i2")
            else:
                playing = False  # the turn is over
                detector.playback_stopped(now)
        offset = (LEAD_IN_FRAMES + k) * FRAME
        inbound = through_the_line(line[offset : offset + FRAME] + echo_gain * sent[k * FRAME : (k + 1) * FRAME])
        decision = detector.feed(inbound, now, reference=reference)
        outcome.decisions.append(decision)
        if decision is D.SOFT_PAUSE:
            paused = True
            outcome.soft_slots.append(k)
        elif decision is D.RESUME:
            paused = False
            outcome.resume_slots.append(k)
        elif decision is D.CONFIRMED:
            outcome.confirm_slot = k
            playing, paused = False, False  # flush
            detector.playback_stopped(now)
            if caller is not None:
                break  # nothing more to learn from a positive control
    outcome.agent_frames_played = position
    return outcome


def caller_onset_slot(speech: np.ndarray, onset_s: float, params: BargeInParams) -> int:
    """First slot where the clean caller signal is loud enough to be detected at all."""
    first_loud = int(np.argmax(frame_rms(speech) >= params.energy_threshold))
    return int(onset_s * RATE) // FRAME + first_loud


# ---- the table ---------------------------------------------------------------------------------

TABLE: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def print_table() -> Iterator[None]:
    yield
    if TABLE:
        print("\n\nbarge-in on a noisy, echoing line, default params")
        print("left: the line alone (counts); right: with a caller, ms from onset to SOFT_PAUSE/CONFIRMED")
        header = f"{'case':36s} {'soft':>4s} {'resume':>6s} {'conf':>4s} {'speech':>6s} {'echo-rej':>8s}"
        header += "  " + "  ".join(f"caller {i + 1} ms" for i in range(len(CALLERS)))
        print(header)
        print("\n".join(TABLE))


# ---- the tests ---------------------------------------------------------------------------------


def _check_negative(case: LineCase, outcome: Outcome) -> None:
    stats = outcome.stats
    assert stats.confirmed == 0, f"{case.name}: confirmed a barge-in on a line with nobody talking"
    assert outcome.agent_frames_played == outcome.agent_frames_total, "the agent was cut short"
    if case.impulsive:
        impulses = len(case.clicks_s) + len(case.knocks_s)
        assert stats.soft_pauses <= impulses
        assert stats.false_triggers == stats.soft_pauses  # every soft pause resumed
    else:
        assert stats.soft_pauses == 0, f"{case.name}: the agent was paused"
        assert stats.attempts <= 1


@pytest.mark.parametrize("case", ALL_CASES, ids=[c.name for c in ALL_CASES])
def test_line_without_caller_speech_never_confirms_and_its_positive_control_does(case: LineCase) -> None:
    params = BargeInParams()
    negative = simulate(case, params)
    _check_negative(case, negative)

    latencies: list[str] = []
    for text, voice, onset_s in CALLERS if case.positive_control else ():
        speech = caller_speech(text, voice)
        outcome = simulate(case, params, (speech, onset_s))
        onset = caller_onset_slot(speech, onset_s, params)
        assert outcome.confirm_slot is not None, f"{case.name}: {text!r} never confirmed"
        assert outcome.confirm_slot >= onset, f"{case.name}: confirmed before the caller spoke"
        latency_ms = (outcome.confirm_slot + 1 - onset) * FRAME_MS
        assert latency_ms <= params.min_ms + 100, f"{case.name}: {text!r} took {latency_ms} ms"
        soft = [slot for slot in outcome.soft_slots if slot >= onset]
        soft_ms = f"{(soft[0] + 1 - onset) * FRAME_MS:3d}" if soft else "  -"
        latencies.append(f"{soft_ms}/{latency_ms:3d}")

    s = negative.stats
    TABLE.append(
        f"{case.name:36s} {s.soft_pauses:4d} {s.false_triggers:6d} {s.confirmed:4d} {s.speech_frames:6d} "
        f"{s.echo_rejected_frames:8d}  " + ("  ".join(f"{ms:>11s}" for ms in latencies) or "(no positive control)")
    )


@pytest.mark.parametrize("delay_ms", [30, 45, 60])
def test_echo_beyond_the_design_limit_never_confirms(delay_ms: int) -> None:
    """-6 dB echo (ERL below the ~8 dB the echo test assumes): some frames pass as
    speech and may soft-pause the agent briefly, but never confirm."""
    case = LineCase(f"echo -6 dB @{delay_ms} ms (limit)", echo_db=-6, echo_delay_ms=delay_ms)
    outcome = simulate(case, BargeInParams())
    s = outcome.stats
    assert s.confirmed == 0
    assert s.false_triggers == s.soft_pauses <= 2
    assert outcome.agent_frames_played == outcome.agent_frames_total
    TABLE.append(
        f"{case.name:36s} {s.soft_pauses:4d} {s.false_triggers:6d} {s.confirmed:4d} {s.speech_frames:6d} "
        f"{s.echo_rejected_frames:8d}  (no positive control)"
    )
