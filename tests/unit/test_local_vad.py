"""End-of-utterance detector of the local agent: pure, frame-indexed, no clock."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import soxr

from voiceline.providers.local.tts import wav_to_samples
from voiceline.providers.local.vad import (
    EndOfUtteranceDetector,
    FrameSplitter,
    SpeechEnd,
    SpeechStart,
)


def espeak(text: str, rate: int, speed: int = 165) -> np.ndarray:
    wav = subprocess.run(
        ["espeak-ng", "--stdout", "-v", "en-us", "-s", str(speed), text],
        capture_output=True,
        check=True,
    ).stdout
    samples, source_rate = wav_to_samples(wav)
    return soxr.resample(samples, source_rate, rate).astype("<i2")


def frames_of(signal: np.ndarray, rate: int, frame_ms: int = 20) -> list[bytes]:
    n = rate * frame_ms // 1000
    count = len(signal) // n
    return [signal[i * n : (i + 1) * n].astype("<i2").tobytes() for i in range(count)]


def run(
    detector: EndOfUtteranceDetector, frames: list[bytes]
) -> list[tuple[int, object]]:
    events = []
    for i, frame in enumerate(frames):
        event = detector.process(frame)
        if event is not None:
            events.append((i, event))
    return events


def energy_bounds(frames: list[bytes], threshold: float = 300.0) -> tuple[int, int]:
    """First and last frame whose RMS exceeds ``threshold`` (about -40 dBFS)."""
    rms = [
        np.sqrt(np.mean(np.frombuffer(f, dtype="<i2").astype(float) ** 2))
        for f in frames
    ]
    active = [i for i, r in enumerate(rms) if r > threshold]
    return active[0], active[-1]


@pytest.mark.espeak
@pytest.mark.parametrize("rate", [8000, 16000])
def test_speech_between_silences_gives_one_onset_and_one_end(rate: int) -> None:
    # 1 s silence, a sentence with a comma and a full stop (pauses well under
    # 600 ms), 1.5 s silence.
    speech = espeak("Hello there. This is a test, with a short pause.", rate)
    signal = np.concatenate(
        [np.zeros(rate, "<i2"), speech, np.zeros(rate * 3 // 2, "<i2")]
    )
    frames = frames_of(signal, rate)
    first, last = energy_bounds(frames)
    assert first in (50, 51)  # the speech starts right after the 50 silent frames

    detector = EndOfUtteranceDetector(sample_rate=rate, aggressiveness=2)
    events = run(detector, frames)

    assert [type(e) for _, e in events] == [SpeechStart, SpeechEnd]
    (i_start, start), (i_end, end) = events
    assert isinstance(start, SpeechStart) and isinstance(end, SpeechEnd)
    # Onset: webrtcvad may call the first, quiet frame of the attack speech before
    # its RMS crosses -40 dBFS, never more than 2 frames (40 ms) early, and the
    # speech frames are consecutive, so it is never late.
    assert first - 2 <= start.start_frame <= first
    # Confirmation is exactly onset_ms (5 frames) after the run's first frame.
    assert start.confirmed_frame == i_start == start.start_frame + 4
    assert start.start_ms == start.start_frame * 20
    # End: webrtcvad keeps calling the decaying tail of the last phoneme speech
    # (and its own smoothing adds a few frames); measured 8 frames at mode 2.
    # Allow 0..12 frames (240 ms) after the last loud frame.
    assert last + 1 <= end.end_frame <= last + 13
    # The end is declared exactly end_of_utterance_ms (30 frames) after the last
    # speech frame: counted in frames, not wall clock.
    assert end.confirmed_frame == i_end == end.end_frame + 29
    assert end.start_frame == start.start_frame
    assert not end.too_short and not end.forced
    assert end.duration_ms == (end.end_frame - end.start_frame) * 20
    assert not detector.in_speech


@pytest.mark.espeak
def test_two_utterances_separated_by_a_long_pause() -> None:
    rate = 8000
    a = espeak("What are your opening hours?", rate)
    b = espeak("Thank you.", rate)
    gap = np.zeros(rate, "<i2")  # 1 s > 600 ms
    signal = np.concatenate([gap, a, gap, b, gap])
    events = run(EndOfUtteranceDetector(sample_rate=rate), frames_of(signal, rate))
    assert [type(e) for _, e in events] == [
        SpeechStart,
        SpeechEnd,
        SpeechStart,
        SpeechEnd,
    ]
    assert events[2][1].start_frame > events[1][1].end_frame  # type: ignore[attr-defined]


def test_silence_and_quiet_noise_give_no_events() -> None:
    rate = 8000
    rng = np.random.default_rng(7)
    noise = rng.normal(0, 30, rate * 5).astype("<i2")  # about -60 dBFS, 5 s
    silence = np.zeros(rate * 2, "<i2")
    detector = EndOfUtteranceDetector(sample_rate=rate, aggressiveness=2)
    assert run(detector, frames_of(np.concatenate([silence, noise]), rate)) == []
    assert detector.frames_processed == 350


# ---- exact behaviour with an injected per-frame decision --------------------------------


def scripted(pattern: str, **kwargs: int) -> list[tuple[int, object]]:
    """Run the detector over a pattern: 'S' speech frame, '.' silence frame."""
    decisions = iter(pattern)
    detector = EndOfUtteranceDetector(
        is_speech=lambda _f: next(decisions) == "S", **kwargs
    )
    frame = b"\x00" * detector.frame_bytes
    return run(detector, [frame] * len(pattern))


def test_onset_needs_consecutive_speech() -> None:
    # Runs of 4 speech frames (80 ms) never confirm an onset at onset_ms=100.
    assert scripted("SSSS." * 10) == []
    events = scripted("...SSSSS" + "." * 40)
    assert events[0] == (7, SpeechStart(start_frame=3, confirmed_frame=7, frame_ms=20))


def test_pauses_shorter_than_end_of_utterance_do_not_end_the_turn() -> None:
    pattern = "SSSSS" + "." * 29 + "SSSSS" + "." * 30
    events = scripted(pattern)
    assert len(events) == 2
    i_end, end = events[1]
    assert end == SpeechEnd(
        start_frame=0, end_frame=39, confirmed_frame=68, frame_ms=20
    )
    assert i_end == 68


def test_too_short_utterance_is_flagged() -> None:
    # 5 frames = 100 ms of speech: an onset, but below min_utterance_ms=250.
    events = scripted("SSSSS" + "." * 30)
    end = events[1][1]
    assert isinstance(end, SpeechEnd) and end.too_short
    # 13 frames = 260 ms: long enough.
    events = scripted("S" * 13 + "." * 30)
    end = events[1][1]
    assert isinstance(end, SpeechEnd) and not end.too_short


def test_max_utterance_forces_an_end() -> None:
    events = scripted("S" * 60, max_utterance_ms=1000)
    # Cut after 50 frames (1 s); the speech goes on, so a new utterance starts.
    assert [type(e) for _, e in events] == [SpeechStart, SpeechEnd, SpeechStart]
    end = events[1][1]
    assert isinstance(end, SpeechEnd) and end.forced and not end.too_short
    assert end.confirmed_frame == 49 and end.end_frame == 50
    assert events[2] == (
        54,
        SpeechStart(start_frame=50, confirmed_frame=54, frame_ms=20),
    )


def test_rejects_wrong_frame_size_and_bad_settings() -> None:
    detector = EndOfUtteranceDetector(sample_rate=8000)
    assert detector.frame_bytes == 320
    with pytest.raises(ValueError, match="320 bytes"):
        detector.process(b"\x00" * 318)
    with pytest.raises(ValueError, match="sample_rate"):
        EndOfUtteranceDetector(sample_rate=11025)
    with pytest.raises(ValueError, match="frame_ms"):
        EndOfUtteranceDetector(frame_ms=25)
    with pytest.raises(ValueError, match="aggressiveness"):
        EndOfUtteranceDetector(aggressiveness=4)


def test_frame_splitter_reassembles_arbitrary_chunks() -> None:
    splitter = FrameSplitter(320)
    data = bytes(range(256)) * 10  # 2560 bytes = 8 frames
    out: list[bytes] = []
    for size in (1, 7, 319, 321, 2, 640, 1000, 270):
        chunk, data = data[:size], data[size:]
        out.extend(splitter.feed(chunk))
    assert len(out) == 8 and all(len(f) == 320 for f in out)
    assert b"".join(out) == (bytes(range(256)) * 10)[:2560]
    assert splitter.pending == 0
