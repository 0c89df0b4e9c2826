"""Settings of the offline local agent (``providers.local``), with its defaults: the
demo FAQ line it answers out of the box. The agent reads this model directly."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from voiceline.config.actions import FUNCTION_NAME, ActionsSettings
from voiceline.config.base import Strict

# The VAD works on 20 ms frames: shorter onsets or pauses cannot be told apart.
_VAD_FRAME_MS = 20


class LocalScriptRule(Strict):
    """``match``: keywords/phrases (whole words, case-insensitive; a trailing ``*``
    matches any word ending, e.g. ``open*`` matches "opening") or regular
    expressions written ``re:<pattern>``. The rule fires when any entry matches."""

    match: list[str] = Field(min_length=1, description="keywords (word* = any ending) or re:REGEX")
    reply: str = Field(min_length=1, description=r"for a re: entry, \1 or \g<name> insert what its group matched")
    function: str | None = Field(
        None, pattern=FUNCTION_NAME,
        description="called after the reply was said, if offered (providers.local.actions), e.g. hangup",
    )


DEFAULT_GREETING = "Hello, this is the voiceline demo agent. How can I help you?"
DEFAULT_APOLOGY = "Sorry, I am having trouble answering right now. Please try again in a moment."
DEFAULT_FALLBACK_REPLY = "Sorry, I did not catch that. You can ask about our opening hours or our address."
DEFAULT_SYSTEM_PROMPT = (
    "You are the friendly voice agent of a small business, speaking with a caller on the "
    "phone. Answer in one to three short, plain spoken sentences. Never use lists, "
    "markdown, emojis or abbreviations; write numbers as words."
)

# The demo FAQ line. Keywords are deliberately generous: pocketsphinx with its
# general English model often mishears words ("opening hours" comes out as
# "opening our ears" or "open the autumn"), so a rule fires on any of several
# words a question about the topic is likely to contain. First match wins, so the
# order matters: "where are you open" (a common mishearing of "when are you open")
# is answered with the opening hours.
DEFAULT_RULES: tuple[LocalScriptRule, ...] = (
    # A keypress, as providers.local.actions.dtmf.template tells it.
    LocalScriptRule(match=[r"re:\bpressed (\S) on the phone keypad\b"], reply=r"You pressed \1."),
    LocalScriptRule(
        match=["hour*", "open*", "clos*", "what time", "business hours", "monday", "weekend*", "sunday"],
        reply="We are open from nine to five, Monday to Friday. We are closed on weekends.",
    ),
    LocalScriptRule(
        match=["address*", "where", "locat*", "direction*", "find you", "get there", "how do i get", "street"],
        reply=(
            "You can find us at forty two Example Street, next to the central station. "
            "There is a car park right behind the building."
        ),
    ),
    LocalScriptRule(
        match=["human", "person", "operator", "somebody", "someone", "agent", "representative"],
        reply=(
            "I am the demo agent and cannot transfer calls. "
            "I can tell you our opening hours or our address."
        ),
    ),
    LocalScriptRule(match=["thank*"], reply="You are welcome. Is there anything else I can help you with?"),
    LocalScriptRule(match=["bye", "goodbye", "good bye"], reply="Goodbye! Thank you for calling.", function="hangup"),
    LocalScriptRule(
        match=["hello", "hi", "hey"], reply="Hello! You can ask me about our opening hours or our address."
    ),
)

# Example caller sentences of the default script for ``stt.phrases``: recognition
# restricted to these words is far more reliable on phone audio than the general model.
DEFAULT_SCRIPT_PHRASES: tuple[str, ...] = (
    "what are your opening hours",
    "what are your hours",
    "when are you open",
    "are you open today",
    "are you open on monday",
    "are you open on the weekend",
    "what time do you open",
    "what time do you close",
    "when do you close",
    "where are you located",
    "what is your address",
    "where are you",
    "how do i get there",
    "where can i find you",
    "can i speak to a person",
    "i want to talk to a human",
    "thank you",
    "thanks",
    "hello",
    "hi",
    "yes",
    "no",
    "goodbye",
    "bye",
    "thank you goodbye",
)


class LocalLLMSettings(Strict):
    kind: Literal["scripted", "openai_compatible"] = Field(
        "scripted", description="scripted (rules below) or openai_compatible (base_url + model)"
    )
    base_url: str = Field("http://127.0.0.1:11434/v1", description="OpenAI-style API root (Ollama, llama.cpp, vLLM)")
    model: str = Field("", description="required for openai_compatible")
    api_key: SecretStr = Field(SecretStr(""), description="for servers that need one")
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    temperature: float = Field(0.7, ge=0, le=2)
    max_tokens: int | None = Field(200, gt=0)
    timeout_s: float = Field(20.0, gt=0, description="whole request, first byte to last")
    max_history_messages: int = Field(20, ge=0, description="earlier messages are not sent")
    rules: list[LocalScriptRule] = Field(
        default_factory=lambda: [rule.model_copy(deep=True) for rule in DEFAULT_RULES],
        description="scripted: first rule with a matching entry gives the reply",
    )
    fallback_reply: str = Field(DEFAULT_FALLBACK_REPLY, description="scripted: when no rule matches")

    @model_validator(mode="after")
    def _server_needs_model_and_url(self) -> LocalLLMSettings:
        if self.kind == "openai_compatible":
            if not self.model:
                raise ValueError("model is required when kind is openai_compatible")
            if not self.base_url.startswith(("http://", "https://")):
                raise ValueError("base_url must be an http(s) URL when kind is openai_compatible")
        return self


class LocalTTSSettings(Strict):
    voice: str = Field("en-us", description="espeak-ng voice")
    speed: int = Field(165, gt=0, description="words per minute")
    espeak_binary: str = "espeak-ng"
    timeout_s: float = Field(10.0, gt=0, description="per sentence")


class LocalSTTSettings(Strict):
    model: str | None = Field(None, description="acoustic model dir; null = the one in the pocketsphinx wheel")
    lm: str | None = Field(None, description="language model file; null = the bundled general English LM")
    dictionary: str | None = Field(None, description="pronunciation dictionary; null = bundled cmudict")
    phrases: list[str] | None = Field(
        default_factory=lambda: list(DEFAULT_SCRIPT_PHRASES),
        description="example caller sentences for a small LM (null: the general English LM)",
    )
    keyphrase: str | None = Field(None, description="keyword spotting for one phrase instead of an LM")
    kws_threshold: float = 1e-20
    grammar: str | None = Field(None, description="JSGF grammar file instead of an LM")
    streaming: bool = Field(False, description="search while audio arrives (faster, less accurate)")
    noise_floor: float = Field(64.0, ge=0, description="σ of quiet noise added so digital silence decodes")


class LocalProviderSettings(Strict):
    sample_rate: Literal[8000, 16000, 32000, 48000] = Field(8000, description="slin16 in and out at this rate")
    vad_aggressiveness: int = Field(2, ge=0, le=3, description="webrtcvad mode for the caller's turns")
    onset_ms: int = Field(100, ge=_VAD_FRAME_MS, description="speech that starts a caller turn")
    end_of_utterance_ms: int = Field(600, ge=_VAD_FRAME_MS, description="trailing silence that ends it")
    min_utterance_ms: int = Field(250, ge=0, description="shorter sounds are not transcribed")
    max_utterance_ms: int = Field(20000, gt=0, description="a turn is cut here even without a pause")
    greeting: str | None = Field(DEFAULT_GREETING, description="spoken when the call starts; null = wait")
    apology: str = Field(DEFAULT_APOLOGY, description="spoken when the LLM fails")
    chunk_ms: int = Field(100, gt=0, description="size of the agent audio chunks handed to the engine")
    llm: LocalLLMSettings = Field(default_factory=LocalLLMSettings)
    tts: LocalTTSSettings = Field(default_factory=LocalTTSSettings)
    stt: LocalSTTSettings = Field(default_factory=LocalSTTSettings)
    actions: ActionsSettings = Field(default_factory=ActionsSettings, description="functions the engine runs")

    @field_validator("apology")
    @classmethod
    def _apology_spoken(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _utterance_bounds(self) -> LocalProviderSettings:
        if self.max_utterance_ms < max(self.min_utterance_ms, self.onset_ms):
            raise ValueError(
                f"max_utterance_ms ({self.max_utterance_ms}) must be at least min_utterance_ms"
                f" ({self.min_utterance_ms}) and onset_ms ({self.onset_ms})"
            )
        return self
