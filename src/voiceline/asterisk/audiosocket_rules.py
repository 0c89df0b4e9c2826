"""AudioSocket connection rules: a sans-I/O state machine for one inbound connection.

Like ``h11`` for HTTP, the machine never touches a socket or a clock. The asyncio shell
(:class:`voiceline.asterisk.audiosocket.AudioSocketConnection`) feeds it the bytes it reads
with :meth:`ConnectionRules.receive_data`, pulls events with :meth:`ConnectionRules.next_event`
until it gets :data:`NEED_DATA`, and acts on them; the machine decides what is legal.

States (``ConnectionRules.state``)::

    AWAITING_UUID --UUID frame--> AWAITING_DECISION --accept()--> STREAMING
          |                              |
          |                              +--refuse()--> CLOSED (the shell sends the error frame)
          +-- anything terminal (below) from any state --> CLOSED

The rules:

* The UUID frame comes first. Any other frame before it (audio, DTMF, error) is a
  violation. A hangup frame is honoured in every state (Asterisk never sends one, but a
  peer that says "hang up" is ending the connection, not breaking the protocol).
* A second UUID frame is a violation, not ignored: Asterisk sends exactly one, so a
  second means a confused peer or two streams spliced together, and nothing that
  follows can be trusted to belong to this call.
* After the UUID the shell must answer with :meth:`~ConnectionRules.accept` or
  :meth:`~ConnectionRules.refuse` before pulling the next event; refusal makes the
  machine hand back an error frame to send (Asterisk drops the channel on it) and a close.
* Inbound audio of any length from 1 byte up to the decoder's limit is accepted: it
  follows the caller's ptime (10, 20, 30, 60 ms...), and odd lengths occur. Zero-length
  audio is a violation: it carries no samples, Asterisk itself hangs up on one, and the
  codec reports it the moment its header arrives.
* Malformed bytes (unknown kind, oversize length, bad UUID/DTMF/hangup/error lengths)
  are a violation of this connection only; frames that were complete before the bad one
  are still delivered first, so the UUID can be logged.
* No UUID by ``uuid_deadline`` (``started_at + uuid_timeout_s``) ends the connection:
  :meth:`~ConnectionRules.check_timeout` is called by the shell's timer with ``now``.
* Every terminal event carries the close reason and moves the machine to ``CLOSED``;
  after that, data is discarded and :meth:`~ConnectionRules.next_event` returns
  :data:`NEED_DATA`. Closing is always the shell's to do; the machine only says so.

Once a call streams, nearly every read is whole caller audio frames and nothing else.
:meth:`~ConnectionRules.take_audio` hands those back as frames in one step, without
the decoder's buffer, the event queue and one event object per frame; for anything
else (a partial frame, another kind, a bad header, a state other than streaming) it
returns ``None`` having changed nothing, and the general path gives the same result
it always did.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

from voiceline.asterisk.audiosocket_codec import (
    DEFAULT_MAX_AUDIO_PAYLOAD,
    HEADER_SIZE,
    REFUSAL_ERROR_CODE,
    SLIN_RATES,
    Frame,
    FrameDecoder,
    FrameKind,
    ProtocolError,
    encode_error,
    encode_hangup,
)

__all__ = [
    "NEED_DATA",
    "AudioReceived",
    "ConnectionRules",
    "ConnectionState",
    "DtmfReceived",
    "ErrorFrameReceived",
    "Event",
    "NeedData",
    "PeerClosed",
    "PeerHangup",
    "ProtocolViolation",
    "Reply",
    "TerminalEvent",
    "UuidReceived",
    "UuidTimedOut",
]


class ConnectionState(Enum):
    AWAITING_UUID = "awaiting_uuid"
    AWAITING_DECISION = "awaiting_decision"  # UUID delivered; accept() or refuse() is due
    STREAMING = "streaming"
    CLOSED = "closed"


class NeedData:
    """The type of :data:`NEED_DATA` (one instance), for ``isinstance`` checks."""

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = NeedData()
"""Returned by :meth:`ConnectionRules.next_event` when no whole frame is waiting."""


# -- events ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UuidReceived:
    """The call's UUID; answer with ``accept()`` or ``refuse()`` before the next event."""

    uuid: str


