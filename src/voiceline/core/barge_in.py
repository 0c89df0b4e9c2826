"""Barge-in detection: is the caller really talking over the agent? (pure, no I/O, no clock)

While agent audio plays, the engine gates caller audio away from the provider (so the
agent never hears itself) and feeds every inbound frame to one ``BargeInDetector`` per
call. The detector tells the engine when to pause, resume or flush the agent.

What comes back up the line while the agent talks is mostly *not* the caller: the
agent's own audio returned as line echo (typically 15 dB or more below what we sent,
30-60 ms late, G.711 coded), background noise, clicks and knocks. A frame counts as
caller **speech** only when all of these hold:

1. **loud**: RMS >= ``energy_threshold`` (16-bit scale) and at least
   ``noise_margin_db`` above the line's noise floor (minimum frame RMS over the last
   1.5-2 s, tracked in and out of playback; unknown, so 0, for the first 500 ms fed).
   The floor term keeps a noisy line (noise near or above ``energy_threshold``) from
   passing on loudness alone. Limit: a caller who talks for 2 s without a single
   quiet frame raises the floor to their own quietest frame.
2. **not explainable as echo**: RMS >= ``echo_ratio`` x the loudest agent frame sent
   within the last ``echo_tail_ms``, ``echo_ratio = 10 ** (-echo_margin_db / 20)``.
   This is the Geigel double-talk test on frame RMS: whatever the echo path does, its
   output is no louder than (echo gain) x (loudest recent input), so with the default
   6 dB any line whose echo return loss (ERL) is above ~8 dB cannot pass (measured:
   -8 dB echo never qualifies, -6 dB occasionally does). The price is double talk:
   while the agent is loud the caller must be within 6 dB of it. Soft pause (below)
   is what makes a normal-level caller confirm anyway: once the agent is paused the
   reference is silence and, one echo tail later, the test no longer binds.
3. **voiced**: webrtcvad (``vad_aggressiveness``) says speech. Clicks, knocks and
   steady noise that are loud enough for test 1 mostly fail here. The VAD sees every
   playback frame (not only loud ones) so its internal noise model adapts to the line.

Confirmation rule (an *episode*): the first speech frame (the **onset**) opens a
candidate episode covering exactly ``min_frames = ceil(min_ms / frame_ms)`` frames.
Up to ``allowed_misses = min_frames - ceil(confirm_ratio * min_frames)`` of them may
fail the speech test (gaps between syllables, a consonant below the threshold); one
more and the episode is abandoned at once. If the episode survives to its last
frame, the barge-in is CONFIRMED on that frame, which is always exactly
``min_frames - 1`` frames after the onset frame. Defaults (250 ms, 0.7): 10 of 13
frames, confirmed once 260 ms of caller audio from the onset has been heard. 0.7
rather than 0.8 because natural speech at an ordinary level (active RMS ~2000) dips
below the 1000 threshold on unvoiced consonants and in double talk some frames are
lost to the echo test: of 24 measured double-talk interruptions (6 phrases x 4 line
conditions) 0.8 left 7 beyond min_ms + 100 ms (3 of them by ~1.8 s), 0.7 left 4
(all the same phrase, whose first syllable is followed by a 160 ms closure), and no
false-trigger case changed. A window fixed at the onset (rather than an open-ended
sliding one) makes latency exact and bounds a soft pause: it resolves within
``min_frames`` frames.

Soft pause: once ``soft_pause_frames = ceil(soft_pause_ms / frame_ms)`` speech frames
have been counted in the episode, SOFT_PAUSE tells the engine to send silence but keep
the queue; the episode then ends in CONFIRMED (flush) or, if abandoned, RESUME (play
on from where it paused: a cough, a door). ``soft_pause_ms = 0`` disables it, and
``soft_pause_ms >= min_ms`` never fires (confirmation comes first). On by default
because it is what lets a caller through in double talk: with the agent silenced the
echo test stops binding one echo tail later. Measured on the same 24 interruptions at
RMS 2000, soft pause off left 15 beyond min_ms + 100 ms (5 never confirmed), on left
4; on the false-trigger suite it costs nothing (no soft pause on echo down to -8 dB,
white or telephone-band noise up to RMS 1500, clicks or knocks). The agent also goes
quiet 60-100 ms after the onset instead of at confirmation, which is what the caller
hears as "it stopped for me".

Durations are counted in inbound frames (one frame = ``frame_ms`` of caller audio),
not wall time: what matters is how much caller audio was heard, and inbound frames may
arrive in bursts after network jitter. So the engine must feed *every* inbound frame,
in or out of playback (out of playback ``feed`` only updates the reference history and
the noise floor, then returns NONE). ``now`` only stamps the onset and confirmation
for the reaction-time metric. The protection window (``initial_protection_ms`` after
``playback_started``) and the cooldown (``cooldown_ms`` after CONFIRMED) are counted
in frames the same way.

The reference: with each inbound frame the engine passes the agent frame it sent to
the caller in the same 20 ms slot, or None when it sent nothing or silence (including
while soft-paused). Pass it every frame: the history ages by one entry per inbound
frame. The detector keeps the RMS of the last ``echo_tail_frames + 1`` references,
which covers echo delays up to ``echo_tail_ms`` (100 ms by default) as long as the
reference and the inbound frame belong to the same slot; if the engine's send path
buffers more than a frame beyond that, raise ``echo_tail_ms`` by as much.

Sample rates: webrtcvad takes 8/16/32/48 kHz; any other rate is resampled per frame
to 16 kHz for the VAD only (``voiceline.audio.vad``); RMS and the echo test use the
original samples.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from voiceline.audio.levels import slin_rms
from voiceline.audio.vad import VAD_FRAME_MS, VoiceActivity

__all__ = [
    "PROTECTED_DROP_LOG_MESSAGE",
    "BargeInConfig",
    "BargeInDetector",
    "BargeInParams",
    "BargeInStats",
    "Decision",
]

# The engine logs this once per protection window when it drops inbound frames.
PROTECTED_DROP_LOG_MESSAGE = "Dropping inbound AudioSocket audio during TTS playback"


# Noise floor = minimum frame RMS over NOISE_FLOOR_BLOCKS blocks of NOISE_FLOOR_BLOCK_MS
# (minimum statistics). 2 s is long enough to always contain a pause between the
# agent's or the caller's words, short enough to follow a caller who walks into a
# noisier room.
NOISE_FLOOR_BLOCK_MS = 500
NOISE_FLOOR_BLOCKS = 4


def _frames_for(ms: float, frame_ms: int) -> int:
    """Frames needed to cover ``ms`` (ceil: never shorter than configured)."""
    return math.ceil(ms / frame_ms) if ms > 0 else 0


class BargeInConfig(Protocol):
    """The ``barge_in:`` config section as this module reads it (the config's
    ``BargeInSettings``; the core does not import the config)."""

    enabled: bool
    min_ms: int
    energy_threshold: int
    vad_aggressiveness: int
    cooldown_ms: int
    initial_protection_ms: int
    soft_pause_ms: int


@dataclass(frozen=True)
class BargeInParams:
    """Detector parameters: the ``BargeInSettings`` plus the call's audio format.

    Times are in milliseconds; the ``*_frames`` properties convert them to frame
    counts (ceil), which is what the detector actually counts.
    """

    sample_rate: int = 8000
    frame_ms: int = 20
    enabled: bool = True
    min_ms: int = 250
    energy_threshold: int = 1000
    vad_aggressiveness: int = 2
    cooldown_ms: int = 500
    initial_protection_ms: int = 200
    soft_pause_ms: int = 60
    # Caller frames more than this many dB below the loudest recent agent frame are
    # taken for echo (Geigel test). 6 dB: -10 dB echo never qualifies (with 2 dB to
    # spare), while soft pause still lets a normal-level caller confirm.
    echo_margin_db: float = 6.0
    # How far back the echo reference reaches: the line's echo delay (30-60 ms) plus
    # the offset between our send and receive paths. Longer is safer against late echo
    # but keeps the paused agent's last frames in the test longer: with 160 ms, 15 of
    # 24 measured double-talk interruptions missed min_ms + 100 ms (4 with 100 ms).
    echo_tail_ms: int = 100
    # Speech must be this many dB above the noise floor (0 = floor not used). 4.5 dB:
    # white and telephone-band pink noise up to RMS 1500 never soft-pauses (without
    # the floor, RMS 1000 already confirmed), and caller confirmations in noise were
    # as fast as with no floor; 6 dB cost 10% of them the min_ms + 100 ms bound.
    noise_margin_db: float = 4.5
    # Share of the min_ms window that must be speech; the rest tolerates gaps.
    confirm_ratio: float = 0.7
    # A soft pause whose episode is abandoned waits this long before RESUME: a gap
    # between two words of the same interruption ("Sorry ... to interrupt") then
    # re-opens an episode while the agent stays silent, instead of letting agent
    # audio leak out between the words. Measured on the lab: without it the caller
    # heard agent frames ~270 and ~510 ms after their onset; with it, none after ~60 ms.
    resume_hangover_ms: int = 200
    # While the agent is held (soft pause), speech frames are added up over every
    # episode of the hold; this many confirm even if no single window did. Found by
    # the barge-in bench: a quiet caller (RMS ~2000, half the frames under the energy
    # threshold) kept the agent held for a whole sentence without ever confirming.
    hold_confirm_ms: int = 400

    def __post_init__(self) -> None:
        if not isinstance(self.sample_rate, int) or self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive int, got {self.sample_rate!r}")
        if self.frame_ms not in VAD_FRAME_MS:
            raise ValueError(f"frame_ms must be one of {VAD_FRAME_MS} (webrtcvad frame sizes), got {self.frame_ms}")
        if self.sample_rate * self.frame_ms % 1000:
            raise ValueError(f"{self.frame_ms} ms at {self.sample_rate} Hz is not a whole number of samples")
        if self.min_ms <= 0:
            raise ValueError(f"min_ms must be positive, got {self.min_ms}")
        if not 0 <= self.vad_aggressiveness <= 3:
            raise ValueError(f"vad_aggressiveness must be 0..3, got {self.vad_aggressiveness}")
        for name in (
            "energy_threshold",
            "cooldown_ms",
            "initial_protection_ms",
            "soft_pause_ms",
            "echo_tail_ms",
            "noise_margin_db",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.confirm_ratio <= 1:
            raise ValueError(f"confirm_ratio must be in (0, 1], got {self.confirm_ratio}")

    @classmethod
    def from_settings(cls, settings: BargeInConfig, sample_rate: int, **overrides: Any) -> BargeInParams:
        """Params from the config section for a call whose inbound audio is at ``sample_rate``."""
        values: dict[str, Any] = {
            "sample_rate": sample_rate,
            "enabled": settings.enabled,
            "min_ms": settings.min_ms,
            "energy_threshold": settings.energy_threshold,
            "vad_aggressiveness": settings.vad_aggressiveness,
            "cooldown_ms": settings.cooldown_ms,
            "initial_protection_ms": settings.initial_protection_ms,
            "soft_pause_ms": settings.soft_pause_ms,
        }
        values.update(overrides)
        return cls(**values)

    @property
    def frame_samples(self) -> int:
        return self.sample_rate * self.frame_ms // 1000

    @property
    def frame_bytes(self) -> int:
        return self.frame_samples * 2

    @property
    def min_frames(self) -> int:
        return max(1, _frames_for(self.min_ms, self.frame_ms))

    @property
    def confirm_frames(self) -> int:
        """Speech frames an episode of ``min_frames`` needs to confirm."""
        # The epsilon keeps e.g. 0.7 * 10 = 7.000000000000001 from rounding up to 8.
        return max(1, math.ceil(self.confirm_ratio * self.min_frames - 1e-9))

    @property
    def allowed_misses(self) -> int:
        return self.min_frames - self.confirm_frames

    @property
    def soft_pause_frames(self) -> int:
        """Speech frames before SOFT_PAUSE; 0 = soft pause off."""
        return _frames_for(self.soft_pause_ms, self.frame_ms)

    @property
    def hold_confirm_frames(self) -> int:
        return _frames_for(self.hold_confirm_ms, self.frame_ms)

    @property
    def resume_hangover_frames(self) -> int:
        return _frames_for(self.resume_hangover_ms, self.frame_ms)

    @property
    def cooldown_frames(self) -> int:
        return _frames_for(self.cooldown_ms, self.frame_ms)

    @property
    def protection_frames(self) -> int:
        return _frames_for(self.initial_protection_ms, self.frame_ms)

    @property
    def echo_tail_frames(self) -> int:
        return _frames_for(self.echo_tail_ms, self.frame_ms)

    @property
    def echo_ratio(self) -> float:
        """Caller RMS must reach this fraction of the loudest recent reference RMS."""
        return 10 ** (-self.echo_margin_db / 20)

    @property
    def noise_ratio(self) -> float:
        """Caller RMS must reach this multiple of the noise floor."""
        return 10 ** (self.noise_margin_db / 20)


class Decision(enum.Enum):
    """What the engine should do with one inbound frame.

    SOFT_PAUSE, CONFIRMED and RESUME are edges: returned once, on the frame where the
    state changes. Frames inside an episode otherwise return SPEECH_CANDIDATE.
    """

    NONE = "none"  # no playback, or nothing that looks like the caller talking
    DROP_PROTECTED = "drop_protected"  # inside the initial protection window: drop, never counted
    SPEECH_CANDIDATE = "speech_candidate"  # inside a candidate episode (paused or not)
    SOFT_PAUSE = "soft_pause"  # send silence instead of agent audio, keep the queue
    CONFIRMED = "confirmed"  # barge-in: flush agent audio, stop playback, re-enable capture
    RESUME = "resume"  # the soft pause was a false alarm: play on from where it paused


@dataclass(slots=True)
class BargeInStats:
    # Frames during playback (protected ones included) at or above energy_threshold:
    # something audible came back while the agent talked, echo or caller.
    audio_during_tts_frames: int = 0
    protected_frames: int = 0
    speech_frames: int = 0  # passed every test
    noise_rejected_frames: int = 0  # above energy_threshold but within noise_margin of the floor
    echo_rejected_frames: int = 0  # loud, but within echo_margin of the reference
    vad_rejected_frames: int = 0  # loud and above the echo margin, but not voiced
    attempts: int = 0  # candidate episodes started
    soft_pauses: int = 0
    false_triggers: int = 0  # soft pauses that ended in RESUME
    abandoned_candidates: int = 0  # episodes that ended before any soft pause
    confirmed: int = 0
    # Of the last confirmed episode: ``now`` of its first speech frame and of the
    # confirming frame. The engine measures reaction time from speech_onset to the
    # last agent frame it sent.
    speech_onset: float | None = None
    confirmed_at: float | None = None


class BargeInDetector:
    """Per-call barge-in state machine; the module docstring has the rules."""

    def __init__(self, params: BargeInParams) -> None:
        self.params = params
        self.stats = BargeInStats()
        self._vad = VoiceActivity(params.vad_aggressiveness, params.sample_rate, params.frame_ms)
        # Per-frame constants, kept off the hot path.
        self._frame_bytes = params.frame_bytes
        self._min_frames = params.min_frames
        self._allowed_misses = params.allowed_misses
        self._soft_pause_frames = params.soft_pause_frames
        self._echo_ratio = params.echo_ratio
        self._noise_ratio = params.noise_ratio
        self._energy_threshold = float(params.energy_threshold)
        # The reference sent in this slot and the echo_tail_frames before it, kept as
        # sent: their RMS is only needed for the rare caller frame loud enough to
        # reach the echo test (``_echo_level``), not for every frame.
        self._references: deque[bytes | None] = deque([None], maxlen=params.echo_tail_frames + 1)
        self._noise_floor = _MinimumTracker(
            block_frames=max(1, _frames_for(NOISE_FLOOR_BLOCK_MS, params.frame_ms)), blocks=NOISE_FLOOR_BLOCKS
        )
        self.in_playback = False
        self.playback_started_at: float | None = None
        self._protection_left = 0  # frames still inside the protection window
        self._cooldown_left = 0  # frames still inside the post-confirm cooldown
        # the candidate episode in progress, if any
        self._episode_open = False
        self._episode_frames = 0
        self._episode_speech = 0
        self._episode_misses = 0
        self._episode_onset = 0.0
        self.soft_paused = False
        # after an abandoned soft-paused episode: frames left before RESUME, and the
        # onset of the first episode of the hold (reaction time counts from it)
        self._hangover_left = 0
        self._hold_onset: float | None = None
        self._hold_speech = 0  # speech frames heard since the soft pause, over all episodes

    # ------------------------------------------------------------------ playback events

    def playback_started(self, now: float) -> None:
        """Agent audio began playing: (re)open the protection window, forget any episode."""
        self.in_playback = True
        self.playback_started_at = now
        self._protection_left = self.params.protection_frames
        self._reset_episode()
        self._end_hold()

    def playback_stopped(self, now: float) -> None:
        """Agent audio stopped (turn done or flushed). An episode in progress is dropped
        without a decision: there is nothing left to pause or resume."""
        self.in_playback = False
        self.playback_started_at = None
        self._protection_left = 0
        self._reset_episode()
        self._end_hold()

    def _end_hold(self) -> None:
        self._hangover_left = 0
        self._hold_onset = None
        self._hold_speech = 0

    @property
    def noise_floor(self) -> float:
        """Current noise floor estimate (RMS, 16-bit scale)."""
        return self._noise_floor.minimum

    @property
    def episode_onset(self) -> float | None:
        """``now`` of the first speech frame of the episode in progress, if any."""
        return self._episode_onset if self._episode_open else None

    # ------------------------------------------------------------------ per frame

    def feed(self, frame: bytes, now: float, *, reference: bytes | None = None) -> Decision:
        """One inbound caller frame (slin16 LE, exactly ``frame_ms`` long) received at ``now``.

        ``reference``: the agent frame sent to the caller in the same slot (any length,
        same format), or None when nothing or silence was sent. Returns what to do.
        """
        if len(frame) != self._frame_bytes:
            raise ValueError(f"frame must be {self._frame_bytes} bytes ({self.params.frame_ms} ms), got {len(frame)}")
        self._references.append(reference or None)
        cooling_down = self._cooldown_left > 0
        if cooling_down:
            self._cooldown_left -= 1
        rms = slin_rms(frame)
        # The floor follows the line in and out of playback, so it is already known
        # when the agent starts talking.
        self._noise_floor.add(rms)
        if not self.in_playback or not self.params.enabled:
            return Decision.NONE

        if rms >= self._energy_threshold:
            self.stats.audio_during_tts_frames += 1
        if self._protection_left:
            self._protection_left -= 1
            self.stats.protected_frames += 1
            return Decision.DROP_PROTECTED
        if cooling_down:
            return Decision.NONE

        speech = self._is_speech(frame, rms)
        if not self._episode_open:
            if not speech:
                return self._wait_out_hangover()
            self._hangover_left = 0
            self._open_episode(now)
        return self._advance_episode(speech, now)

    def _wait_out_hangover(self) -> Decision:
        if not self._hangover_left:
            return Decision.NONE
        self._hangover_left -= 1
        if self._hangover_left:
            return Decision.SPEECH_CANDIDATE  # still holding the agent
        self.soft_paused = False
        self._hold_onset = None
        self._hold_speech = 0
        self.stats.false_triggers += 1
        return Decision.RESUME

    # ------------------------------------------------------------------ internals

    def _is_speech(self, frame: bytes, rms: float) -> bool:
        # Run the VAD on every frame that gets here, even quiet ones: its noise model
        # adapts to what it is shown, and showing it only loud frames made it call
        # steady noise speech more often (measured on white noise at RMS 1000).
        voiced = self._vad.is_speech(frame)
        if rms < self._energy_threshold:
            return False
        if rms < self._noise_ratio * self._noise_floor.minimum:
            self.stats.noise_rejected_frames += 1
            return False
        if rms < self._echo_ratio * self._echo_level():
            self.stats.echo_rejected_frames += 1
            return False
        if not voiced:
            self.stats.vad_rejected_frames += 1
            return False
        self.stats.speech_frames += 1
        return True

    def _echo_level(self) -> float:
        """The loudest agent frame of the echo tail (0.0 when nothing was sent)."""
        return max((slin_rms(frame) for frame in self._references if frame), default=0.0)

    def _open_episode(self, now: float) -> None:
        self._episode_open = True
        self._episode_frames = 0
        self._episode_speech = 0
        self._episode_misses = 0
        self._episode_onset = now
        self.stats.attempts += 1

    def _advance_episode(self, speech: bool, now: float) -> Decision:
        self._episode_frames += 1
        if speech:
            self._episode_speech += 1
            if self.soft_paused:
                self._hold_speech += 1
                if self._hold_speech >= self.params.hold_confirm_frames:
                    # A quiet caller whose words keep breaking the window: enough
                    # speech was heard while the agent was held; that is an interruption.
                    return self._confirm(now)
        else:
            self._episode_misses += 1
            if self._episode_misses > self._allowed_misses:
                return self._abandon_episode()
        if self._episode_frames >= self._min_frames:
            return self._confirm(now)
        if not self.soft_paused and self._soft_pause_frames and self._episode_speech >= self._soft_pause_frames:
            self.soft_paused = True
            self.stats.soft_pauses += 1
            return Decision.SOFT_PAUSE
        return Decision.SPEECH_CANDIDATE

    def _confirm(self, now: float) -> Decision:
        self.stats.confirmed += 1
        self.stats.speech_onset = self._hold_onset if self._hold_onset is not None else self._episode_onset
        self.stats.confirmed_at = now
        self._reset_episode()
        self._hold_onset = None
        self._hold_speech = 0
        self._cooldown_left = self.params.cooldown_frames
        return Decision.CONFIRMED

    def _abandon_episode(self) -> Decision:
        was_paused = self.soft_paused
        onset = self._episode_onset
        self._reset_episode()
        if was_paused:
            hangover = self.params.resume_hangover_frames
            if hangover:
                # Keep the agent paused a little: the caller may go on after a gap.
                self.soft_paused = True
                self._hangover_left = hangover
                if self._hold_onset is None:
                    self._hold_onset = onset
                return Decision.SPEECH_CANDIDATE
            self.stats.false_triggers += 1
            return Decision.RESUME
        self.stats.abandoned_candidates += 1
        return Decision.NONE

    def _reset_episode(self) -> None:
        self._episode_open = False
        self._episode_frames = 0
        self._episode_speech = 0
        self._episode_misses = 0
        self.soft_paused = False


class _MinimumTracker:
    """Minimum of a value over the last ``blocks`` blocks of ``block_frames`` values
    (minimum statistics, O(blocks) per value).

    0 until the first block is complete: a minimum over a few frames is no floor (if
    the caller happens to be talking it is their speech level) and would hide them.
    """

    def __init__(self, block_frames: int, blocks: int) -> None:
        self._block_frames = block_frames
        self._block_minimum = math.inf
        self._in_block = 0
        self._completed: deque[float] = deque(maxlen=max(1, blocks - 1))
        self._completed_minimum = math.inf
        self.minimum = 0.0

    def add(self, value: float) -> None:
        self._block_minimum = min(self._block_minimum, value)
        self._in_block += 1
        if self._in_block >= self._block_frames:
            self._completed.append(self._block_minimum)
            self._block_minimum = math.inf
            self._in_block = 0
        if self._completed:
            # min() over the completed blocks only when one completes (not per frame).
            if self._in_block == 0:
                self._completed_minimum = min(self._completed)
            self.minimum = min(self._completed_minimum, self._block_minimum)
