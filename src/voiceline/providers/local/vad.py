"""End-of-utterance detection for the local agent (pure: bytes in, decisions out).

``EndOfUtteranceDetector`` looks at one fixed-size frame at a time (webrtcvad
accepts 10, 20 or 30 ms at 8/16/32/48 kHz) and turns the per-frame speech/no-speech
decisions into two events:

* ``SpeechStart`` once ``onset_ms`` of consecutive speech frames confirm an onset
  (one noisy frame does not open a turn), and
* ``SpeechEnd`` once ``end_of_utterance_ms`` of consecutive non-speech frames
  follow the last speech frame (pauses between words shorter than that do not end
  the caller's turn), or when an utterance reaches ``max_utterance_ms``.

Time is the frame index: nothing here reads a clock, so the same audio always
gives the same events at the same frame indices.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from voiceline.audio.vad import VAD_FRAME_MS as _VAD_FRAME_MS
from voiceline.audio.vad import VAD_RATES as _VAD_RATES
from voiceline.audio.vad import VoiceActivity


@dataclass(frozen=True, slots=True)
class SpeechStart:
    """A confirmed speech onset.

    ``start_frame`` is the first speech frame of the confirming run;
    ``confirmed_frame`` is the frame whose processing returned this event.
    """

    start_frame: int
    confirmed_frame: int
    frame_ms: int

    @property
    def start_ms(self) -> int:
        return self.start_frame * self.frame_ms


@dataclass(frozen=True, slots=True)
class SpeechEnd:
    """The end of an utterance.

    ``end_frame`` is one past the last speech frame (the first frame of the
    trailing silence); ``confirmed_frame`` is the frame whose processing returned
    this event. ``too_short`` marks utterances whose speech span is below
    ``min_utterance_ms`` (a cough, a click): not worth transcribing.
    ``forced`` marks an utterance cut at ``max_utterance_ms``.
    """

    start_frame: int
    end_frame: int
    confirmed_frame: int
    frame_ms: int
    too_short: bool = False
    forced: bool = False

    @property
    def start_ms(self) -> int:
        return self.start_frame * self.frame_ms

    @property
    def end_ms(self) -> int:
        return self.end_frame * self.frame_ms

    @property
    def duration_ms(self) -> int:
        return (self.end_frame - self.start_frame) * self.frame_ms


VadEvent = SpeechStart | SpeechEnd


class FrameSplitter:
    """Cuts an arbitrary byte stream into whole frames of ``frame_bytes``."""

    def __init__(self, frame_bytes: int) -> None:
        if frame_bytes <= 0:
            raise ValueError("frame_bytes must be positive")
        self.frame_bytes = frame_bytes
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        n = len(self._buf) // self.frame_bytes
        if n == 0:
            return []
        cut = n * self.frame_bytes
        frames = [
            bytes(self._buf[i : i + self.frame_bytes])
            for i in range(0, cut, self.frame_bytes)
        ]
        del self._buf[:cut]
        return frames

    @property
    def pending(self) -> int:
        return len(self._buf)


class EndOfUtteranceDetector:
    """Onset/end-of-utterance state machine over fixed 16-bit PCM frames.

    ``is_speech`` may be injected (tests); by default a ``webrtcvad.Vad`` with the
    given aggressiveness (0 least, 3 most eager to call audio non-speech).
    """

    def __init__(
        self,
        *,
        sample_rate: int = 8000,
        frame_ms: int = 20,
        aggressiveness: int = 2,
        onset_ms: int = 100,
        end_of_utterance_ms: int = 600,
        min_utterance_ms: int = 250,
        max_utterance_ms: int | None = 20000,
        is_speech: Callable[[bytes], bool] | None = None,
    ) -> None:
        if sample_rate not in _VAD_RATES:
            raise ValueError(
                f"sample_rate must be one of {_VAD_RATES}, got {sample_rate}"
            )
        if frame_ms not in _VAD_FRAME_MS:
            raise ValueError(f"frame_ms must be one of {_VAD_FRAME_MS}, got {frame_ms}")
        if not 0 <= aggressiveness <= 3:
            raise ValueError(f"aggressiveness must be 0..3, got {aggressiveness}")
        for name, value in (
            ("onset_ms", onset_ms),
            ("end_of_utterance_ms", end_of_utterance_ms),
        ):
            if value < frame_ms:
                raise ValueError(
                    f"{name} must be at least one frame ({frame_ms} ms), got {value}"
                )
        if min_utterance_ms < 0:
            raise ValueError("min_utterance_ms must not be negative")
        self.sample_rate = sample_rate
        self.frame_ms = frame_ms
        self.frame_bytes = sample_rate * frame_ms // 1000 * 2
        # Durations become whole frame counts, rounded up: "at least this long".
        self.onset_frames = -(-onset_ms // frame_ms)
        self.end_frames = -(-end_of_utterance_ms // frame_ms)
        self.min_frames = -(-min_utterance_ms // frame_ms)
        self.max_frames = -(-max_utterance_ms // frame_ms) if max_utterance_ms else None
        if is_speech is None:
            is_speech = VoiceActivity(aggressiveness, sample_rate, frame_ms).is_speech
        self._is_speech = is_speech
        self.reset()

    def reset(self) -> None:
        self._frame = 0  # index of the next frame
        self._in_speech = False
        self._run_start = -1  # silence state: start of the current speech run
        self._run_len = 0
        self._utt_start = 0  # speech state
        self._last_speech = 0
        self._silence = 0

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    @property
    def frames_processed(self) -> int:
        return self._frame

    def process(self, frame: bytes) -> VadEvent | None:
        """Classify one frame (exactly ``frame_bytes``) and return an event, if any."""
        if len(frame) != self.frame_bytes:
            raise ValueError(
                f"frame must be {self.frame_bytes} bytes, got {len(frame)}"
            )
        index = self._frame
        self._frame += 1
        speech = self._is_speech(frame)
        if not self._in_speech:
            if not speech:
                self._run_len = 0
                return None
            if self._run_len == 0:
                self._run_start = index
            self._run_len += 1
            if self._run_len < self.onset_frames:
                return None
            self._in_speech = True
            self._utt_start = self._run_start
            self._last_speech = index
            self._silence = 0
            self._run_len = 0
            return SpeechStart(self._utt_start, index, self.frame_ms)

        if speech:
            self._last_speech = index
            self._silence = 0
        else:
            self._silence += 1
        ended = self._silence >= self.end_frames
        forced = (
            not ended
            and self.max_frames is not None
            and index + 1 - self._utt_start >= self.max_frames
        )
        if not ended and not forced:
            return None
        end_frame = self._last_speech + 1
        self._in_speech = False
        self._silence = 0
        return SpeechEnd(
            start_frame=self._utt_start,
            end_frame=end_frame,
            confirmed_frame=index,
            frame_ms=self.frame_ms,
            too_short=end_frame - self._utt_start < self.min_frames,
            forced=forced,
        )
