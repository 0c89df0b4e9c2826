"""Reply generators of the local agent: scripted rules, sentence splitting, SSE, OpenAI-compatible client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from voiceline.config import DEFAULT_FALLBACK_REPLY, DEFAULT_RULES, LocalLLMSettings, LocalScriptRule
from voiceline.providers.local.llm import (
    LLMError,
    OpenAICompatibleLLM,
    ScriptedLLM,
    SentenceSplitter,
    SSEParser,
    create_llm,
    parse_chunk,
    split_sentences,
)

HOURS = "We are open from nine to five, Monday to Friday. We are closed on weekends."


async def collect(gen: AsyncIterator[str]) -> list[str]:
    return [s async for s in gen]


# ---- scripted ----------------------------------------------------------------------------


def test_default_rules_answer_the_faq() -> None:
    llm = ScriptedLLM(DEFAULT_RULES)
    assert llm.match("What are your OPENING hours?") == HOURS
    assert llm.match("when are you open") == HOURS
    # A frequent mishearing of "when are you open" still gets the hours (rule order).
    assert llm.match("where are you open") == HOURS
    assert "Example Street" in llm.match("where are you located")
    assert "Example Street" in llm.match("how do i get there")
    assert llm.match("okay goodbye") == "Goodbye! Thank you for calling."
    assert llm.match("purple elephants") == DEFAULT_FALLBACK_REPLY


def test_keywords_are_whole_words_with_optional_prefix_star_and_regex() -> None:
    llm = ScriptedLLM(
        [
            LocalScriptRule(match=["bye"], reply="Bye."),
            LocalScriptRule(match=["price*"], reply="Prices."),
            LocalScriptRule(match=["re:\\border(ed)?\\s+number\\b"], reply="Order."),
            LocalScriptRule(match=["talk to someone"], reply="Human."),
        ],
        fallback_reply="Fallback.",
    )
    assert llm.match("BYE then") == "Bye."
    assert llm.match("a bystander") == "Fallback."  # 'bye' is not a prefix keyword
    assert llm.match("byebye") == "Fallback."
    assert llm.match("what are the PRICES") == "Prices."
    assert llm.match("my Ordered  Number is") == "Order."
    assert (
        llm.match("can I talk   to someone") == "Human."
    )  # any whitespace between words


def test_first_matching_rule_wins() -> None:
    llm = ScriptedLLM(
        [LocalScriptRule(match=["open"], reply="First."), LocalScriptRule(match=["open", "hours"], reply="Second.")]
    )
    assert llm.match("open hours") == "First."
    assert llm.match("hours") == "Second."


def test_invalid_rules_name_their_position() -> None:
    with pytest.raises(ValueError, match=r"rules\[1\]\.match\[0\]"):
        ScriptedLLM(
            [LocalScriptRule(match=["ok"], reply="Fine."), LocalScriptRule(match=["re:(unclosed"], reply="Broken.")]
        )
    with pytest.raises(ValueError, match=r"rules\[0\]\.match is empty"):
        ScriptedLLM([LocalScriptRule.model_construct(match=[], reply="Nothing.")])


async def test_scripted_reply_yields_sentences() -> None:
    llm = create_llm(LocalLLMSettings())
    assert isinstance(llm, ScriptedLLM)
    sentences = await collect(llm.reply([], "what are your hours"))
    assert sentences == [
        "We are open from nine to five, Monday to Friday.",
        "We are closed on weekends.",
    ]


# ---- sentence splitting ---------------------------------------------------------------


def test_split_sentences() -> None:
    assert split_sentences("Hi! How are you? I am fine.") == [
        "Hi!",
        "How are you?",
        "I am fine.",
    ]
    assert split_sentences("It costs 3.50 dollars. Thanks") == [
        "It costs 3.50 dollars.",
        "Thanks",
    ]
    assert split_sentences("Ask Dr. Smith, e.g. today. Or not.") == [
        "Ask Dr. Smith, e.g. today.",
        "Or not.",
    ]
    assert split_sentences('He said "wow!" Then left.') == [
        'He said "wow!"',
        "Then left.",
    ]
    assert split_sentences("Really?! Yes... Sure.") == ["Really?!", "Yes...", "Sure."]
    assert split_sentences("line one\nline two") == ["line one", "line two"]
    assert split_sentences("   ") == []
    assert split_sentences("Done.\n\n--\n* ") == [
        "Done."
    ]  # bare punctuation is not spoken


def test_splitter_streams_sentences_as_soon_as_they_end() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("It costs 3") == []
    assert splitter.feed(".") == []  # after a digit: could be 3.50
    assert splitter.feed("50 dollars") == []
    # After a letter: a sentence end, without waiting for the next token.
    assert splitter.feed(".") == ["It costs 3.50 dollars."]
    assert splitter.feed(" Ask Dr.") == []  # an abbreviation waits
    assert splitter.feed(" Who") == []
    assert splitter.feed("?") == ["Ask Dr. Who?"]
    assert splitter.feed("!") == []  # a lone mark is not a sentence
    assert splitter.feed(" Next") == []
    assert splitter.flush() == ["Next"]
    assert splitter.flush() == []


def test_splitter_cuts_very_long_unpunctuated_text() -> None:
    splitter = SentenceSplitter(max_chars=40)
    out = splitter.feed(
        "one two three four five, six seven eight nine ten eleven twelve thirteen"
    )
    assert out and all(len(s) <= 40 for s in out)
    assert out[0].endswith(",")
    assert (
        " ".join(out + splitter.flush()).replace("  ", " ").startswith("one two three")
    )


# ---- SSE ---------------------------------------------------------------------------------


def sse_body(deltas: list[str], *, crlf: bool = False) -> bytes:
    eol = "\r\n" if crlf else "\n"
    parts = [": keep-alive comment" + eol + eol]
    parts.append(
        "data: "
        + json.dumps({"choices": [{"delta": {"role": "assistant"}}]})
        + eol
        + eol
    )
    for d in deltas:
        parts.append("event: message" + eol)
        parts.append(
            "data: "
            + json.dumps({"choices": [{"index": 0, "delta": {"content": d}}]})
            + eol
            + eol
        )
    parts.append(
        "data: "
        + json.dumps({"choices": [{"delta": {}, "finish_reason": "stop"}]})
        + eol
        + eol
    )
    parts.append("data: [DONE]" + eol + eol)
    return "".join(parts).encode("utf-8")


DELTAS = [
    "Caf\u00e9 opens at ",
    "nine \u2014 sharp",
    ". Then ",
    "we close at five.",
    " Bye",
    "!",
]


@pytest.mark.parametrize("crlf", [False, True])
def test_sse_parser_survives_every_split_point(crlf: bool) -> None:
    body = sse_body(DELTAS, crlf=crlf)
    expected = "".join(DELTAS)
    for cut in range(1, len(body)):  # includes cuts inside é, — and \r|\n
        parser = SSEParser()
        events = parser.feed(body[:cut]) + parser.feed(body[cut:]) + parser.flush()
        assert events[-1] == "[DONE]"
        text = "".join(parse_chunk(e) for e in events[:-1])
        assert text == expected, cut


def test_sse_parser_byte_by_byte_and_multiline_data() -> None:
    body = b'data: first\ndata: second\n\nretry: 10\nid: 7\ndata:{"x":1}\n\ndata: tail-without-blank-line'
    parser = SSEParser()
    events: list[str] = []
    for i in range(len(body)):
        events += parser.feed(body[i : i + 1])
    events += parser.flush()
    assert events == ["first\nsecond", '{"x":1}', "tail-without-blank-line"]


def test_parse_chunk_shapes_and_errors() -> None:
    assert parse_chunk('{"choices":[{"delta":{"content":"a"}}]}') == "a"
    assert parse_chunk('{"choices":[{"delta":{"content":null}}]}') == ""
    assert parse_chunk('{"choices":[]}') == ""
    assert parse_chunk('{"choices":[{"message":{"content":"whole"}}]}') == "whole"
    with pytest.raises(LLMError, match="model not loaded"):
        parse_chunk('{"error":{"message":"model not loaded"}}')
    with pytest.raises(LLMError, match="malformed"):
        parse_chunk("{nope")


# ---- OpenAI-compatible client against a fake server --------------------------------------


class FakeServer:
    """A tiny /v1/chat/completions: streams ``deltas`` as SSE, in awkward pieces."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.handler: Callable[[web.Request], Any] = self.stream
        self.deltas = DELTAS
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._dispatch)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/v1"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(await request.json())
        self.headers.append(dict(request.headers))
        return await self.handler(request)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        body = sse_body(self.deltas)
        for i in range(0, len(body), 7):  # 7-byte writes split lines, JSON and UTF-8
            await resp.write(body[i : i + 7])
        await resp.write_eof()
        return resp


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    srv = FakeServer()
    await srv.start()
    yield srv
    await srv.stop()


