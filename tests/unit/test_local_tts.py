"""espeak-ng text-to-speech of the local agent."""

from __future__ import annotations

import asyncio
import io
import os
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from voiceline.config import LocalTTSSettings
from voiceline.providers.local.tts import (
    EspeakTTS,
    TTSError,
    clean_for_speech,
    wav_to_samples,
)

pytestmark = pytest.mark.espeak

SENTENCE = "We are open from nine to five, Monday to Friday."  # 10 words


def seconds(pcm: bytes, rate: int) -> float:
    return len(pcm) / 2 / rate


def rms(pcm: bytes) -> float:
    return float(np.sqrt(np.mean(np.frombuffer(pcm, dtype="<i2").astype(float) ** 2)))


@pytest.mark.parametrize("rate", [8000, 16000])
async def test_slin16_at_the_requested_rate_with_plausible_duration(rate: int) -> None:
    tts = EspeakTTS(LocalTTSSettings(), rate)
    pcm = await tts.synthesize(SENTENCE)
    assert len(pcm) % 2 == 0
    duration = seconds(pcm, rate)
    # 10 words at 165 wpm is 3.6 s of talk; espeak is a little faster on short
    # words and adds a sentence-final pause: accept 2..5 s.
    assert 2.0 < duration < 5.0
    assert rms(pcm) > 500  # speech, not silence
    samples = np.frombuffer(pcm, dtype="<i2")
    assert np.abs(samples).max() < 32767  # not clipped


async def test_rates_agree_and_speed_changes_duration() -> None:
    d8 = seconds(await EspeakTTS(LocalTTSSettings(), 8000).synthesize(SENTENCE), 8000)
    d16 = seconds(await EspeakTTS(LocalTTSSettings(), 16000).synthesize(SENTENCE), 16000)
    assert abs(d8 - d16) < 0.01  # same speech, only resampled
    slow = seconds(
        await EspeakTTS(LocalTTSSettings(speed=110), 8000).synthesize(SENTENCE), 8000
    )
    assert slow > d8 * 1.3


async def test_resampling_keeps_speech_in_the_telephone_band() -> None:
    pcm = await EspeakTTS(LocalTTSSettings(), 8000).synthesize(SENTENCE)
    spectrum = np.abs(np.fft.rfft(np.frombuffer(pcm, dtype="<i2").astype(float)))
    freqs = np.fft.rfftfreq(len(pcm) // 2, 1 / 8000)
    voice = spectrum[(freqs > 100) & (freqs < 3400)].sum()
    assert voice / spectrum.sum() > 0.9


async def test_cache_returns_repeated_prompts_at_once() -> None:
    tts = EspeakTTS(LocalTTSSettings(), 8000, cache_size=2)
    first = await tts.synthesize("Hello there.")
    t = time.perf_counter()
    again = await tts.synthesize("  Hello   there. ")  # same text after clean-up
    assert time.perf_counter() - t < 0.005
    assert again is first
    await tts.synthesize("One.")
    await tts.synthesize("Two.")  # evicts "Hello there."
    assert await tts.synthesize("Hello there.") is not first


async def test_markup_is_not_spoken_and_empty_text_is_silent() -> None:
    assert clean_for_speech("**Sure!** Call `now` # ok") == "Sure! Call now ok"
    assert await EspeakTTS(LocalTTSSettings(), 8000).synthesize(" * _ ") == b""


async def test_text_starting_with_a_dash_is_text_not_an_option() -> None:
    pcm = await EspeakTTS(LocalTTSSettings(), 8000).synthesize(
        "-v is not a voice option here."
    )
    assert seconds(pcm, 8000) > 1.0


async def test_missing_binary_and_unknown_voice_raise_tts_error() -> None:
    with pytest.raises(TTSError, match="apt-get install espeak-ng"):
        await EspeakTTS(
            LocalTTSSettings(espeak_binary="/nonexistent/espeak-ng"), 8000
        ).synthesize("hi")
    with pytest.raises(TTSError, match="exit 1"):
        await EspeakTTS(LocalTTSSettings(voice="nosuchvoice"), 8000).synthesize("hi")


def espeak_children() -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            comm = stat.read_text().split("(", 1)[1].rsplit(")", 1)[0]
        except (OSError, IndexError):
            continue
        if int(fields[1]) == os.getpid() and comm.startswith("espeak"):
            pids.append(int(stat.parent.name))
    return pids


@pytest.mark.parametrize("delay_s", [0.0, 0.02, 0.1, 0.3])
async def test_cancelling_kills_the_espeak_process(delay_s: float) -> None:
    # Cancel at several points of a long synthesis (~1 MB of WAV): the call
    # must return promptly (an unread, paused stdout pipe used to hang it) and
    # leave no espeak-ng process behind.
    tts = EspeakTTS(LocalTTSSettings(), 8000, cache_size=0)
    task = asyncio.create_task(tts.synthesize("A long sentence. " * 400))
    for _ in range(100):  # wait until espeak-ng runs (bounded)
        await asyncio.sleep(0.01)
        if espeak_children():
            break
    assert espeak_children()
    await asyncio.sleep(delay_s)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=5)
    assert done, "cancelling the synthesis hung"
    assert task.cancelled()
    assert espeak_children() == []


async def test_timeout_kills_the_espeak_process() -> None:
    tts = EspeakTTS(LocalTTSSettings(timeout_s=0.05), 8000, cache_size=0)
    with pytest.raises(TTSError, match="longer than 0.05 s"):
        await asyncio.wait_for(tts.synthesize("A long sentence. " * 400), 5)
    assert espeak_children() == []


def test_wav_with_placeholder_sizes_is_read() -> None:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as wf:
        wf.setnchannels(1)
        wf.setsampwidth(2)
        wf.setframerate(22050)
        wf.writeframes(np.arange(100, dtype="<i2").tobytes())
    data = bytearray(buf.getvalue())
    data[4:8] = (0x7FFFFFFF).to_bytes(4, "little")  # what espeak-ng writes to a pipe
    data[40:44] = (0x7FFFFFFF).to_bytes(4, "little")
    samples, rate = wav_to_samples(bytes(data))
    assert rate == 22050 and list(samples[:3]) == [0, 1, 2] and len(samples) == 100
    with pytest.raises(TTSError):
        wav_to_samples(b"not a wav")
