"""pocketsphinx recognition of the local agent, on espeak-ng speech through the 8 kHz phone path.

pocketsphinx's general English model is weak on espeak-ng's synthetic voice (e.g.
"what are your opening hours" comes out as "what are your opening up in"), so the
general-model tests use questions measured to be recognised robustly (every
variant of speed 140-175 wpm, lead-in and line noise tried) and assert on the
keyword the scripted rules need ("open", "where"), not on exact text. The small
phrase model (``stt.phrases``) recognises the script's questions word for word.
"""

from __future__ import annotations

import functools
import subprocess
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import soxr

from voiceline.config import DEFAULT_RULES, DEFAULT_SCRIPT_PHRASES, LocalSTTSettings
from voiceline.providers.local.llm import ScriptedLLM
from voiceline.providers.local.stt import (
    PocketSphinxRecognizer,
    StreamingSTT,
    STTError,
    build_phrase_model,
    check_model,
    create_decoder,
)
from voiceline.providers.local.tts import wav_to_samples

pytestmark = pytest.mark.espeak

RATE = 8000
HOURS = "nine to five"
ADDRESS = "Example Street"


@cache
def caller(text: str, speed: int = 150) -> bytes:
    """``text`` spoken by espeak-ng at 8 kHz with 300 ms of silence either side."""
    wav = subprocess.run(
        ["espeak-ng", "--stdout", "-v", "en-us", "-s", str(speed), text],
        capture_output=True,
        check=True,
    ).stdout
    samples, rate = wav_to_samples(wav)
    speech = soxr.resample(samples, rate, RATE).astype("<i2")
    pad = np.zeros(RATE * 3 // 10, "<i2")
    return np.concatenate([pad, speech, pad]).tobytes()


@cache
def general() -> PocketSphinxRecognizer:
    return PocketSphinxRecognizer(LocalSTTSettings(phrases=None), RATE)


@cache
def phrases() -> PocketSphinxRecognizer:
    return PocketSphinxRecognizer(LocalSTTSettings(phrases=list(DEFAULT_SCRIPT_PHRASES)), RATE)


SCRIPT = ScriptedLLM(DEFAULT_RULES)


@pytest.mark.parametrize(
    ("question", "keyword", "answer"),
    [
        ("are you open on monday", "open", HOURS),
        ("when are you open", "open", HOURS),
        ("what time do you open", "open", HOURS),
        ("where are you located", "where", ADDRESS),
        ("where can i find you", "where", ADDRESS),
    ],
)
@pytest.mark.parametrize("speed", [140, 170])
def test_general_model_hears_the_keyword(
    question: str, keyword: str, answer: str, speed: int
) -> None:
    text = general().transcribe(caller(question, speed))
    assert any(word.startswith(keyword) for word in text.split()), text
    assert answer in SCRIPT.match(text)


@pytest.mark.parametrize(
    "question",
    [
        "what are your opening hours",
        "what is your address",
        "how do i get there",
        "goodbye",
    ],
)
def test_phrase_model_recognises_the_script_word_for_word(question: str) -> None:
    assert phrases().transcribe(caller(question, 160)) == question


def test_20ms_feeding_equals_one_shot() -> None:
    audio = caller("where are you located")
    rec = general()
    one_shot = rec.transcribe(audio)
    rec.start()
    pos = 0
    for size in [319, 321, 0] * (
        len(audio) // 640 + 1
    ):  # odd sizes: a byte is carried over
        rec.feed(audio[pos : pos + size])
        pos += size
    assert pos >= len(audio)
    assert rec.finish() == one_shot
    assert not rec.in_utterance


def test_streaming_mode_recognises_after_the_cepstral_mean_adapted() -> None:
    rec = PocketSphinxRecognizer(LocalSTTSettings(phrases=None, streaming=True), RATE)
    for _ in range(2):  # the live mean starts from the model's default: let it adapt
        rec.transcribe(caller("where can i find you"))
    rec.start()
    audio = caller("where are you located")
    for i in range(0, len(audio), 320):
        rec.feed(audio[i : i + 320])
    assert "where" in rec.finish()


def test_silence_gives_empty_text_and_abort_discards() -> None:
    rec = general()
    assert rec.transcribe(b"\x00" * RATE) in ("", "um", "uh", "oh")  # a filler at most
    rec.start()
    rec.feed(caller("goodbye"))
    rec.abort()
    assert rec.finish() == ""


def test_grammar_mode(tmp_path: Path) -> None:
    grammar = tmp_path / "faq.gram"
    grammar.write_text(
        "#JSGF V1.0;\ngrammar faq;\npublic <q> = what are your opening hours | where are you located | goodbye;\n"
    )
    rec = PocketSphinxRecognizer(LocalSTTSettings(phrases=None, grammar=str(grammar)), RATE)
    assert (
        rec.transcribe(caller("what are your opening hours"))
        == "what are your opening hours"
    )


def test_phrase_model_drops_words_missing_from_the_dictionary(tmp_path: Path) -> None:
    dictionary = tmp_path / "tiny.dict"
    dictionary.write_text("hello HH AH L OW\nhello(2) HH EH L OW\nworld W ER L D\n")
    lm, dict_path = build_phrase_model(
        ["Hello, world!", "hello zorblax"], str(dictionary), str(tmp_path)
    )
    assert Path(dict_path).read_text().splitlines() == [
        "hello HH AH L OW",
        "hello(2) HH EH L OW",
        "world W ER L D",
    ]
    assert "zorblax" not in Path(lm).read_text()
    with pytest.raises(STTError, match="no word"):
        build_phrase_model(["zorblax"], str(dictionary), str(tmp_path))


def test_missing_model_files_are_reported_with_a_fix(tmp_path: Path) -> None:
    assert check_model(LocalSTTSettings(phrases=None)) is None
    problem = check_model(LocalSTTSettings(phrases=None, model=str(tmp_path / "nope")))
    assert (
        problem is not None
        and "stt.model" in problem
        and "reinstall pocketsphinx" in problem
    )
    problem = check_model(LocalSTTSettings(phrases=None, grammar=str(tmp_path / "none.gram")))
    assert problem is not None and "stt.grammar" in problem
    with pytest.raises(STTError, match="acoustic model not found"):
        create_decoder(LocalSTTSettings(phrases=None, model=str(tmp_path)))


async def test_streaming_stt_runs_the_recognizer_off_the_event_loop() -> None:
    # The factory is pickled into the worker process: a partial, not a lambda.
    stt = StreamingSTT(functools.partial(PocketSphinxRecognizer, LocalSTTSettings(phrases=None), RATE))
    await stt.open()
    try:
        audio = caller("are you open on monday")
        stt.begin(audio[:3200])
        for i in range(3200, len(audio), 320):
            stt.feed(audio[i : i + 320])
        text = await stt.finish()
        assert "open" in text.split()
        stt.begin()
        stt.abort()
        assert await stt.finish() == ""
    finally:
        stt.close()
        stt.close()
    assert not stt.is_open
    with pytest.raises(STTError, match="not open"):
        stt.feed(b"\x00" * 320)
