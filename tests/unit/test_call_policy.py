"""The call's per-frame policy (core/call_policy.py), driven with a fake clock."""

import math

import numpy as np
import pytest

from voiceline.core.barge_in import BargeInDetector, BargeInParams
from voiceline.core.call_policy import CallPolicy, GateChange, ReactionKind

FRAME_S = 0.02
SILENCE = b"\x00\x00" * 160


def _speech_like(n: int, rms: float = 6000.0) -> list[bytes]:
    """Voiced, loud frames (a 200 Hz buzz with harmonics) the detector takes for speech."""
    t = np.arange(160 * n) / 8000
    wave = sum(np.sin(2 * math.pi * 200 * k * t) / k for k in range(1, 8))
    wave = wave / np.sqrt(np.mean(wave ** 2)) * rms
    pcm = wave.astype("<i2").tobytes()
    return [pcm[i * 320:(i + 1) * 320] for i in range(n)]


def _policy(detector=True, starvation_s=0.5, full_duplex=False):
    det = BargeInDetector(BargeInParams(sample_rate=8000)) if detector else None
    return CallPolicy(det, full_duplex=full_duplex, preroll_frames=30, starvation_s=starvation_s)


def test_gated_frames_go_to_preroll_and_stale_preroll_is_dropped_when_capture_returns():
    policy = _policy(detector=False)
    assert not policy.admit(b"a", capture_enabled=False)
    assert not policy.admit(b"b", capture_enabled=False)
    assert list(policy.preroll) == [b"a", b"b"]
    assert policy.admit(b"c", capture_enabled=True)
    assert list(policy.preroll) == []


def test_full_duplex_is_never_gated():
    policy = _policy(detector=False, full_duplex=True)
    assert policy.admit(b"a", capture_enabled=False)


def test_take_preroll_hands_over_oldest_first_and_empties():
    policy = _policy(detector=False)
    for frame in (b"1", b"2", b"3"):
        policy.admit(frame, capture_enabled=False)
    assert policy.take_preroll() == [b"1", b"2", b"3"]
    assert policy.take_preroll() == []


def test_caller_speech_over_playback_holds_then_confirms_a_barge_in():
    policy = _policy()
    now = 0.0
    # Agent playing (capture off); the protection window drops frames, logged once.
    reactions = []
    for _ in range(40):
        reactions.append(policy.caller_frame(SILENCE, now, capture_enabled=False, reference=None))
        now += FRAME_S
    drops = [r for r in reactions if r.kind is ReactionKind.DROP]
    assert drops and drops[0].first_drop and not any(r.first_drop for r in drops[1:])
    kinds = []
    onset = now
    for frame in _speech_like(20):
        r = policy.caller_frame(frame, now, capture_enabled=False, reference=None)
        kinds.append(r)
        now += FRAME_S
    seen = [r.kind for r in kinds if r.kind is not ReactionKind.NONE]
    assert seen[:2] == [ReactionKind.HOLD, ReactionKind.BARGE_IN]
    confirmed = next(r for r in kinds if r.kind is ReactionKind.BARGE_IN)
    assert confirmed.onset == pytest.approx(onset)
    assert sum(r.new_attempts for r in kinds) == 1


def test_without_detector_every_frame_is_left_to_gating():
    policy = _policy(detector=False)
    r = policy.caller_frame(_speech_like(1)[0], 0.0, capture_enabled=False, reference=None)
    assert r.kind is ReactionKind.NONE


def test_stream_turn_gates_from_first_frame_and_releases_at_turn_end():
    policy = _policy(starvation_s=0.5)
    assert policy.turn_started("stream:t1", 1.0) == GateChange("stream:t1", True)
    assert policy.frame_sent(True, False, 1.02) is None
    assert policy.turn_ended("stream:t1", "completed") == GateChange("stream:t1", False, "completed")
    assert policy.frame_sent(False, False, 5.0) is None  # no turn: nothing to do


def test_capture_reopens_when_the_stream_starves_for_the_grace_and_gates_again_on_audio():
    """A turn whose end never arrives (AgentAudioDone lost) must not gate the caller
    until the fallback timer: once nothing was sent for the grace, capture reopens."""
    policy = _policy(starvation_s=0.5)
    policy.turn_started("stream:t1", 0.0)
    now = 0.0
    for _ in range(10):  # 200 ms of agent audio
        now += FRAME_S
        assert policy.frame_sent(True, False, now) is None
    last_audio = now
    changes = []
    while now < last_audio + 0.7:
        now += FRAME_S
        change = policy.frame_sent(False, False, now)
        if change is not None:
            changes.append((round(now - last_audio, 3), change))
    assert changes == [(0.5, GateChange("stream:t1", False, "starved"))]
    # Agent audio again (the turn goes on): the caller is gated again.
    now += FRAME_S
    assert policy.frame_sent(True, False, now) == GateChange("stream:t1", True)


def test_a_soft_pause_hold_is_not_starvation():
    policy = _policy(starvation_s=0.5)
    policy.turn_started("stream:t1", 0.0)
    now = 0.0
    for _ in range(60):  # 1.2 s held: silence sent, but only for the detector
        now += FRAME_S
        assert policy.frame_sent(False, True, now) is None


def test_starvation_off_keeps_the_gate_until_turn_end():
    policy = _policy(starvation_s=None)
    policy.turn_started("stream:t1", 0.0)
    assert policy.frame_sent(False, False, 30.0) is None


def test_bad_parameters_are_refused_with_their_name():
    with pytest.raises(ValueError, match="preroll_frames"):
        CallPolicy(None, full_duplex=False, preroll_frames=0, starvation_s=0.5)
    with pytest.raises(ValueError, match="starvation_s"):
        CallPolicy(None, full_duplex=False, preroll_frames=1, starvation_s=-1)
