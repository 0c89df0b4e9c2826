"""Reply generators for the local agent: a scripted FAQ and any OpenAI-compatible server.

Both expose ``reply(history, user_text)``: an async iterator of complete sentences,
so text-to-speech can start on the first sentence while later ones are still being
generated. ``history`` is the conversation so far as OpenAI chat messages
(``{"role": "user"|"assistant", "content": ...}``), without ``user_text``.

The pure pieces (``SentenceSplitter``, ``SSEParser``, ``parse_chunk``) take text or
bytes and return results; only ``OpenAICompatibleLLM`` does I/O.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import structlog

from voiceline.config import DEFAULT_FALLBACK_REPLY, LocalLLMSettings, LocalScriptRule

log = structlog.get_logger(__name__)

# A chat message: role and content, and for function calls the assistant's
# ``tool_calls`` or the tool result's ``tool_call_id``.
Message = Mapping[str, Any]
_MESSAGE_KEYS = ("role", "content", "tool_calls", "tool_call_id")


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function the model called (chat-completions ``tool_calls``); ``arguments`` is its JSON text."""

    id: str
    name: str
    arguments: str

    def message_entry(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


class ToolCallAccumulator:
    """Streamed ``tool_calls`` deltas (pieces keyed by ``index``) -> whole calls."""

    def __init__(self) -> None:
        self._parts: dict[int, dict[str, str]] = {}

    def feed(self, deltas: list[Any]) -> None:
        for delta in deltas:
            if not isinstance(delta, dict):
                continue
            part = self._parts.setdefault(int(delta.get("index", 0)), {"id": "", "name": "", "arguments": ""})
            if delta.get("id"):
                part["id"] = str(delta["id"])
            function = delta.get("function") or {}
            if function.get("name"):
                part["name"] += str(function["name"])
            if function.get("arguments"):
                part["arguments"] += str(function["arguments"])

    def calls(self) -> list[ToolCall]:
        return [
            ToolCall(p["id"] or f"call_{i}", p["name"], p["arguments"] or "{}")
            for i, p in sorted(self._parts.items()) if p["name"]
        ]


class LLMError(Exception):
    """The reply could not be generated (server down, HTTP error, timeout, bad stream)."""


class ReplyGenerator(Protocol):
    def reply(
        self, history: Sequence[Message], user_text: str | None
    ) -> AsyncIterator[str | ToolCall]:
        """Sentences, then any functions the model called. ``user_text`` None: go on
        from ``history`` (which ends with function results)."""
        ...

    async def aclose(self) -> None: ...


# ---- sentence splitting --------------------------------------------------------------

# Sentence end: terminal punctuation (and closing quotes/brackets) followed by
# whitespace, or a line break.
_BOUNDARY = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]]*(?=\s)|\n")
_ABBREVIATIONS = frozenset(
    {
        "mr",
        "mrs",
        "ms",
        "dr",
        "st",
        "prof",
        "sr",
        "jr",
        "vs",
        "e.g",
        "i.e",
        "approx",
        "mt",
        "ft",
    }
)
_LAST_WORD = re.compile(r"([\w.]+)\.$")
_SPEAKABLE = re.compile(r"\w")  # pieces of bare punctuation are not sentences
# Terminal punctuation right after a letter, at the end of the text received so far.
_TAIL_END = re.compile(r"(?<=[^\W\d_])[.!?\u2026]+$")


