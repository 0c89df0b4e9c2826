"""AudioSocket server: the asyncio shell around the codec and the connection rules
(``audiosocket_codec``, ``audiosocket_rules``).

:class:`AudioSocketServer` is built on :class:`asyncio.Protocol` rather than
streams: ``data_received`` is a plain callback that never awaits, so a slow
consumer can never stall the socket reader, and a connection costs one object
instead of a reader task per call.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import structlog

from voiceline.asterisk.audiosocket_codec import (
    DEFAULT_MAX_AUDIO_PAYLOAD,
    HEADER_SIZE,
    MAX_PAYLOAD,
    Frame,
    FrameKind,
    _encode_audio_kind,
)
from voiceline.asterisk.audiosocket_rules import (
    AudioReceived,
    ConnectionRules,
    DtmfReceived,
    ErrorFrameReceived,
    Event,
    NeedData,
    PeerClosed,
    PeerHangup,
    ProtocolViolation,
    UuidReceived,
)

__all__ = [
    "AcceptFn",
    "AudioSocketConnection",
    "AudioSocketHandler",
    "AudioSocketServer",
]

log = structlog.get_logger("voiceline.audiosocket")

# After close() a transport flushes what is buffered; a peer that stopped
# reading would hold the socket open forever, so it is aborted after this long.
CLOSE_LINGER_S = 1.0
LISTEN_BACKLOG = 1024
# One polled read takes up to this much: two seconds of 16 kHz audio, far more than a tick's worth.
_POLL_READ_BYTES = 65536


class AudioSocketHandler(Protocol):
    """Per-call sink the engine supplies. All methods run on the event loop and must not block."""

    def on_audio(self, frame: Frame) -> None: ...

    def on_dtmf(self, digit: str) -> None: ...

    def on_error_frame(self, code: int | None) -> None: ...

    def on_closed(self, reason: str) -> None:
        """Called exactly once per accepted connection, whatever ended it."""
        ...


AcceptFn = Callable[["AudioSocketConnection"], "AudioSocketHandler | None"]
"""Called once the UUID frame arrived (``conn.uuid`` and ``conn.peer`` are set).

