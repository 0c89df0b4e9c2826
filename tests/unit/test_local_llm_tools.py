"""The openai_compatible reply generator's function calls: streamed tool_calls pieces
become whole calls; the conversation sent back keeps them with their results."""

from __future__ import annotations

from voiceline.config import LocalLLMSettings
from voiceline.providers.local.llm import OpenAICompatibleLLM, ToolCall, ToolCallAccumulator, parse_chunk_full


def test_pieces_of_several_calls_are_joined_by_index() -> None:
    acc = ToolCallAccumulator()
    acc.feed([{"index": 0, "id": "a", "function": {"name": "get_", "arguments": '{"z'}}])
    acc.feed([{"index": 1, "id": "b", "function": {"name": "hangup"}}, {"index": 0, "function": {"name": "time"}}])
    acc.feed([{"index": 0, "function": {"arguments": '": 1}'}}, "junk"])
    assert acc.calls() == [ToolCall("a", "get_time", '{"z": 1}'), ToolCall("b", "hangup", "{}")]


def test_chunk_with_text_and_tool_calls() -> None:
    text, calls = parse_chunk_full('{"choices": [{"delta": {"content": "Hi", "tool_calls": [{"index": 0}]}}]}')
    assert text == "Hi" and calls == [{"index": 0}]
    assert parse_chunk_full('{"choices": []}') == ("", [])


def test_payload_offers_tools_and_goes_on_without_a_new_user_message() -> None:
    tools = [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]
    llm = OpenAICompatibleLLM(LocalLLMSettings(kind="openai_compatible", model="m", max_history_messages=2), tools)
    history = [
        {"role": "user", "content": "time?"},
        {"role": "assistant", "content": None, "tool_calls": [ToolCall("c", "get_time", "{}").message_entry()]},
        {"role": "tool", "tool_call_id": "c", "content": "{}"},
    ]
    payload = llm.build_payload(history, None)
    assert payload["tools"] == tools
    # The history window starts after the user message; it keeps the call and its result together.
    assert [m["role"] for m in payload["messages"][1:]] == ["assistant", "tool"]
    short = OpenAICompatibleLLM(LocalLLMSettings(kind="openai_compatible", model="m", max_history_messages=1))
    # A window that would start with a bare tool result drops it.
    assert [m["role"] for m in short.build_payload(history, "next")["messages"][1:]] == ["user"]
    assert "tools" not in short.build_payload(history, "next")


def test_tool_call_arguments_become_a_mapping_whatever_the_model_sent() -> None:
    from voiceline.providers.functions import arguments_from_json

    assert arguments_from_json('{"zone": "UTC"}') == {"zone": "UTC"}
    assert arguments_from_json("[1, 2]") == {"_value": [1, 2]}
    assert arguments_from_json('{"zone": ') == {"_raw": '{"zone": '}