@dataclass(frozen=True, slots=True)
class AudioReceived:
    frame: Frame

    @property
    def kind(self) -> FrameKind:
        return self.frame.kind

    @property
    def sample_rate(self) -> int:
        rate = self.frame.sample_rate
        assert rate is not None  # only audio frames become AudioReceived
        return rate

    @property
    def payload(self) -> bytes:
        return self.frame.payload


@dataclass(frozen=True, slots=True)
class DtmfReceived:
    digit: str


@dataclass(frozen=True, slots=True)
class ErrorFrameReceived:
    """An error frame from the peer; ``code`` is ``None`` when it carried no byte."""

    code: int | None


@dataclass(frozen=True, slots=True)
class PeerHangup:
    """The peer sent a hangup frame."""

    close_reason: str = "peer hangup"


@dataclass(frozen=True, slots=True)
class PeerClosed:
    """The peer closed its side; ``truncated_bytes`` of an unfinished frame were left over."""

    truncated_bytes: int = 0
    close_reason: str = "peer closed"


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """The peer broke the protocol; send nothing more, close."""

    reason: str

    @property
    def close_reason(self) -> str:
        return f"protocol error: {self.reason}"


@dataclass(frozen=True, slots=True)
class UuidTimedOut:
    timeout_s: float
    close_reason: str = "no UUID within timeout"


TerminalEvent = PeerHangup | PeerClosed | ProtocolViolation | UuidTimedOut
Event = UuidReceived | AudioReceived | DtmfReceived | ErrorFrameReceived | TerminalEvent
_Terminal = TypeVar("_Terminal", PeerHangup, PeerClosed, ProtocolViolation, UuidTimedOut)


@dataclass(frozen=True, slots=True)
class Reply:
    """What the shell must do: write ``data`` in one send (when not empty), then close."""

    data: bytes
    close_reason: str


# -- the machine ------------------------------------------------------------------


_AUDIO_KIND_BY_BYTE: dict[int, FrameKind] = {kind.value: kind for kind in SLIN_RATES}


