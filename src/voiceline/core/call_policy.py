"""A call's per-frame decisions, pure: what to do with each caller frame and when the
agent's audio gates the caller. No I/O, no clock: every method takes ``now`` (s).

Inbound (one caller frame at a time, ``caller_frame`` then ``admit``):

* the barge-in detector (if any) sees every frame of the call's own rate; its
  decision becomes a ``Reaction`` the ``Call`` carries out (hold or release the
  stream, a confirmed barge-in, or drop the frame inside the protection window);
* then gating: while capture is off the frame is kept in a short pre-roll (so that
  after a confirmed barge-in the provider hears the interruption from its first
  syllable) instead of going to the provider; when capture comes back without a
  barge-in the pre-roll is stale and is dropped.

Outbound gating (the agent's streamed audio):

Capture follows audio really being played, not provider messages. The stream's
turn gates the caller from its first frame; if the stream then has had no agent
audio to send for ``starvation_s`` (the provider's grace), capture reopens — a turn
whose end message never arrived (lost, malformed) or a provider that stalled must
not deafen the call until the fallback timer. When agent audio flows again it gates
once more. A soft-pause hold is not starvation: the agent is only held for the
barge-in detector, so held time does not count.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

from voiceline.core.barge_in import BargeInDetector, Decision

__all__ = ["CallPolicy", "GateChange", "Reaction", "ReactionKind"]


class ReactionKind(enum.Enum):
    NONE = "none"  # nothing to do; gating decides where the frame goes
    DROP = "drop"  # protection window: the frame goes nowhere
    HOLD = "hold"  # soft pause: stream sends silence, keeps its queue
    RELEASE = "release"  # the speech was not confirmed: play on (a false trigger)
    BARGE_IN = "barge_in"  # confirmed interruption


@dataclass(frozen=True, slots=True)
class Reaction:
    kind: ReactionKind
    # Caller speech episodes during playback seen since the previous reaction.
    new_attempts: int = 0
    # DROP: first drop of this protection window (log it once).
    first_drop: bool = False
    # BARGE_IN: when the caller's speech started.
    onset: float | None = None


_NOTHING = Reaction(ReactionKind.NONE)


@dataclass(frozen=True, slots=True)
class GateChange:
    """Capture goes off (``gate``) or back on for the agent playback ``playback_id``."""

    playback_id: str
    gate: bool
    reason: str = ""


class CallPolicy:
    def __init__(
        self,
        detector: BargeInDetector | None,
        *,
        full_duplex: bool,
        preroll_frames: int,
        starvation_s: float | None,
    ) -> None:
        if preroll_frames < 1:
            raise ValueError(f"preroll_frames must be >= 1, got {preroll_frames}")
        if starvation_s is not None and starvation_s < 0:
            raise ValueError(f"starvation_s must be >= 0, got {starvation_s}")
        self.detector = detector
        self.full_duplex = full_duplex
        self.preroll: deque[bytes] = deque(maxlen=preroll_frames)
        self.starvation_s = starvation_s
        self._attempts_seen = 0
        self._protected_logged = False
        self._turn: str | None = None  # playback id of the stream turn being played
        self._turn_gating = False
        self._last_audio_at: float | None = None

    # ------------------------------------------------------------------ inbound

    def caller_frame(self, payload: bytes, now: float, *, capture_enabled: bool,
                     reference: bytes | None) -> Reaction:
        """Feed one caller frame to the barge-in detector; what the call must do about it."""
        detector = self.detector
        if detector is None:
            return _NOTHING
        playing = not capture_enabled
        if playing and not detector.in_playback:
            detector.playback_started(now)
            self._protected_logged = False
        elif not playing and detector.in_playback:
            detector.playback_stopped(now)
        if len(payload) != detector.params.frame_bytes:
            return _NOTHING  # another ptime: no detection on this frame, gating still applies
        decision = detector.feed(payload, now, reference=reference)
        if decision is Decision.NONE or decision is Decision.SPEECH_CANDIDATE:
            return _NOTHING
        if decision is Decision.DROP_PROTECTED:
            first = not self._protected_logged
            self._protected_logged = True
            return Reaction(ReactionKind.DROP, first_drop=first)
        attempts = detector.stats.attempts
        new_attempts = max(0, attempts - self._attempts_seen)
        self._attempts_seen = max(self._attempts_seen, attempts)
        if decision is Decision.SOFT_PAUSE:
            return Reaction(ReactionKind.HOLD, new_attempts)
        if decision is Decision.RESUME:
            return Reaction(ReactionKind.RELEASE, new_attempts)
        if decision is Decision.CONFIRMED:
            return Reaction(ReactionKind.BARGE_IN, new_attempts, onset=detector.stats.speech_onset)
        return Reaction(ReactionKind.NONE, new_attempts)

    def admit(self, payload: bytes, *, capture_enabled: bool) -> bool:
        """True when the frame goes to the provider; False when capture is gated
        (the frame is kept in the pre-roll)."""
        if not (self.full_duplex or capture_enabled):
            self.preroll.append(payload)
            return False
        if self.preroll:
            # Capture came back without a barge-in (the turn just ended): the gated
            # audio is stale and must not be replayed at a later interruption.
            self.preroll.clear()
        return True

    def take_preroll(self) -> list[bytes]:
        """A confirmed barge-in: the gated audio of the interruption's start, oldest first."""
        frames = list(self.preroll)
        self.preroll.clear()
        return frames

    # ------------------------------------------------------------------ outbound gating

    def turn_started(self, playback_id: str, now: float) -> GateChange:
        """The stream sent the first frame of a turn."""
        self._turn = playback_id
        self._turn_gating = True
        self._last_audio_at = now
        return GateChange(playback_id, True)

    def frame_sent(self, sent_audio: bool, held: bool, now: float) -> GateChange | None:
        """After every pacer tick of the call's stream. Returns a gating change, if any."""
        turn = self._turn
        if turn is None:
            return None
        if sent_audio or held:
            self._last_audio_at = now
            if sent_audio and not self._turn_gating:
                self._turn_gating = True
                return GateChange(turn, True)
            return None
        if self._turn_gating and self.starvation_s is not None and self._last_audio_at is not None \
                and now - self._last_audio_at >= self.starvation_s - 1e-9:
            self._turn_gating = False
            return GateChange(turn, False, "starved")
        return None

    @property
    def agent_audible(self) -> bool:
        """A stream turn is open and its audio reaches the caller (not starved)."""
        return self._turn is not None and self._turn_gating

    def turn_ended(self, playback_id: str, reason: str) -> GateChange:
        """The stream's turn left the stream (completed, barge-in, fallback, call-ended)."""
        if self._turn == playback_id:
            self._turn = None
            self._turn_gating = False
            self._last_audio_at = None
        return GateChange(playback_id, False, reason)