def client(url: str, **overrides: Any) -> OpenAICompatibleLLM:
    return OpenAICompatibleLLM(
        LocalLLMSettings(kind="openai_compatible", base_url=url, model="tiny", **overrides)
    )


async def test_streams_sentences_and_sends_history(server: FakeServer) -> None:
    llm = client(
        server.url + "/", api_key="sk-local", system_prompt="Be brief.", temperature=0.2
    )
    history = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello!"},
    ]
    try:
        sentences = await collect(llm.reply(history, "when do you open?"))
    finally:
        await llm.aclose()
    assert sentences == [
        "Caf\u00e9 opens at nine \u2014 sharp.",
        "Then we close at five.",
        "Bye!",
    ]
    request = server.requests[0]
    assert request["stream"] is True and request["model"] == "tiny"
    assert request["temperature"] == 0.2 and request["max_tokens"] == 200
    assert request["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "when do you open?"},
    ]
    assert server.headers[0]["Authorization"] == "Bearer sk-local"


async def test_history_is_capped(server: FakeServer) -> None:
    llm = client(server.url, max_history_messages=2, system_prompt="")
    history = [{"role": "user", "content": str(i)} for i in range(5)]
    try:
        await collect(llm.reply(history, "now"))
    finally:
        await llm.aclose()
    assert [m["content"] for m in server.requests[0]["messages"]] == ["3", "4", "now"]
    assert "Authorization" not in server.headers[0]