class ConnectionRules:
    """The rules of one AudioSocket connection, from Asterisk's side to ours."""

    def __init__(
        self,
        *,
        started_at: float,
        uuid_timeout_s: float,
        max_audio_payload: int = DEFAULT_MAX_AUDIO_PAYLOAD,
    ) -> None:
        if uuid_timeout_s <= 0:
            raise ValueError(f"uuid_timeout_s must be positive, got {uuid_timeout_s}")
        self.uuid_timeout_s = uuid_timeout_s
        self.uuid_deadline_at = started_at + uuid_timeout_s
        self.state = ConnectionState.AWAITING_UUID
        self.uuid: str | None = None
        self.close_reason: str | None = None
        self.frames_received = 0
        self.bytes_received = 0
        self._decoder = FrameDecoder(max_audio_payload)
        self._frames: deque[Frame] = deque()
        self._violation: str | None = None  # the decoder's verdict, reported after the frames before it
        self._eof = False

    # -- inputs -----------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.state is ConnectionState.CLOSED

    @property
    def uuid_deadline(self) -> float | None:
        """When the UUID timeout fires, or ``None`` once it no longer applies."""
        return self.uuid_deadline_at if self.state is ConnectionState.AWAITING_UUID else None

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held by the decoder."""
        return self._decoder.buffered

    def receive_data(self, data: bytes) -> None:
        """Bytes read from the socket. Discarded once the connection is closed or ending."""
        if self.closed or self._violation is not None or self._eof:
            return
        self.bytes_received += len(data)
        try:
            self._frames.extend(self._decoder.feed(data))
        except ProtocolError as error:
            # The frames before the bad one are still events; the violation comes after them.
            self._frames.extend(error.decoded)
            self._violation = error.reason

    def take_audio(self, data: bytes) -> list[Frame] | None:
        """The frames of ``data`` if it is nothing but whole audio frames arriving on a
        streaming connection with nothing pending; ``None`` otherwise, with nothing
        changed (hand ``data`` to :meth:`receive_data` then). Counted as received."""
        if (
            not data
            or self.state is not ConnectionState.STREAMING
            or self._frames
            or self._violation is not None
            or self._eof
            or self._decoder.buffered
        ):
            return None
        size = len(data)
        limit = self._decoder.max_audio_payload
        kinds = _AUDIO_KIND_BY_BYTE
        frames: list[Frame] = []
        offset = 0
        while offset < size:
            if size - offset < HEADER_SIZE:
                return None
            kind = kinds.get(data[offset])
            length = (data[offset + 1] << 8) | data[offset + 2]  # big-endian, as HEADER
            end = offset + HEADER_SIZE + length
            if kind is None or not 0 < length <= limit or end > size:
                return None
            frames.append(Frame(kind, data[offset + HEADER_SIZE : end]))
            offset = end
        self.bytes_received += size
        self.frames_received += len(frames)
        return frames

    def receive_eof(self) -> None:
        """The peer closed its side; reported after the frames already received."""
        self._eof = True

    def next_event(self) -> Event | NeedData:
        if self.state is ConnectionState.AWAITING_DECISION:
            raise RuntimeError("the UUID must be answered with accept() or refuse() before the next event")
        if self.closed:
            return NEED_DATA
        if self._frames:
            self.frames_received += 1
            return self._frame_event(self._frames.popleft())
        if self._violation is not None:
            return self._end(ProtocolViolation(self._violation))
        if self._eof:
            return self._end(PeerClosed(truncated_bytes=self._decoder.buffered))
        return NEED_DATA

    def check_timeout(self, now: float) -> UuidTimedOut | None:
        """The UUID timeout, if it is due at ``now``; ``None`` otherwise (also once it no longer applies)."""
        if self.state is ConnectionState.AWAITING_UUID and now >= self.uuid_deadline_at:
            return self._end(UuidTimedOut(self.uuid_timeout_s))
        return None

    # -- decisions and local endings --------------------------------------------------

    def accept(self) -> None:
        self._require_decision("accept")
        self.state = ConnectionState.STREAMING

    def refuse(self, reason: str) -> Reply:
        """Refuse the call: the error frame to send, then close with ``reason``."""
        self._require_decision("refuse")
        self._close(reason)
        return Reply(encode_error(REFUSAL_ERROR_CODE), reason)

    def hangup(self) -> Reply | None:
        """Hang up from our side: the hangup frame to send, then close. ``None`` if already closed."""
        if self.closed:
            return None
        self._close("local hangup")
        return Reply(encode_hangup(), "local hangup")

    def close(self, reason: str) -> bool:
        """Mark the connection closed (local decision or lost transport); ``False`` if it already was."""
        if self.closed:
            return False
        self._close(reason)
        return True

    # -- internals ----------------------------------------------------------------

    def _frame_event(self, frame: Frame) -> Event:
        kind = frame.kind
        if kind is FrameKind.HANGUP:
            return self._end(PeerHangup())
        if kind is FrameKind.UUID:
            if self.state is not ConnectionState.AWAITING_UUID:
                return self._end(ProtocolViolation("second UUID frame"))
            self.uuid = frame.uuid
            self.state = ConnectionState.AWAITING_DECISION
            return UuidReceived(self.uuid)
        if self.state is ConnectionState.AWAITING_UUID:
            return self._end(ProtocolViolation(f"{kind.name} frame before UUID"))
        if frame.is_audio:
            return AudioReceived(frame)
        if kind is FrameKind.DTMF:
            return DtmfReceived(frame.dtmf)
        if kind is FrameKind.ERROR:
            return ErrorFrameReceived(frame.error_code)
        # Every FrameKind is handled above; this guards a kind added to the codec later.
        return self._end(ProtocolViolation(f"unhandled frame kind {kind.name}"))

    def _end(self, event: _Terminal) -> _Terminal:
        self._close(event.close_reason)
        return event

    def _close(self, reason: str) -> None:
        self.state = ConnectionState.CLOSED
        self.close_reason = reason
        self._frames.clear()

    def _require_decision(self, action: str) -> None:
        if self.state is not ConnectionState.AWAITING_DECISION:
            raise RuntimeError(f"{action}() is only valid right after the UUID, not in state {self.state.value}")
