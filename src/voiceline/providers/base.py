"""The one interface between the engine and every AI provider.

The engine never compares provider names. A provider declares what it needs
(``ProviderCapabilities``) and talks back only through typed events pushed into
its session's event queue. Audio handed to ``send_audio`` is already in the
provider's declared input format; ``AgentAudio`` carries the declared output
format. Conversion to and from the phone leg is the engine's job.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from voiceline.audio.formats import AudioFormat

log = structlog.get_logger("voiceline.providers")


@dataclass(frozen=True, slots=True)
class ProviderCapabilities:
    input_format: AudioFormat
    output_format: AudioFormat
    # True when the provider detects the caller's turns itself and emits
    # UserStartedSpeaking (Deepgram, OpenAI server VAD, local VAD).
    detects_turns: bool = False
    # True when interrupt() really stops generation on the provider side.
    interruptible: bool = False
    # True when the provider must hear the caller even while the agent's audio
    # plays (no capture gating): diagnostics such as echo, or providers with
    # their own echo cancellation.
    full_duplex: bool = False
    # True when send_audio may be called while start() is still running: the session
    # holds caller audio through its own handshake (bounded, documented by the
    # provider), so the engine forwards from the first frame and holds nothing itself.
    takes_audio_during_start: bool = False


# ---- events a provider session emits -------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgentAudio:
    """A chunk of agent speech of any size, in the provider's output format."""

    data: bytes


@dataclass(frozen=True, slots=True)
class AgentStartedSpeaking:
    """The agent's turn opened. Latencies are the provider's own numbers (ms), if any."""

    total_latency_ms: float | None = None
    tts_latency_ms: float | None = None
    ttt_latency_ms: float | None = None


@dataclass(frozen=True, slots=True)
class AgentAudioDone:
    """The provider has sent every chunk of the current agent turn."""


@dataclass(frozen=True, slots=True)
class AgentThinking:
    content: str = ""


@dataclass(frozen=True, slots=True)
class UserStartedSpeaking:
    """The provider heard the caller start talking: stop playback, drop queued audio."""


@dataclass(frozen=True, slots=True)
class Transcript:
    role: str  # "user" | "assistant"
    text: str
    final: bool = True


@dataclass(frozen=True, slots=True)
class FunctionCallRequest:
    call_id: str
    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    client_side: bool = True


@dataclass(frozen=True, slots=True)
class ProviderWarning:
    message: str
    code: str | None = None


@dataclass(frozen=True, slots=True)
class ProviderError:
    """An error from the provider. ``fatal`` means the session cannot continue."""

    message: str
    code: str | None = None
    fatal: bool = False


@dataclass(frozen=True, slots=True)
class ProviderClosed:
    """The session is over (normally or not); no more events follow."""

    reason: str
    error: bool = False


ProviderEvent = (
    AgentAudio
    | AgentStartedSpeaking
    | AgentAudioDone
    | AgentThinking
    | UserStartedSpeaking
    | Transcript
    | FunctionCallRequest
    | ProviderWarning
    | ProviderError
    | ProviderClosed
)


@dataclass(frozen=True, slots=True)
class CallContext:
    """What a provider may know about the call it serves."""

    call_id: str
    caller_id: str | None = None
    variables: Mapping[str, str] = field(default_factory=dict)


class ProviderSession(ABC):
    """One call's conversation with a provider.

    Subclasses push events with ``self._emit`` (the one emit policy, below); the engine
    consumes ``events()``. ``close`` must be idempotent and must end ``events()`` with
    ``ProviderClosed``. ``send_audio`` is called only after ``start()`` returned, unless
    the session declares ``capabilities.takes_audio_during_start``.
    """

    capabilities: ProviderCapabilities

    def __init__(self, capabilities: ProviderCapabilities, *, queue_size: int = 2000) -> None:
        self.capabilities = capabilities
        # Unbounded asyncio queue; the bound applies to ordinary events only (in _emit),
        # so there is always room for the final ProviderClosed.
        self._events: asyncio.Queue[ProviderEvent] = asyncio.Queue()
        self._queue_limit = queue_size
        self._closed_emitted = False
        # Ordinary events dropped because the engine stopped draining events().
        self.events_dropped = 0
        self._log: Any = log

    def _emit(self, event: ProviderEvent) -> None:
        """Queue ``event`` for ``events()``. Never raises, never blocks.

        * ``ProviderClosed`` is always queued (once), after everything queued before
          it, and ends ``events()``; anything emitted after it is ignored.
        * Any other event is dropped and counted in ``events_dropped`` when
          ``queue_size`` events are already waiting: the engine drains continuously,
          so a full queue means it is wedged, and blocking the provider's reader would
          only hide that. The first drop is logged as an error.
        """
        if self._closed_emitted:
            return
        if isinstance(event, ProviderClosed):
            self._closed_emitted = True
            self._events.put_nowait(event)
            return
        if self._events.qsize() >= self._queue_limit:
            self.events_dropped += 1
            if self.events_dropped == 1:
                self._log.error(
                    "provider event queue full; engine not draining events, dropping new events",
                    dropped=type(event).__name__,
                    limit=self._queue_limit,
                )
            return
        self._events.put_nowait(event)

    async def events(self) -> AsyncIterator[ProviderEvent]:
        while True:
            event = await self._events.get()
            yield event
            if isinstance(event, ProviderClosed):
                return

    @abstractmethod
    async def start(self) -> None:
        """Connect and configure. Raises on failure to connect."""

    @abstractmethod
    async def send_audio(self, audio: bytes) -> None:
        """Caller audio in ``capabilities.input_format``. Must not block for long."""

    async def interrupt(self, played_ms: float | None = None) -> None:
        """The caller barged in; ``played_ms`` of the current turn reached the caller."""

    async def send_dtmf(self, digit: str) -> None:
        """A DTMF digit from the caller. Default: ignored by providers that have no use."""

    async def send_function_result(self, call_id: str, result: Mapping[str, Any]) -> bool:
        """Answer the model's ``FunctionCallRequest`` ``call_id`` with ``result`` (a JSON
        object; a failure is ``{"error": "..."}``) and let the model go on. False when it
        could not be delivered. Default: this provider cannot take results."""
        self._log.warning("function result not deliverable: provider has no function calls", call_id=call_id)
        return False

    @abstractmethod
    async def close(self, reason: str = "call ended") -> None:
        """Release everything; idempotent; ends ``events()`` with ``ProviderClosed``."""


class Provider(ABC):
    """A configured provider: checks availability and creates per-call sessions."""

    name: str

    @abstractmethod
    def availability(self) -> tuple[bool, str]:
        """(usable, reason). Reason says how to fix it when not usable."""

    @abstractmethod
    def create_session(self, ctx: CallContext) -> ProviderSession:
        ...
