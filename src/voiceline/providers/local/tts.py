"""Offline text-to-speech with espeak-ng.

One ``espeak-ng --stdout`` process per sentence (text on stdin, never on the
command line), its WAV parsed with ``wave``, resampled with soxr to the call's
rate and returned as 16-bit little-endian mono PCM (slin16). Recent results are
cached, so fixed prompts (greeting, apology, scripted replies) cost nothing after
their first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import shutil
import wave
from collections import OrderedDict

import numpy as np
import soxr
import structlog

from voiceline.config import LocalTTSSettings

log = structlog.get_logger(__name__)

INSTALL_HINT = "install it with: apt-get install espeak-ng"


class TTSError(Exception):
    """Speech synthesis failed (binary missing, voice unknown, timeout)."""


_MARKUP = re.compile(r"[*_`#~|<>\[\]{}]+")
_SPACE = re.compile(r"\s+")


def clean_for_speech(text: str) -> str:
    """Drop markdown-ish symbols an LLM may emit and collapse whitespace."""
    return _SPACE.sub(" ", _MARKUP.sub(" ", text)).strip()


def wav_to_samples(data: bytes) -> tuple[np.ndarray, int]:
    """Mono int16 samples and their rate from a 16-bit PCM WAV.

    espeak-ng writing to a pipe cannot seek back to fix the header, so its sizes
    are placeholders (0x7fffffff): read what is there rather than trusting them.
    """
    try:
        with wave.open(io.BytesIO(data)) as wf:
            channels, width, rate = (
                wf.getnchannels(),
                wf.getsampwidth(),
                wf.getframerate(),
            )
            frames = wf.readframes(wf.getnframes())
    except (wave.Error, EOFError) as exc:
        raise TTSError(f"espeak-ng produced invalid WAV output: {exc}") from exc
    if width != 2:
        raise TTSError(f"espeak-ng produced {8 * width}-bit audio; expected 16-bit")
    frames = frames[: len(frames) - len(frames) % (2 * channels)]
    samples = np.frombuffer(frames, dtype="<i2")
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1).astype("<i2")
    return samples, rate


def resample_to(samples: np.ndarray, source_rate: int, target_rate: int) -> bytes:
    if source_rate != target_rate and len(samples):
        samples = soxr.resample(samples, source_rate, target_rate, quality="HQ")
    return np.asarray(samples, dtype="<i2").tobytes()


class EspeakTTS:
    """Synthesizes text to slin16 at ``sample_rate``. Safe to share between sessions."""

    def __init__(
        self, config: LocalTTSSettings, sample_rate: int, *, cache_size: int = 64
    ) -> None:
        if config.speed <= 0:
            raise ValueError("tts.speed must be positive")
        self.config = config
        self.sample_rate = sample_rate
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._cache_size = cache_size

    def binary_path(self) -> str | None:
        return shutil.which(self.config.espeak_binary)

    def command(self) -> list[str]:
        c = self.config
        return [
            c.espeak_binary,
            "--stdout",
            "-v",
            c.voice,
            "-s",
            str(c.speed),
            "-b",
            "1",
            "--stdin",
        ]

    async def synthesize(self, text: str) -> bytes:
        """slin16 audio of ``text`` ('' → b''). Cancelling kills the espeak-ng process."""
        text = clean_for_speech(text)
        if not text:
            return b""
        cached = self._cache.get(text)
        if cached is not None:
            self._cache.move_to_end(text)
            return cached
        wav = await self._run_espeak(text)
        samples, rate = wav_to_samples(wav)
        pcm = resample_to(samples, rate, self.sample_rate)
        if self._cache_size and len(text) <= 400:
            self._cache[text] = pcm
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return pcm

    async def _run_espeak(self, text: str) -> bytes:
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.command(),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except FileNotFoundError as exc:
            raise TTSError(
                f"{self.config.espeak_binary} not found; {INSTALL_HINT}"
            ) from exc
        except OSError as exc:
            raise TTSError(f"cannot run {self.config.espeak_binary}: {exc}") from exc
        # communicate() runs as its own task, shielded: when this call is cancelled
        # or times out, the process is killed and communicate() still reads its
        # pipes to EOF. (Killing it and awaiting proc.wait() instead can hang for
        # ever: once nobody reads, asyncio pauses the full stdout pipe and never
        # sees the EOF that wait() needs.)
        talk = asyncio.ensure_future(proc.communicate(text.encode("utf-8")))
        talk.add_done_callback(_consume_result)
        try:
            async with asyncio.timeout(self.config.timeout_s):
                out, err = await asyncio.shield(talk)
        except BaseException as exc:  # cancelled or timed out: do not leave it running
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            with contextlib.suppress(OSError):  # a pipe broken by the kill
                await asyncio.shield(talk)  # quick: the pipes close with the process
            if isinstance(exc, TimeoutError):
                raise TTSError(
                    f"espeak-ng took longer than {self.config.timeout_s:g} s"
                ) from exc
            raise
        if proc.returncode != 0:
            detail = err.decode("utf-8", "replace").strip()[:200]
            raise TTSError(
                f"espeak-ng failed (exit {proc.returncode}, voice {self.config.voice!r}): {detail}"
            )
        return out


def _consume_result(task: asyncio.Future[object]) -> None:
    """Retrieve a finished communicate() task's exception so it is never reported unretrieved."""
    if not task.cancelled():
        task.exception()