class SentenceSplitter:
    """Turns a stream of text deltas into complete sentences as soon as each ends.

    A sentence ends at ``.``, ``?``, ``!`` (or ``…``) followed by whitespace, or at
    a line break. ``3.5`` or a trailing ``.`` without following space wait for more
    text; common abbreviations ("Dr.", "e.g.") and single initials do not end a
    sentence. Text running past ``max_chars`` without an end is cut at the last
    comma or space so speech is not held back indefinitely.
    """

    def __init__(self, max_chars: int = 250) -> None:
        self.max_chars = max_chars
        self._buf = ""

    def feed(self, text: str) -> list[str]:
        self._buf += text
        out: list[str] = []
        pos = 0
        search_from = 0
        while True:
            m = _BOUNDARY.search(self._buf, search_from)
            if m is None:
                break
            if m.group() != "\n" and self._is_abbreviation(self._buf[pos : m.end()]):
                search_from = m.end()
                continue
            sentence = self._buf[pos : m.end()].strip()
            if _SPEAKABLE.search(sentence):
                out.append(sentence)
            pos = search_from = m.end()
        self._buf = self._buf[pos:].lstrip()
        if _TAIL_END.search(self._buf) and not self._is_abbreviation(self._buf):
            sentence, self._buf = self._buf.strip(), ""
            if _SPEAKABLE.search(sentence):
                out.append(sentence)
        while len(self._buf) > self.max_chars:
            cut = max(
                self._buf.rfind(", ", 0, self.max_chars),
                self._buf.rfind("; ", 0, self.max_chars),
            )
            if cut <= 0:
                cut = self._buf.rfind(" ", 0, self.max_chars)
            if cut <= 0:
                cut = self.max_chars
            else:
                cut += 1
            out.append(self._buf[:cut].strip())
            self._buf = self._buf[cut:].lstrip()
        return out

    def flush(self) -> list[str]:
        rest, self._buf = self._buf.strip(), ""
        return [rest] if _SPEAKABLE.search(rest) else []

    @staticmethod
    def _is_abbreviation(candidate: str) -> bool:
        candidate = candidate.rstrip()
        if not candidate.endswith(".") or candidate.endswith(".."):
            return False
        m = _LAST_WORD.search(candidate)
        if m is None:
            return False
        word = m.group(1)
        if word.lower() in _ABBREVIATIONS:
            return True
        return len(word) == 1 and word.isupper()


def split_sentences(text: str) -> list[str]:
    splitter = SentenceSplitter()
    return splitter.feed(text) + splitter.flush()


# ---- scripted replies ----------------------------------------------------------------


def _compile_entry(entry: str) -> re.Pattern[str]:
    if entry.startswith("re:"):
        return re.compile(entry[3:], re.IGNORECASE)
    words = entry.lower().split()
    if not words:
        raise ValueError("empty keyword")
    prefix = words[-1].endswith("*")
    if prefix:
        words[-1] = words[-1].rstrip("*")
    body = r"\s+".join(re.escape(w) for w in words)
    tail = r"\w*" if prefix else ""
    return re.compile(rf"(?<!\w){body}{tail}(?!\w)", re.IGNORECASE)


class ScriptedLLM:
    """Keyword/regex rules: the first rule with a matching entry gives the reply (a
    ``re:`` entry's groups can be put into it: ``\\1``), and the rule's function, if any,
    is what the agent calls after saying it (``function_for``). Stateless: shared by calls."""

    def __init__(
        self, rules: Sequence[LocalScriptRule], fallback_reply: str = DEFAULT_FALLBACK_REPLY
    ) -> None:
        self._rules: list[tuple[list[re.Pattern[str]], str, str | None]] = []
        for i, rule in enumerate(rules):
            if not rule.match:
                raise ValueError(f"llm.rules[{i}].match is empty")
            if not rule.reply.strip():
                raise ValueError(f"llm.rules[{i}].reply is empty")
            patterns = []
            for j, entry in enumerate(rule.match):
                try:
                    patterns.append(_compile_entry(entry))
                except (re.error, ValueError) as exc:
                    raise ValueError(
                        f"llm.rules[{i}].match[{j}]: {entry!r} is not a valid entry: {exc}"
                    ) from exc
            self._rules.append((patterns, rule.reply, rule.function))
        self.fallback_reply = fallback_reply

    def _rule(self, text: str) -> tuple[str, str | None]:
        for patterns, reply, function in self._rules:
            for pattern in patterns:
                m = pattern.search(text)
                if m is not None:
                    return (m.expand(reply) if m.re.groups else reply), function
        return self.fallback_reply, None

    def match(self, text: str) -> str:
        return self._rule(text)[0]

    def function_for(self, text: str) -> str | None:
        """The function the rule answering ``text`` calls after its reply, if any."""
        return self._rule(text)[1]

    async def reply(
        self, history: Sequence[Message], user_text: str | None
    ) -> AsyncIterator[str | ToolCall]:
        for sentence in split_sentences(self.match(user_text or "")):
            yield sentence

    async def aclose(self) -> None:
        return None


