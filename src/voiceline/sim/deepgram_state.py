"""Per-connection state of the simulated Deepgram service: the options a call runs with
(constructor defaults, overridden per connection by URL query parameters), the agent
turns it spoke and everything it received, for tests to inspect.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from voiceline.sim.deepgram_delivery import FAULTS, PATTERNS
from voiceline.sim.speech import SpeechDetector

DEFAULT_ANSWER = "Thanks for calling. This is the simulated agent. How can I help you today?"
DEFAULT_TRANSCRIPT = "(caller spoke {seconds:.1f} s)"


@dataclass
class SimOptions:
    pattern: str = "steady"
    speed: float = 1.2
    stall_s: float = 3.0
    seed: int = 0
    answer_text: str = DEFAULT_ANSWER
    greeting: str | None = None  # None: use Settings' agent.greeting; "": no greeting
    long_answer_s: float | None = None
    close_after_s: float | None = None
    error_on_settings: str | None = None
    settings_delay_s: float = 0.0
    think_delay_s: float = 0.15
    call_function: str | None = None
    transcript: str = DEFAULT_TRANSCRIPT
    voice: str = "en-us"
    fault: str | None = None  # one of FAULTS

    def validate(self) -> None:
        if self.pattern not in PATTERNS:
            raise ValueError(f"unknown pattern {self.pattern!r}; one of {', '.join(PATTERNS)}")
        if self.fault is not None and self.fault not in FAULTS:
            raise ValueError(f"unknown fault {self.fault!r}; one of {', '.join(FAULTS)}")
        if self.speed <= 0:
            raise ValueError("speed must be positive")
        for name in ("stall_s", "settings_delay_s", "think_delay_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")


QUERY_TYPES: dict[str, Any] = {
    "pattern": str,
    "speed": float,
    "stall_s": float,
    "seed": int,
    "answer_text": str,
    "greeting": str,
    "long_answer_s": float,
    "close_after_s": float,
    "error_on_settings": str,
    "settings_delay_s": float,
    "think_delay_s": float,
    "call_function": str,
    "transcript": str,
    "voice": str,
    "fault": str,
}


@dataclass
class AgentTurn:
    text: str
    kind: str  # "greeting" | "answer" | "injected"
    audio_bytes: int = 0  # bytes of the whole turn's audio
    bytes_sent: int = 0
    completed: bool = False
    barged_in: bool = False


@dataclass
class SimSession:
    id: str
    options: SimOptions
    received_messages: list[dict[str, Any]] = field(default_factory=list)
    sent_messages: list[dict[str, Any]] = field(default_factory=list)
    sent_raw: list[str] = field(default_factory=list)
    audio_bytes_received: int = 0
    # The caller audio itself, in arrival order (capped at MAX_RECORDED_AUDIO bytes).
    audio_in: bytearray = field(default_factory=bytearray, repr=False)
    audio_bytes_before_settings: int = 0
    agent_audio_bytes_sent: int = 0
    settings: dict[str, Any] | None = None
    applied: bool = False
    turns: list[AgentTurn] = field(default_factory=list)
    utterances: list[float] = field(default_factory=list)  # durations (s)
    errors_sent: list[str] = field(default_factory=list)
    closed: bool = False
    close_code: int | None = None
    input_encoding: str = "linear16"
    input_rate: int = 24000
    output_encoding: str = "linear16"
    output_rate: int = 24000
    # runtime (not for comparison)
    ws: web.WebSocketResponse | None = field(default=None, repr=False)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    detector: SpeechDetector | None = field(default=None, repr=False)
    agent_task: asyncio.Task[None] | None = field(default=None, repr=False)
    speaking: bool = False
    function_results: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict, repr=False)
    # Functions the simulated model called (sim_intents): {name, id, content (None: no answer)}.
    function_calls: list[dict[str, Any]] = field(default_factory=list)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set, repr=False)
    transport: asyncio.BaseTransport | None = field(default=None, repr=False)
    fault_acted: bool = False  # the one-shot faults (close-mid-turn, error) happened

    def message_types(self) -> list[str]:
        return [str(m.get("type")) for m in self.received_messages]
