"""BargeInDetector rules on synthesized speech (espeak-ng), fed as 20 ms frames with an
injected clock: frame k of a run is fed at ``now = T0 + k * 0.02``.

The echo/noise robustness suite is tests/unit/test_barge_in_false_triggers.py.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from voiceline.config import BargeInSettings
from voiceline.core.barge_in import BargeInDetector, BargeInParams, Decision
from voiceline.sim.speech import synthesize

pytestmark = pytest.mark.espeak  # caller and agent speak with espeak-ng

RATE = 8000
FRAME_S = 0.020
T0 = 100.0
AGENT_TEXT = "Thank you for calling. I can help you with your account, your orders and your billing questions today."
# Starts on a loud stressed word, no leading silence from espeak-ng.
CALLER_TEXT = "No, stop, wait a moment please."

D = Decision


def frames_of(pcm: bytes, frame_bytes: int) -> list[bytes]:
    """``pcm`` cut into frames, the last one padded with silence."""
    padded = pcm + b"\x00" * (-len(pcm) % frame_bytes)
    return [padded[i : i + frame_bytes] for i in range(0, len(padded), frame_bytes)]


def rms_of(frame: bytes) -> float:
    samples = np.frombuffer(frame, dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(samples * samples)))


def silence(params: BargeInParams) -> bytes:
    return b"\x00" * params.frame_bytes


def loud_speech_frames(params: BargeInParams, count: int) -> list[bytes]:
    """``count`` frames of loud voiced speech: the caller phrase's frames at RMS >= 2000,
    in order, repeated as needed (continuous talking without pauses)."""
    frames = [
        f for f in frames_of(synthesize(CALLER_TEXT, params.sample_rate), params.frame_bytes) if rms_of(f) >= 2000
    ]
    assert len(frames) >= 10
    return list(itertools.islice(itertools.cycle(frames), count))


class Run:
    """Feeds frames with the injected clock and records decisions; index 0 is the
    first frame after ``start_playback`` (or the first frame fed, without playback)."""

    def __init__(self, params: BargeInParams) -> None:
        self.params = params
        self.detector = BargeInDetector(params)
        self.decisions: list[Decision] = []

    def now(self, index: int) -> float:
        return T0 + index * FRAME_S

    def start_playback(self, lead_in: int = 50) -> None:
        """The engine feeds every inbound frame, so the detector has heard the line
        (silence here) before the agent starts: that is where the noise floor comes from."""
        for i in range(lead_in):
            assert self.detector.feed(silence(self.params), self.now(i - lead_in)) is D.NONE
        self.detector.playback_started(self.now(0))

    def feed(self, frame: bytes, reference: bytes | None = None) -> Decision:
        decision = self.detector.feed(frame, self.now(len(self.decisions)), reference=reference)
        self.decisions.append(decision)
        return decision

    def index_of(self, decision: Decision) -> list[int]:
        return [i for i, d in enumerate(self.decisions) if d is decision]


# ---- params ---------------------------------------------------------------------------------


def test_params_convert_ms_to_frame_counts_rounding_up() -> None:
    p = BargeInParams()
    assert (p.frame_samples, p.frame_bytes) == (160, 320)
    assert p.min_frames == 13  # 250 ms -> 12.5 -> 13
    assert (p.confirm_frames, p.allowed_misses) == (10, 3)  # ceil(0.7 * 13) = 10 of 13
    assert p.soft_pause_frames == 3
    assert p.cooldown_frames == 25
    assert p.protection_frames == 10
    assert p.echo_tail_frames == 5
    assert p.echo_ratio == pytest.approx(0.501, abs=1e-3)  # 6 dB
    wide = BargeInParams(sample_rate=16000, soft_pause_ms=0, min_ms=200, confirm_ratio=0.7)
    assert (wide.frame_bytes, wide.soft_pause_frames, wide.min_frames, wide.confirm_frames) == (640, 0, 10, 7)


def test_params_from_settings_mirror_the_config_section() -> None:
    settings = BargeInSettings(min_ms=300, energy_threshold=800, cooldown_ms=0, soft_pause_ms=0)
    p = BargeInParams.from_settings(settings, 16000, echo_margin_db=9.0)
    assert (p.sample_rate, p.min_ms, p.energy_threshold, p.cooldown_ms, p.soft_pause_ms) == (16000, 300, 800, 0, 0)
    assert (p.vad_aggressiveness, p.initial_protection_ms, p.enabled) == (2, 200, True)
    assert p.echo_margin_db == 9.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"frame_ms": 25},
        {"sample_rate": 0},
        {"sample_rate": 11025, "frame_ms": 10},  # 110.25 samples
        {"min_ms": 0},
        {"vad_aggressiveness": 4},
        {"confirm_ratio": 0.0},
        {"confirm_ratio": 1.5},
        {"cooldown_ms": -1},
        {"echo_tail_ms": -20},
    ],
)
def test_invalid_params_are_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        BargeInParams(**kwargs)  # type: ignore[arg-type]


def test_a_frame_of_the_wrong_size_is_an_error() -> None:
    detector = BargeInDetector(BargeInParams())
    with pytest.raises(ValueError, match="320 bytes"):
        detector.feed(b"\x00" * 318, T0)


# ---- the main path ------------------------------------------------------------------------


def test_caller_talking_over_the_agent_soft_pauses_then_confirms_260ms_after_onset() -> None:
    p = BargeInParams()
    run = Run(p)
    agent = frames_of(synthesize(AGENT_TEXT, RATE), p.frame_bytes)
    caller = frames_of(synthesize(CALLER_TEXT, RATE), p.frame_bytes)
    caller_start = 75  # 1.5 s into playback
    paused = False
    sent = iter(agent)
    run.start_playback()
    for k in range(caller_start + 40):
        # What the engine sends in this slot is the reference: agent audio, or nothing
        # while soft-paused / after the flush.
        reference = None if paused or run.detector.stats.confirmed else next(sent)
        frame = caller[k - caller_start] if k >= caller_start else silence(p)
        decision = run.feed(frame, reference)
        if decision is D.SOFT_PAUSE:
            paused = True
        elif decision is D.CONFIRMED:
            run.detector.playback_stopped(run.now(k))

    soft, confirmed = run.index_of(D.SOFT_PAUSE), run.index_of(D.CONFIRMED)
    assert len(soft) == 1 and len(confirmed) == 1
    assert run.index_of(D.RESUME) == []
    stats = run.detector.stats
    onset = round((stats.speech_onset - T0) / FRAME_S)
    # The caller's first, quieter frames compete with the loud agent (echo test); the
    # onset is the first frame that passes, here 80 ms into the caller's speech.
    assert caller_start <= onset <= caller_start + 5
    assert run.decisions[onset] is D.SPEECH_CANDIDATE
    assert onset + 2 <= soft[0] < confirmed[0]
    # The rule: confirmation on the min_frames-th frame of the episode, exactly.
    assert confirmed[0] == onset + p.min_frames - 1
    assert stats.confirmed_at == pytest.approx(run.now(confirmed[0]))
    # From the start of the onset frame to the end of the confirming frame: 260 ms.
    assert (confirmed[0] + 1 - onset) * 20 <= p.min_ms + 60
    # From the first caller frame: the onset delay on top, still within min_ms + 100.
    assert (confirmed[0] + 1 - caller_start) * 20 <= p.min_ms + 100
    assert (stats.attempts, stats.soft_pauses, stats.confirmed, stats.false_triggers) == (1, 1, 1, 0)
    assert stats.audio_during_tts_frames > 0
    # After the flush the detector is idle: everything is NONE again.
    assert set(run.decisions[confirmed[0] + 1 :]) == {D.NONE}


def test_continuous_speech_gives_soft_pause_on_the_third_frame_and_confirm_on_the_thirteenth() -> None:
    p = BargeInParams()
    run = Run(p)
    run.start_playback()
    for _ in range(p.protection_frames):
        run.feed(silence(p))
    for frame in loud_speech_frames(p, 20):
        run.feed(frame)
    start = p.protection_frames
    assert run.decisions[start : start + 2] == [D.SPEECH_CANDIDATE] * 2
    assert run.index_of(D.SOFT_PAUSE) == [start + 2]
    assert run.index_of(D.CONFIRMED) == [start + 12]
    assert run.detector.stats.speech_onset == pytest.approx(run.now(start))


def test_frames_inside_the_initial_protection_window_are_dropped_and_never_counted() -> None:
    p = BargeInParams()
    run = Run(p)
    run.start_playback()
    for frame in loud_speech_frames(p, 30):  # the caller talks from the first frame
        run.feed(frame)
    assert run.decisions[: p.protection_frames] == [D.DROP_PROTECTED] * 10
    assert run.detector.stats.protected_frames == 10
    # Counting starts after the window: onset at frame 10, confirmed 12 frames later.
    assert run.index_of(D.SOFT_PAUSE) == [12]
    assert run.index_of(D.CONFIRMED) == [22]
    assert run.detector.stats.speech_onset == pytest.approx(run.now(10))


def test_playback_started_again_reopens_the_protection_window() -> None:
    p = BargeInParams()
    run = Run(p)
    run.start_playback()
    for _ in range(20):
        run.feed(silence(p))
    run.detector.playback_stopped(run.now(20))
    run.detector.playback_started(run.now(20))
    speech = loud_speech_frames(p, 12)
    for frame in speech:
        run.feed(frame)
    assert run.decisions[20:30] == [D.DROP_PROTECTED] * 10
    assert run.decisions[30] is D.SPEECH_CANDIDATE


def test_cooldown_blocks_a_second_trigger_for_cooldown_ms() -> None:
    p = BargeInParams()
    run = Run(p)
    run.start_playback()
    for _ in range(p.protection_frames):
        run.feed(silence(p))
    # The engine would stop playback on CONFIRMED; here playback goes on so only the
    # cooldown stands between continuous speech and a second trigger.
    for frame in loud_speech_frames(p, 70):
        run.feed(frame)
    first, *rest = run.index_of(D.CONFIRMED)
    assert first == p.protection_frames + p.min_frames - 1
    cooldown = range(first + 1, first + 1 + p.cooldown_frames)
    assert all(run.decisions[i] is D.NONE for i in cooldown)
    # The next episode can only start on the first frame after the cooldown, so the
    # earliest second confirmation is min_frames - 1 later.
    assert rest, "speech continues after the cooldown, so it confirms again"
    assert rest[0] == first + p.cooldown_frames + p.min_frames
    assert (rest[0] - first) * 20 >= p.cooldown_ms
    assert run.detector.stats.attempts == 2


def test_a_120ms_burst_soft_pauses_then_resumes_and_counts_a_false_trigger() -> None:
    p = BargeInParams()
    run = Run(p)
    run.start_playback()
    for _ in range(p.protection_frames + 5):
        run.feed(silence(p))
    start = len(run.decisions)
    for frame in loud_speech_frames(p, 6):  # 6 x 20 ms
        run.feed(frame)
    for _ in range(20):
        run.feed(silence(p))
    # soft pause on the 3rd speech frame; the 4th silent frame after the burst is one
    # miss more than the 3 tolerated, so the episode ends there, and the agent stays
    # held for the resume hangover before RESUME
    abandoned = start + 6 + p.allowed_misses
    assert run.index_of(D.SOFT_PAUSE) == [start + 2]
    assert run.index_of(D.RESUME) == [abandoned + p.resume_hangover_frames]
    assert run.decisions[start + 3 : abandoned + p.resume_hangover_frames] == [D.SPEECH_CANDIDATE] * (
        3 + p.allowed_misses + p.resume_hangover_frames
    )
    assert run.index_of(D.CONFIRMED) == []
    stats = run.detector.stats
    assert (stats.attempts, stats.soft_pauses, stats.false_triggers, stats.confirmed) == (1, 1, 1, 0)
    assert stats.speech_onset is None  # only a confirmed episode sets it
    assert run.detector.soft_paused is False


def test_a_short_burst_without_soft_pause_is_abandoned_silently() -> None:
    p = BargeInParams(soft_pause_ms=0)
    run = Run(p)
    run.start_playback()
    for _ in range(p.protection_frames):
        run.feed(silence(p))
    for frame in loud_speech_frames(p, 6):
        run.feed(frame)
    for _ in range(10):
        run.feed(silence(p))
    assert set(run.decisions[p.protection_frames :]) == {D.SPEECH_CANDIDATE, D.NONE}
    stats = run.detector.stats
    assert (stats.attempts, stats.abandoned_candidates, stats.false_triggers) == (1, 1, 0)


def test_soft_pause_zero_confirms_without_soft_pause() -> None:
    p = BargeInParams(soft_pause_ms=0)
    run = Run(p)
    run.start_playback()
    for _ in range(p.protection_frames):
        run.feed(silence(p))
    for frame in loud_speech_frames(p, 20):
        run.feed(frame)
    assert run.index_of(D.SOFT_PAUSE) == []
    assert run.index_of(D.CONFIRMED) == [p.protection_frames + p.min_frames - 1]


def test_not_in_playback_everything_is_none_and_nothing_is_counted() -> None:
    p = BargeInParams()
    run = Run(p)
    for frame in loud_speech_frames(p, 40):
        run.feed(frame, reference=frame)
    assert set(run.decisions) == {D.NONE}
    stats = run.detector.stats
    assert (stats.audio_during_tts_frames, stats.attempts, stats.speech_frames) == (0, 0, 0)


def test_playback_stopped_mid_soft_pause_ends_the_episode_without_a_decision() -> None:
    p = BargeInParams()
    run = Run(p)
    run.start_playback()
    for _ in range(p.protection_frames):
        run.feed(silence(p))
    for frame in loud_speech_frames(p, 4):
        run.feed(frame)
    assert run.detector.soft_paused
    run.detector.playback_stopped(run.now(len(run.decisions)))
    assert not run.detector.soft_paused and run.detector.episode_onset is None
    for frame in loud_speech_frames(p, 20):
        assert run.feed(frame) is D.NONE


def test_disabled_detector_never_triggers() -> None:
    p = BargeInParams(enabled=False)
    run = Run(p)
    run.start_playback()
    for frame in loud_speech_frames(p, 40):
        run.feed(frame)
    assert set(run.decisions) == {D.NONE}


# ---- the individual tests on a frame ---------------------------------------------------------


def test_a_frame_explained_by_recent_agent_audio_is_echo_not_speech() -> None:
    p = BargeInParams(soft_pause_ms=0)
    speech = loud_speech_frames(p, 1)[0]
    loud_reference = (np.frombuffer(speech, dtype="<i2") * 1.0).astype("<i2").tobytes()

    def fed_after(reference_age: int) -> BargeInDetector:
        """The agent sent ``speech`` (as loud as the caller frame) ``reference_age``
        frames before a caller frame at half that level (-6 dB + a hair)."""
        run = Run(p)
        run.start_playback()
        for _ in range(p.protection_frames):
            run.feed(silence(p))
        run.feed(silence(p), reference=loud_reference)
        for _ in range(reference_age - 1):
            run.feed(silence(p))
        quieter = (np.frombuffer(speech, dtype="<i2") * 0.49).astype("<i2").tobytes()
        assert rms_of(quieter) >= p.energy_threshold
        run.feed(quieter)
        return run.detector

    # The echo tail covers the current slot and the 5 before it.
    for age in range(1, p.echo_tail_frames + 1):
        assert fed_after(age).stats.echo_rejected_frames == 1, age
    beyond = fed_after(p.echo_tail_frames + 1).stats
    assert (beyond.echo_rejected_frames, beyond.speech_frames) == (0, 1)


def test_quiet_speech_below_the_energy_threshold_never_counts() -> None:
    p = BargeInParams()
    run = Run(p)
    run.start_playback()
    for frame in loud_speech_frames(p, 40):
        quiet = (np.frombuffer(frame, dtype="<i2") * 0.05).astype("<i2").tobytes()
        run.feed(quiet)
    assert set(run.decisions[p.protection_frames :]) == {D.NONE}


def test_steady_noise_above_the_energy_threshold_is_held_back_by_the_noise_floor() -> None:
    p = BargeInParams()
    rng = np.random.default_rng(3)
    run = Run(p)
    noise = [rng.normal(0, 1300, p.frame_samples).astype("<i2").tobytes() for _ in range(200)]
    for frame in noise[:50]:  # the line before the agent talks
        run.feed(frame)
    run.detector.playback_started(run.now(50))
    for frame in noise[50:]:
        run.feed(frame)
    stats = run.detector.stats
    assert stats.audio_during_tts_frames > 100  # loud enough for the energy test alone
    assert (stats.attempts, stats.speech_frames) == (0, 0)
    assert 1000 < run.detector.noise_floor < 1300
    # Speech well above that floor still gets through.
    for frame in loud_speech_frames(p, 13):
        mixed = np.frombuffer(frame, dtype="<i2").astype(np.int32) + rng.normal(0, 1300, p.frame_samples)
        run.feed(np.clip(mixed, -32768, 32767).astype("<i2").tobytes())
    assert run.index_of(D.CONFIRMED) == [len(run.decisions) - 1]


@pytest.mark.parametrize("rate", [16000, 24000])
def test_wideband_and_resampled_rates_confirm_like_8k(rate: int) -> None:
    # 16 kHz goes to webrtcvad as is; 24 kHz is resampled to 16 kHz for the VAD.
    p = BargeInParams(sample_rate=rate)
    run = Run(p)
    run.start_playback()
    for _ in range(p.protection_frames):
        run.feed(silence(p))
    for frame in loud_speech_frames(p, 20):
        run.feed(frame)
    assert run.index_of(D.SOFT_PAUSE) == [p.protection_frames + 2]
    assert run.index_of(D.CONFIRMED) == [p.protection_frames + p.min_frames - 1]


def test_frame_counts_round_up_for_odd_ms() -> None:
    p = BargeInParams(min_ms=90, soft_pause_ms=30, cooldown_ms=1, initial_protection_ms=41, frame_ms=20)
    assert (p.min_frames, p.soft_pause_frames, p.cooldown_frames, p.protection_frames) == (5, 2, 1, 3)
    assert p.confirm_frames == math.ceil(0.7 * 5)


def test_a_gap_between_words_keeps_the_agent_held_and_confirms_from_the_first_onset() -> None:
    p = BargeInParams()
    run = Run(p)
    run.start_playback()
    for _ in range(p.protection_frames + 5):
        run.feed(silence(p))
    start = len(run.decisions)
    onset_time = run.now(start)
    for frame in loud_speech_frames(p, 6):  # "Sorry"
        run.feed(frame)
    for _ in range(6):  # a 120 ms gap: the first episode is abandoned inside it
        run.feed(silence(p))
    for frame in loud_speech_frames(p, 30):  # "... to interrupt"
        run.feed(frame)
    assert run.index_of(D.SOFT_PAUSE) == [start + 2]
    assert run.index_of(D.RESUME) == []  # no agent audio leaks out between the words
    second_onset = start + 12
    assert run.index_of(D.CONFIRMED) == [second_onset + p.min_frames - 1]
    assert run.detector.stats.speech_onset == onset_time  # reaction counts from the first word


def test_speech_heard_across_episodes_of_one_hold_confirms() -> None:
    """A quiet caller whose words keep breaking the window still gets through."""
    p = BargeInParams()
    run = Run(p)
    run.start_playback()
    for _ in range(p.protection_frames + 5):
        run.feed(silence(p))
    start = len(run.decisions)
    # bursts of 5 speech frames with 4-frame gaps: each episode is abandoned (4 misses
    # > 3 allowed) but the next begins inside the hangover, so the agent stays held
    for _ in range(8):
        for frame in loud_speech_frames(p, 5):
            run.feed(frame)
        for _ in range(4):
            run.feed(silence(p))
    confirmed = run.index_of(D.CONFIRMED)
    assert confirmed, "never confirmed"
    assert [i for i in run.index_of(D.SOFT_PAUSE) if i < confirmed[0]] == [start + 2]
    assert [i for i in run.index_of(D.RESUME) if i < confirmed[0]] == []
    confirmed = confirmed[:1]
    # speech counted after the soft pause: 2 in the first burst (the soft pause comes on
    # its 3rd frame), then 5 per burst
    bursts_needed = 1 + -(-(p.hold_confirm_frames - 2) // 5)
    last_burst_start = start + (bursts_needed - 1) * 9
    needed_in_last = p.hold_confirm_frames - 2 - 5 * (bursts_needed - 2)
    assert confirmed == [last_burst_start + needed_in_last - 1]
    assert run.detector.stats.speech_onset == run.now(start)