async def test_http_error_becomes_llm_error(server: FakeServer) -> None:
    async def fail(request: web.Request) -> web.Response:
        return web.Response(status=500, text='{"error": "model exploded"}')

    server.handler = fail
    llm = client(server.url)
    try:
        with pytest.raises(LLMError, match=r"HTTP 500.*model exploded"):
            await collect(llm.reply([], "hi"))
    finally:
        await llm.aclose()


async def test_error_object_inside_the_stream(server: FakeServer) -> None:
    async def error_stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"choices":[{"delta":{"content":"Fine. And"}}]}\n\n')
        await resp.write(b'data: {"error":{"message":"context length exceeded"}}\n\n')
        return resp

    server.handler = error_stream
    llm = client(server.url)
    got: list[str] = []
    try:
        with pytest.raises(LLMError, match="context length exceeded"):
            async for sentence in llm.reply([], "hi"):
                got.append(sentence)
    finally:
        await llm.aclose()
    assert got == ["Fine."]


async def test_non_streaming_json_answer_is_accepted(server: FakeServer) -> None:
    async def whole(request: web.Request) -> web.Response:
        return web.json_response(
            {"choices": [{"message": {"role": "assistant", "content": "One. Two."}}]}
        )

    server.handler = whole
    llm = client(server.url)
    try:
        assert await collect(llm.reply([], "hi")) == ["One.", "Two."]
    finally:
        await llm.aclose()


async def test_timeout_becomes_llm_error(server: FakeServer) -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(release.wait(), 5)
        return resp

    server.handler = slow
    llm = client(server.url, timeout_s=0.3)
    try:
        with pytest.raises(LLMError, match="did not answer within 0.3 s"):
            await collect(llm.reply([], "hi"))
    finally:
        release.set()
        await llm.aclose()


async def test_server_down_becomes_llm_error() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    llm = client(f"http://127.0.0.1:{port}/v1")
    try:
        with pytest.raises(LLMError, match="cannot reach LLM server"):
            await collect(llm.reply([], "hi"))
    finally:
        await llm.aclose()


def test_openai_compatible_needs_a_model() -> None:
    with pytest.raises(ValueError, match="llm.model is required"):
        OpenAICompatibleLLM(LocalLLMSettings.model_construct(kind="openai_compatible"))
