"""The simulators' "model" for function calls: which declared function a caller's words
ask for, and what the agent says around it. Pure (text in, decisions out), shared by
the Deepgram and OpenAI Realtime simulators so both behave alike offline.

The simulators have no speech recognition: the caller's words are the simulator's
configured transcript (``transcript`` / ``user_transcript``) or text the client sent
(Deepgram ``InjectUserMessage``, an OpenAI ``input_text`` item: keypresses).

Rules, first match wins, each only when the function is declared:
* "operator", "person", "human" -> ``transfer`` (said first: TRANSFER_LINE);
* "time" -> the first declared function with "time" in its name;
* "goodbye", "bye" -> ``hangup`` (said first: GOODBYE_LINE);
* "pressed <digit>" -> no function; the agent answers ``You pressed <digit>.``
After a function's result: an ``error`` in it -> APOLOGY; a time lookup -> TIME_LINE.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

TRANSFER_LINE = "Of course. I am transferring you to an operator now."
GOODBYE_LINE = "Thank you for calling. Goodbye!"
APOLOGY = "I am sorry, something went wrong on my side. Is there anything else I can help you with?"
TIME_LINE = "It is {time} right now."
DONE_LINE = "Done."

_PRESSED = re.compile(r"\bpressed\s+([0-9*#A-D])\b", re.IGNORECASE)


@dataclass(frozen=True)
class Intent:
    function: str
    arguments: dict[str, Any] = field(default_factory=dict)
    say_before: str | None = None


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def choose_intent(text: str, declared: Iterable[str]) -> Intent | None:
    names = list(declared)
    words = _words(text)
    if "transfer" in names and words & {"operator", "person", "human"}:
        return Intent("transfer", {}, TRANSFER_LINE)
    if "time" in words:
        for name in names:
            if "time" in name.lower():
                return Intent(name, {"zone": "UTC"})
    if "hangup" in names and words & {"goodbye", "bye"}:
        return Intent("hangup", {}, GOODBYE_LINE)
    return None


def keypress_reply(text: str) -> str | None:
    """The answer to a keypress message ("The caller pressed 5 ..."), or None."""
    m = _PRESSED.search(text)
    return f"You pressed {m.group(1)}." if m else None


def reply_after(intent: Intent, content: str) -> str | None:
    """What the agent says once the function answered ``content`` (the result's text)."""
    try:
        result = json.loads(content)
    except ValueError:
        return APOLOGY
    if not isinstance(result, dict) or "error" in result:
        return APOLOGY
    if intent.function in ("transfer", "hangup"):
        return None  # it said its line before; the engine acts now
    if "time" in intent.function.lower():
        return TIME_LINE.format(time=result.get("time", "unknown"))
    return DONE_LINE


class FunctionModel:
    """A simulator's conversation state for function calls: what the caller last said
    (not yet answered), the call waiting for its output, and every call made."""

    def __init__(self) -> None:
        self.user_text: str | None = None
        self.pending: tuple[str, Intent] | None = None
        self.output: tuple[Intent, str] | None = None
        self.calls: list[dict[str, Any]] = []

    def function_output(self, call_id: Any, output: Any) -> bool:
        """A client's output for a call; False when it answers no pending call."""
        if self.pending is None or call_id != self.pending[0] or not isinstance(output, str):
            return False
        intent = self.pending[1]
        self.pending = None
        self.output = (intent, output)
        self.calls.append({"name": intent.function, "call_id": call_id, "output": output})
        return True

    def plan(self, declared: Iterable[str], default_reply: str) -> tuple[str | None, Intent | None]:
        """(what to say, which function to call) for the next response."""
        if self.output is not None:
            intent, output = self.output
            self.output = None
            return reply_after(intent, output), None
        text, self.user_text = self.user_text, None
        if text is None:
            return default_reply, None
        intent = choose_intent(text, declared)
        if intent is not None:
            return intent.say_before, intent
        return keypress_reply(text) or default_reply, None
