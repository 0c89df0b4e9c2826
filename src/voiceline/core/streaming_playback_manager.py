"""The asyncio-side glue between each call's ``OutboundStream`` and the one ``Pacer``.

``StreamingPlaybackManager`` registers each stream's tick with the single ``Pacer``,
hands the frame to ``send_frame`` and dispatches/logs events. It never touches
timing itself. The per-call state machine is ``voiceline.core.outbound_stream``;
its settings, events and stats live in ``stream_params``, ``stream_events`` and
``stream_stats``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import structlog

from voiceline.audio.formats import AudioFormat
from voiceline.core.log_levels import is_debug
from voiceline.core.outbound_stream import OutboundStream
from voiceline.core.pacer import Pacer
from voiceline.core.stream_events import (
    FallbackRequested,
    FlushResult,
    StreamEvent,
    StreamingEnded,
    StreamingStarted,
)
from voiceline.core.stream_params import StreamParams

__all__ = ["StreamingPlaybackManager"]

log = structlog.get_logger("voiceline.streaming")


class _Entry:
    __slots__ = ("on_event", "stream")

    def __init__(
        self, stream: OutboundStream, on_event: Callable[[StreamEvent], None] | None
    ) -> None:
        self.stream = stream
        self.on_event = on_event


class StreamingPlaybackManager:
    """Registers each call's ``OutboundStream`` with the single ``Pacer``.

    Per tick it calls ``stream.tick(now)`` and hands the frame to ``send_frame``,
    which must be a plain non-blocking call (e.g. ``transport.write``); returning an
    awaitable is an error (it would never run). Logs ``STREAMING STARTED`` /
    ``STREAMING ENDED`` once per turn at INFO.

    If a stream's tick or its ``send_frame`` raises, the pacer logs it with its
    traceback and counts it (``Pacer.stats.tick_errors``); the stream is dropped
    from the manager (``get`` returns None, ``close`` is a no-op, the call id may be
    opened again) and the owner's ``on_failure(exc)`` is called once, so it can end
    the call: the caller would otherwise hear nothing for the rest of it. No further
    event comes from that stream (a turn in progress gets no ``StreamingEnded``).
    """

    def __init__(
        self,
        params: StreamParams,
        pacer: Pacer,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        params.validate()
        if abs(pacer.period_s * 1000.0 - params.chunk_size_ms) > 1e-6:
            raise ValueError(
                f"chunk_size_ms ({params.chunk_size_ms}) must equal the pacer period"
                f" ({pacer.period_s * 1000.0:g} ms)"
            )
        self._params = params
        self._pacer = pacer
        self._clock = clock if clock is not None else pacer.now
        self._debug = is_debug(params.logging_level)
        self._entries: dict[str, _Entry] = {}

    @property
    def params(self) -> StreamParams:
        return self._params

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, call_id: str) -> OutboundStream | None:
        entry = self._entries.get(call_id)
        return entry.stream if entry is not None else None

    def open(
        self,
        call_id: str,
        wire_format: AudioFormat,
        send_frame: Callable[[bytes], None],
        on_event: Callable[[StreamEvent], None] | None = None,
        on_failure: Callable[[BaseException], None] | None = None,
        frame_sent: Callable[[bytes, float], None] | None = None,
        poll_inbound: Callable[[], None] | None = None,
    ) -> OutboundStream:
        """Start ticking a new stream for ``call_id``.

        Each tick the stream's frame goes to ``send_frame(frame)`` (with every other
        stream's, back to back: keep it to the write), then to ``frame_sent(frame,
        now)`` for whatever bookkeeping reads what was sent. Both, ``on_event(event)``
        and ``on_failure(exc)`` (once, after the stream was removed) run inside the
        pacer tick and must not block (schedule the call's teardown, do not await it
        here). ``poll_inbound()`` runs last in every tick (see ``Pacer.register``).
        """
        if call_id in self._entries:
            raise ValueError(f"a stream for call {call_id!r} is already open")
        if inspect.iscoroutinefunction(send_frame):
            # A coroutine would never run inside the tick: the audio would silently vanish.
            raise TypeError(f"send_frame for call {call_id!r} is a coroutine function; it must be synchronous")
        entry_box: list[_Entry] = []

        def handle(event: StreamEvent) -> None:
            self._log_event(event)
            cb = entry_box[0].on_event
            if cb is not None:
                cb(event)

        stream = OutboundStream(call_id, wire_format, self._params, on_event=handle)
        entry = _Entry(stream, on_event)
        entry_box.append(entry)

        def failed(exc: BaseException) -> None:
            if self._entries.get(call_id) is entry:
                del self._entries[call_id]
            if on_failure is not None:
                on_failure(exc)

        def tick(now: float) -> bytes:
            return stream.tick(now)

        self._pacer.register(call_id, tick, on_error=failed, write_fn=send_frame, sent_fn=frame_sent,
                            poll_fn=poll_inbound)
        self._entries[call_id] = entry
        if self._debug:
            log.debug(
                "streaming opened",
                call_id=call_id,
                wire_format=str(wire_format),
                frame_bytes=stream.frame_bytes,
            )
        return stream

    def close(self, call_id: str) -> FlushResult | None:
        """End an open turn with reason "call-ended" and stop ticking. Idempotent."""
        entry = self._entries.pop(call_id, None)
        if entry is None:
            return None
        self._pacer.unregister(call_id)
        result = entry.stream.close(self._clock())
        if self._debug:
            log.debug(
                "streaming closed", call_id=call_id, **entry.stream.stats.as_dict()
            )
        return result

    def _log_event(self, event: StreamEvent) -> None:
        if isinstance(event, StreamingStarted):
            log.info(
                "STREAMING STARTED",
                call_id=event.call_id,
                turn_id=event.turn_id,
                first_frame_latency_ms=round(event.first_frame_latency_ms, 1),
                depth_frames=event.depth,
            )
        elif isinstance(event, StreamingEnded):
            log.info(
                "STREAMING ENDED",
                call_id=event.call_id,
                turn_id=event.turn_id,
                reason=event.reason,
                frames_sent=event.frames_sent,
                silence_frames_inserted=event.silence_frames_inserted,
                pauses=event.pauses,
                duration_ms=event.duration_ms,
                late_chunks_dropped=event.late_chunks_dropped,
            )
        elif isinstance(event, FallbackRequested):
            log.warning(
                "streaming fallback requested",
                call_id=event.call_id,
                turn_id=event.turn_id,
                playback_id=event.playback_id,
                audio_bytes=len(event.audio),
            )
        # Paused/Resumed are logged at debug by the stream itself.