# ---- server-sent events --------------------------------------------------------------

_EOL = re.compile(r"\r\n|\r|\n")


class SSEParser:
    """Incremental ``text/event-stream`` parser: bytes in, each event's data out.

    Chunks may split anywhere, including inside a UTF-8 character or between the
    ``\\r`` and ``\\n`` of a line break. Comments and fields other than ``data``
    are ignored; several ``data:`` lines of one event are joined with ``\\n``.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._text = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        self._text += self._decoder.decode(chunk)
        events: list[str] = []
        pos = 0
        while True:
            m = _EOL.search(self._text, pos)
            if m is None or (m.group() == "\r" and m.end() == len(self._text)):
                break  # no complete line yet (a lone \r may be half of \r\n)
            self._line(self._text[pos : m.start()], events)
            pos = m.end()
        self._text = self._text[pos:]
        return events

    def flush(self) -> list[str]:
        """End of stream: a last event without its blank line is still delivered."""
        events: list[str] = []
        self._text += self._decoder.decode(b"", final=True)
        if self._text:
            self._line(self._text.rstrip("\r"), events)
            self._text = ""
        if self._data:
            events.append("\n".join(self._data))
            self._data = []
        return events

    def _line(self, line: str, events: list[str]) -> None:
        if not line:
            if self._data:
                events.append("\n".join(self._data))
                self._data = []
            return
        if line.startswith(":"):
            return
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)


def parse_chunk(data: str) -> str:
    """The text delta of one streamed chat-completion chunk ('' when it has none)."""
    return parse_chunk_full(data)[0]


def parse_chunk_full(data: str) -> tuple[str, list[Any]]:
    """(text delta, ``tool_calls`` deltas) of one streamed chat-completion chunk."""
    try:
        obj = json.loads(data)
    except json.JSONDecodeError as exc:
        raise LLMError(
            f"LLM server sent a malformed stream chunk: {data[:120]!r}"
        ) from exc
    if not isinstance(obj, dict):
        raise LLMError(f"LLM server sent an unexpected stream chunk: {data[:120]!r}")
    if "error" in obj:
        err = obj["error"]
        message = err.get("message") if isinstance(err, dict) else err
        raise LLMError(f"LLM server reported an error: {message}")
    choices = obj.get("choices") or []
    if not choices:
        return "", []
    choice = choices[0]
    delta = choice.get("delta") or choice.get("message") or {}
    content = delta.get("content") if isinstance(delta, dict) else None
    if content is None and isinstance(choice.get("text"), str):
        # the legacy completions shape
        content = choice["text"]
    tool_calls = delta.get("tool_calls") if isinstance(delta, dict) else None
    return (content if isinstance(content, str) else ""), (tool_calls if isinstance(tool_calls, list) else [])


# ---- OpenAI-compatible chat completions ---------------------------------------------


class OpenAICompatibleLLM:
    """Streams ``POST {base_url}/chat/completions`` (``stream: true``) and yields sentences."""

    def __init__(self, config: LocalLLMSettings, tools: Sequence[Mapping[str, Any]] = ()) -> None:
        """``tools``: functions offered to the model (chat-completions ``tools`` entries)."""
        self.tools = [dict(t) for t in tools]
        if not config.model:
            raise ValueError("llm.model is required when llm.kind is openai_compatible")
        if config.timeout_s <= 0:
            raise ValueError("llm.timeout_s must be positive")
        self.config = config
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self._session: aiohttp.ClientSession | None = None

    def build_messages(
        self, history: Sequence[Message], user_text: str | None
    ) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        if self.config.system_prompt:
            messages.append({"role": "system", "content": self.config.system_prompt})
        recent = (
            list(history)[-self.config.max_history_messages :]
            if self.config.max_history_messages > 0
            else []
        )
        # A tool result without the assistant message that called it is refused by servers.
        while recent and recent[0].get("role") == "tool":
            recent.pop(0)
        messages.extend({k: m[k] for k in _MESSAGE_KEYS if k in m} for m in recent)
        if user_text is not None:
            messages.append({"role": "user", "content": user_text})
        return messages

    def build_payload(
        self, history: Sequence[Message], user_text: str | None
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.config.model,
            "messages": self.build_messages(history, user_text),
            "stream": True,
            "temperature": self.config.temperature,
        }
        if self.config.max_tokens:
            payload["max_tokens"] = self.config.max_tokens
        if self.tools:
            payload["tools"] = self.tools
        return payload

    async def reply(
        self, history: Sequence[Message], user_text: str | None
    ) -> AsyncIterator[str | ToolCall]:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        headers = {"Accept": "text/event-stream"}
        api_key = self.config.api_key.get_secret_value()
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        timeout = aiohttp.ClientTimeout(
            total=self.config.timeout_s, sock_connect=min(self.config.timeout_s, 5.0)
        )
        payload = self.build_payload(history, user_text)
        try:
            async with self._session.post(
                self.url, json=payload, headers=headers, timeout=timeout
            ) as resp:
                if resp.status >= 400:
                    body = (await resp.text(errors="replace"))[:300]
                    raise LLMError(
                        f"LLM server {self.url} answered HTTP {resp.status}: {body.strip()}"
                    )
                tools = ToolCallAccumulator()
                if "text/event-stream" not in resp.headers.get("Content-Type", ""):
                    # A server that ignores stream: true answers with one JSON body.
                    text, calls = parse_chunk_full(await resp.text(errors="replace"))
                    tools.feed(calls)
                    for sentence in split_sentences(text):
                        yield sentence
                    for call in tools.calls():
                        yield call
                    return
                parser = SSEParser()
                splitter = SentenceSplitter()
                done = False
                async for chunk in resp.content.iter_any():
                    for data in parser.feed(chunk):
                        if data.strip() == "[DONE]":
                            done = True
                            break
                        text, calls = parse_chunk_full(data)
                        tools.feed(calls)
                        for sentence in splitter.feed(text):
                            yield sentence
                    if done:
                        break
                if not done:
                    for data in parser.flush():
                        if data.strip() != "[DONE]":
                            text, calls = parse_chunk_full(data)
                            tools.feed(calls)
                            for sentence in splitter.feed(text):
                                yield sentence
                for sentence in splitter.flush():
                    yield sentence
                for call in tools.calls():
                    yield call
        except TimeoutError as exc:
            raise LLMError(
                f"LLM server {self.url} did not answer within {self.config.timeout_s:g} s"
            ) from exc
        except aiohttp.ClientError as exc:
            raise LLMError(f"cannot reach LLM server {self.url}: {exc}") from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def create_llm(config: LocalLLMSettings) -> ScriptedLLM | OpenAICompatibleLLM:
    if config.kind == "scripted":
        return ScriptedLLM(config.rules, config.fallback_reply)
    if config.kind == "openai_compatible":
        return OpenAICompatibleLLM(config)
    raise ValueError(
        f"llm.kind must be 'scripted' or 'openai_compatible', got {config.kind!r}"
    )