Return the call's handler, or ``None`` to refuse: the server then sends an
error frame with ``audiosocket_codec.REFUSAL_ERROR_CODE``, which makes Asterisk drop the
channel, and closes the connection.
"""

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_allowed_peers(allowed_peers: Sequence[str]) -> tuple[IPNetwork, ...]:
    """Networks from CIDR strings or plain addresses; host bits set are a config error."""
    if isinstance(allowed_peers, str):
        # A bare string would be iterated character by character.
        raise TypeError("allowed_peers must be a sequence of networks, not a single string")
    networks = tuple(ipaddress.ip_network(entry, strict=True) for entry in allowed_peers)
    if not networks:
        raise ValueError("allowed_peers is empty: every connection would be refused")
    return networks


def normalise_peer_address(host: str) -> IPAddress:
    """The peer's IP, with IPv4-mapped IPv6 (``::ffff:a.b.c.d``) turned back into IPv4."""
    address = ipaddress.ip_address(host.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def peer_is_allowed(address: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    return any(address.version == net.version and address in net for net in networks)


class AudioSocketConnection(asyncio.Protocol):
    """One Asterisk channel's socket: moves bytes between it and :class:`ConnectionRules`.

    The rules (what is legal in which order, the UUID timeout, refusal) live in the
    sans-I/O machine in ``audiosocket_rules``; this adapter only reads, writes, runs the
    UUID timer and calls the handler. Created by :class:`AudioSocketServer`; the engine
    only uses ``send_audio``, ``send_hangup``, ``close`` and the counters.
    """

    def __init__(
        self,
        accept: AcceptFn,
        *,
        allowed_networks: Sequence[IPNetwork],
        uuid_timeout_s: float,
        write_limit_bytes: int,
        max_audio_payload: int,
        on_transport_lost: Callable[[AudioSocketConnection], None] | None = None,
    ) -> None:
        self._accept = accept
        self._allowed_networks = tuple(allowed_networks)
        self.write_limit_bytes = write_limit_bytes
        self._on_transport_lost = on_transport_lost
        loop = asyncio.get_running_loop()
        # The loop's clock, so the rules' UUID deadline can be handed to call_at as is.
        self._rules = ConnectionRules(
            started_at=loop.time(), uuid_timeout_s=uuid_timeout_s, max_audio_payload=max_audio_payload
        )

        self.uuid: str | None = None
        self.peer: tuple[str, int] = ("", 0)
        self.closed = False
        self.close_reason: str | None = None
        self.connected_at = time.monotonic()

        self.frames_out = 0
        self.bytes_out = 0
        self.dropped_frames = 0

        self._transport: asyncio.Transport | None = None
        self._handler: AudioSocketHandler | None = None
        self._uuid_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self._dropped_in_burst = 0
        self._polled_fd: int | None = None
        self._log = log
        self.transport_lost: asyncio.Future[None] = loop.create_future()

    # -- public API ---------------------------------------------------------

    @property
    def frames_in(self) -> int:
        return self._rules.frames_received

    @property
    def bytes_in(self) -> int:
        return self._rules.bytes_received

    @property
    def pending_write_bytes(self) -> int:
        """Bytes queued in the transport, waiting for the peer's socket to accept them."""
        if self._transport is None:
            return 0
        return self._transport.get_write_buffer_size()

    def send_audio(self, payload: bytes, kind: FrameKind = FrameKind.SLIN_8K) -> bool:
        """Queue one audio frame; ``False`` if it was dropped or the connection is closed.

        Real-time audio that cannot be delivered now is worthless later, so
        instead of letting the buffer grow without bound we drop frames once
        ``write_limit_bytes`` would be exceeded.
        """
        frame_bytes = _encode_audio_kind(kind, payload)
        if self.closed or self._transport is None:
            return False
        if self._transport.get_write_buffer_size() + len(frame_bytes) > self.write_limit_bytes:
            self.dropped_frames += 1
            if self._dropped_in_burst == 0:
                self._log.warning(
                    "audiosocket_write_backlog_dropping",
                    pending_bytes=self._transport.get_write_buffer_size(),
                    write_limit_bytes=self.write_limit_bytes,
                )
            self._dropped_in_burst += 1
            return False
        if self._dropped_in_burst:
            self._log.info("audiosocket_write_backlog_cleared", dropped_frames=self._dropped_in_burst)
            self._dropped_in_burst = 0
        self._write(frame_bytes)
        return True

    def poll_read(self) -> None:
        """Read and handle everything the peer sent since the last poll.

        Called by the media plane's 20 ms tick once the call streams: the first call
        takes the socket out of the event loop's reader set, so caller frames no
        longer arrive as one loop callback each (a few hundred per 20 ms at scale,
        every one of them able to delay the tick), but in one non-blocking read per
        call per tick, handled just before that tick decides what to play. Frames,
        EOF and errors then take exactly the paths ``data_received``,
        ``eof_received`` and ``connection_lost`` give them.
        """
        transport = self._transport
        if self.closed or transport is None:
            return
        fd = self._polled_fd
        if fd is None:
            sock = transport.get_extra_info("socket")
            if sock is None:  # not a socket transport (tests): the loop keeps reading
                return
            fd = self._polled_fd = sock.fileno()
            transport.pause_reading()
        while not self.closed:
            try:
                data = os.read(fd, _POLL_READ_BYTES)
            except BlockingIOError:
                return
            except OSError as error:  # reset by the peer, or the socket is gone
                self.close(f"connection lost: {error}")
                transport.abort()
                return
            if not data:
                self.eof_received()
                if not self.closed:
                    self.close("peer closed")
                return
            self.data_received(data)
            if len(data) < _POLL_READ_BYTES:
                return

    def send_hangup(self) -> None:
        """Tell Asterisk to hang up the channel, then close our side once it is flushed."""
        if self.closed or self._transport is None:
            return
        reply = self._rules.hangup()
        if reply is None:
            return
        self._write(reply.data)
        self.close(reply.close_reason)

    def close(self, reason: str) -> None:
        """Close the connection; idempotent. The handler's ``on_closed`` runs once."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self._rules.close(reason)
        self._cancel_uuid_timer()
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.close()
            if transport.get_write_buffer_size():
                loop = asyncio.get_running_loop()
                self._linger_timer = loop.call_later(CLOSE_LINGER_S, transport.abort)
        log_close = self._log.info if self.uuid is not None else self._log.debug
        log_close(
            "audiosocket_closed",
            reason=reason,
            frames_in=self.frames_in,
            frames_out=self.frames_out,
            dropped_frames=self.dropped_frames,
            duration_s=round(time.monotonic() - self.connected_at, 3),
        )
        handler, self._handler = self._handler, None
        if handler is not None:
            try:
                handler.on_closed(reason)
            except Exception:  # noqa: BLE001 - engine code must never break teardown; logged with traceback
                self._log.exception("audiosocket_handler_failed", callback="on_closed")

    # -- asyncio.Protocol callbacks ----------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self.connected_at = time.monotonic()
        peername = transport.get_extra_info("peername")
        if not peername:
            # The peer reset before asyncio could ask for its address: nothing to serve.
            self._log.info("audiosocket_peer_vanished")
            self.close("peer address unavailable")
            return
        address = normalise_peer_address(peername[0])
        self.peer = (str(address), int(peername[1]))
        self._log = log.bind(peer=f"{self.peer[0]}:{self.peer[1]}")

        if not peer_is_allowed(address, self._allowed_networks):
            self._log.warning("audiosocket_peer_not_allowed")
            self.close("peer not allowed")
            return
        self._set_nodelay(transport)
        self._arm_uuid_timer()
        self._log.debug("audiosocket_connected")

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        frames = self._rules.take_audio(data)
        if frames is None:
            self._rules.receive_data(data)
            self._process_events()
            return
        # The streaming fast path: nothing but whole audio frames, straight to the
        # handler through the general path's isolation (a handler that raises, or
        # closes the connection, ends the delivery after that frame).
        for frame in frames:
            if self.closed:
                return
            self._call_handler("on_audio", frame)

    def eof_received(self) -> bool:
        if not self.closed:
            self._rules.receive_eof()
            self._process_events()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        self.close("peer closed" if exc is None else f"connection lost: {exc}")
        if not self.transport_lost.done():
            self.transport_lost.set_result(None)
        if self._on_transport_lost is not None:
            self._on_transport_lost(self)

    # -- internals ----------------------------------------------------------

    def _write(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(data)  # one write per frame: header and payload leave together
        self.frames_out += 1
        self.bytes_out += len(data)

    def _set_nodelay(self, transport: asyncio.Transport) -> None:
        # asyncio already sets TCP_NODELAY on TCP sockets, but 20 ms audio frames
        # must not wait for Nagle, so make it explicit for any loop implementation.
        sock = transport.get_extra_info("socket")
        if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as error:
            self._log.warning("audiosocket_nodelay_failed", error=str(error))

    def _process_events(self) -> None:
        # A handler may close the connection from inside a callback: check before every event.
        while not self.closed:
            event = self._rules.next_event()
            if isinstance(event, NeedData):
                return
            self._handle(event)

    def _handle(self, event: Event) -> None:
        if isinstance(event, AudioReceived):
            self._call_handler("on_audio", event.frame)
        elif isinstance(event, DtmfReceived):
            self._call_handler("on_dtmf", event.digit)
        elif isinstance(event, ErrorFrameReceived):
            # Debug only: the handler decides how loudly a peer error is reported.
            self._log.debug("audiosocket_peer_error", code=event.code)
            self._call_handler("on_error_frame", event.code)
        elif isinstance(event, UuidReceived):
            self._on_uuid(event.uuid)
        elif isinstance(event, ProtocolViolation):
            # The stream can no longer be trusted: send nothing more, just close.
            self._log.warning("audiosocket_protocol_error", reason=event.reason)
            self.close(event.close_reason)
        elif isinstance(event, PeerClosed):
            if event.truncated_bytes:
                # Asterisk only ever writes whole frames; a partial one hints at a crash or a proxy.
                self._log.warning("audiosocket_truncated_frame", buffered_bytes=event.truncated_bytes)
            self.close(event.close_reason)
        elif isinstance(event, PeerHangup):
            self.close(event.close_reason)
        else:  # every event type is handled above; this guards future additions
            self._log.error("audiosocket_unhandled_event", event_type=type(event).__name__)
            self.close(f"unhandled event {type(event).__name__}")

    def _on_uuid(self, call_uuid: str) -> None:
        self._cancel_uuid_timer()
        self.uuid = call_uuid
        self._log = self._log.bind(call_id=call_uuid)
        try:
            handler = self._accept(self)
        except Exception:  # noqa: BLE001 - one call's bug must not reach the event loop; logged with traceback
            self._log.exception("audiosocket_accept_failed")
            self._refuse("accept failed")
            return
        if self.closed:  # accept() itself closed the connection
            return
        if handler is None:
            self._refuse("refused by accept")
            return
        self._rules.accept()
        self._handler = handler
        self._log.info("audiosocket_accepted")

    def _refuse(self, reason: str) -> None:
        if self.closed:
            return
        self._log.info("audiosocket_refused", reason=reason)
        reply = self._rules.refuse(reason)
        if self._transport is not None:
            self._write(reply.data)
        self.close(reply.close_reason)

    def _call_handler(self, callback: str, argument: object) -> None:
        handler = self._handler
        assert handler is not None
        try:
            getattr(handler, callback)(argument)
        except Exception as error:  # noqa: BLE001 - isolate the call: log with traceback, end only this connection
            self._log.exception("audiosocket_handler_failed", callback=callback)
            self.close(f"handler error in {callback}: {type(error).__name__}")

    def _arm_uuid_timer(self) -> None:
        deadline = self._rules.uuid_deadline
        if deadline is not None:
            self._uuid_timer = asyncio.get_running_loop().call_at(deadline, self._on_uuid_timer)

    def _on_uuid_timer(self) -> None:
        self._uuid_timer = None
        if self.closed:
            return
        timed_out = self._rules.check_timeout(asyncio.get_running_loop().time())
        if timed_out is None:
            # The loop may run a timer a clock tick early: wait for the real deadline.
            self._arm_uuid_timer()
            return
        self._log.warning("audiosocket_uuid_timeout", timeout_s=timed_out.timeout_s)
        self.close(timed_out.close_reason)

    def _cancel_uuid_timer(self) -> None:
        if self._uuid_timer is not None:
            self._uuid_timer.cancel()
            self._uuid_timer = None


class _RefusedConnection(asyncio.Protocol):
    """A connection that arrived after ``stop_accepting()``: closed as soon as it is made."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class AudioSocketServer:
    """Listens for Asterisk's AudioSocket connections and hands each call to ``accept``."""

    def __init__(
        self,
        host: str,
        port: int,
        accept: AcceptFn,
        *,
        allowed_peers: Sequence[str] = ("127.0.0.1/32", "::1/128"),
        uuid_timeout_s: float = 5.0,
        write_limit_bytes: int = 65536,
        max_audio_payload: int = DEFAULT_MAX_AUDIO_PAYLOAD,
        reuse_port: bool = False,  # SO_REUSEPORT: engine worker processes share the port
    ) -> None:
        self._reuse_port = reuse_port
        if uuid_timeout_s <= 0:
            raise ValueError(f"uuid_timeout_s must be positive, got {uuid_timeout_s}")
        if write_limit_bytes <= HEADER_SIZE:
            raise ValueError(f"write_limit_bytes must exceed one frame header, got {write_limit_bytes}")
        if not 1 <= max_audio_payload <= MAX_PAYLOAD:
            raise ValueError(f"max_audio_payload must be within 1..{MAX_PAYLOAD}, got {max_audio_payload}")
        self.host = host
        self.port = port
        self._accept = accept
        self._allowed_networks = parse_allowed_peers(allowed_peers)
        self._uuid_timeout_s = uuid_timeout_s
        self._write_limit_bytes = write_limit_bytes
        self._max_audio_payload = max_audio_payload
        self._server: asyncio.Server | None = None
        self._draining = False
        self.refused_while_draining = 0
        # Connections whose transport is still alive, including ones flushing after close().
        self._live: set[AudioSocketConnection] = set()

    @property
    def bound_port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("server is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def connections(self) -> int:
        """Open connections (closed ones still flushing are not counted)."""
        return sum(1 for conn in self._live if not conn.closed)

    @property
    def accepting(self) -> bool:
        """True while the server is started and new connections are served (not draining)."""
        return self._server is not None and not self._draining

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("server already started")
        loop = asyncio.get_running_loop()
        self._draining = False
        # A larger accept backlog than asyncio's 100: a burst of calls (or a restart
        # with Asterisk reconnecting) must not leave SYNs waiting on retransmit timers.
        self._server = await loop.create_server(self._new_connection, self.host, self.port, backlog=LISTEN_BACKLOG,
                                               reuse_port=self._reuse_port or None)
        log.info("audiosocket_listening", host=self.host, port=self.bound_port)

    def stop_accepting(self) -> None:
        """Start draining: every new connection is closed at once, live ones go on. Idempotent.

        The listener stays bound (the port stays ours until ``stop()``), and each refused
        connection is counted in ``refused_while_draining``; Asterisk sees its socket closed
        and ends that channel.
        Connections already made (even those still waiting for their UUID) are live calls
        and are left alone; ``stop()`` ends them.
        """
        if self._draining or self._server is None:
            return
        self._draining = True
        log.info("audiosocket_stopped_accepting", live_connections=self.connections)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for conn in list(self._live):
            conn.close("server stopping")
        pending = [conn.transport_lost for conn in self._live]
        if pending:
            # Every transport is gone within the close linger (aborted at worst).
            await asyncio.wait(pending, timeout=CLOSE_LINGER_S * 2)
        await server.wait_closed()
        log.info("audiosocket_stopped", refused_while_draining=self.refused_while_draining)

    def _new_connection(self) -> asyncio.Protocol:
        if self._draining:
            self.refused_while_draining += 1
            # Once at INFO (a draining node turning calls away is expected), then DEBUG: a
            # burst of new calls during a drain must not become a storm of log lines.
            log_refusal = log.info if self.refused_while_draining == 1 else log.debug
            log_refusal("audiosocket_refusing_while_draining", refused=self.refused_while_draining)
            return _RefusedConnection()
        conn = AudioSocketConnection(
            self._accept,
            allowed_networks=self._allowed_networks,
            uuid_timeout_s=self._uuid_timeout_s,
            write_limit_bytes=self._write_limit_bytes,
            max_audio_payload=self._max_audio_payload,
            on_transport_lost=self._live.discard,
        )
        self._live.add(conn)
        return conn
