"""AudioSocket server: the asyncio shell around the codec (``audiosocket_codec``).

:class:`AudioSocketServer` is built on :class:`asyncio.Protocol` rather than
streams: ``data_received`` is a plain callback that never awaits, so a slow
consumer can never stall the socket reader, and a connection costs one object
instead of a reader task per call.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import structlog

from voiceline.asterisk.audiosocket_codec import (
    DEFAULT_MAX_AUDIO_PAYLOAD,
    HEADER_SIZE,
    MAX_PAYLOAD,
    REFUSAL_ERROR_CODE,
    Frame,
    FrameDecoder,
    FrameKind,
    ProtocolError,
    _encode_audio_kind,
    encode_error,
    encode_hangup,
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
error frame with :data:`REFUSAL_ERROR_CODE`, which makes Asterisk drop the
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
    """One Asterisk channel's socket: decodes inbound frames, writes outbound ones.

    Created by :class:`AudioSocketServer`; the engine only uses ``send_audio``,
    ``send_hangup``, ``close`` and the counters.
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
        self._uuid_timeout_s = uuid_timeout_s
        self.write_limit_bytes = write_limit_bytes
        self._decoder = FrameDecoder(max_audio_payload)
        self._on_transport_lost = on_transport_lost

        self.uuid: str | None = None
        self.peer: tuple[str, int] = ("", 0)
        self.closed = False
        self.close_reason: str | None = None
        self.connected_at = time.monotonic()

        self.frames_in = 0
        self.frames_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.dropped_frames = 0

        self._transport: asyncio.Transport | None = None
        self._handler: AudioSocketHandler | None = None
        self._uuid_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self._dropped_in_burst = 0
        self._log = log
        self.transport_lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- public API ---------------------------------------------------------

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

    def send_hangup(self) -> None:
        """Tell Asterisk to hang up the channel, then close our side once it is flushed."""
        if self.closed or self._transport is None:
            return
        self._write(encode_hangup())
        self.close("local hangup")

    def close(self, reason: str) -> None:
        """Close the connection; idempotent. The handler's ``on_closed`` runs once."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
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
        loop = asyncio.get_running_loop()
        self._uuid_timer = loop.call_later(self._uuid_timeout_s, self._on_uuid_timeout)
        self._log.debug("audiosocket_connected")

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.bytes_in += len(data)
        try:
            frames = self._decoder.feed(data)
        except ProtocolError as error:
            # Act on what was valid before the bad frame (e.g. learn the UUID for the log).
            self._dispatch_all(error.decoded)
            if not self.closed:
                self._fail(error.reason)
            return
        self._dispatch_all(frames)

    def eof_received(self) -> bool:
        if self._decoder.buffered and not self.closed:
            # Asterisk only ever writes whole frames; a partial one hints at a crash or a proxy.
            self._log.warning("audiosocket_truncated_frame", buffered_bytes=self._decoder.buffered)
        self.close("peer closed")
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

    def _dispatch_all(self, frames: Sequence[Frame]) -> None:
        for frame in frames:
            if self.closed:
                return
            self.frames_in += 1
            self._dispatch(frame)

    def _dispatch(self, frame: Frame) -> None:
        kind = frame.kind
        if kind is FrameKind.HANGUP:
            self.close("peer hangup")
        elif kind is FrameKind.UUID:
            if self.uuid is not None:
                self._fail("second UUID frame")
            else:
                self._on_uuid(frame.uuid)
        elif self._handler is None:
            self._fail(f"{kind.name} frame before UUID")
        elif frame.is_audio:
            self._call_handler("on_audio", frame)
        elif kind is FrameKind.DTMF:
            self._call_handler("on_dtmf", frame.dtmf)
        elif kind is FrameKind.ERROR:
            # Debug only: the handler decides how loudly a peer error is reported.
            self._log.debug("audiosocket_peer_error", code=frame.error_code)
            self._call_handler("on_error_frame", frame.error_code)
        else:  # every FrameKind is handled above; this guards future additions
            self._fail(f"unhandled frame kind {kind.name}")

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
        self._handler = handler
        self._log.info("audiosocket_accepted")

    def _refuse(self, reason: str) -> None:
        self._log.info("audiosocket_refused", reason=reason)
        if not self.closed and self._transport is not None:
            self._write(encode_error(REFUSAL_ERROR_CODE))
        self.close(reason)

    def _call_handler(self, callback: str, argument: object) -> None:
        handler = self._handler
        assert handler is not None
        try:
            getattr(handler, callback)(argument)
        except Exception as error:  # noqa: BLE001 - isolate the call: log with traceback, end only this connection
            self._log.exception("audiosocket_handler_failed", callback=callback)
            self.close(f"handler error in {callback}: {type(error).__name__}")

    def _fail(self, reason: str) -> None:
        # The stream can no longer be trusted: send nothing more, just close.
        self._log.warning("audiosocket_protocol_error", reason=reason)
        self.close(f"protocol error: {reason}")

    def _on_uuid_timeout(self) -> None:
        self._uuid_timer = None
        if self.closed:
            return
        self._log.warning("audiosocket_uuid_timeout", timeout_s=self._uuid_timeout_s)
        self.close("no UUID within timeout")

    def _cancel_uuid_timer(self) -> None:
        if self._uuid_timer is not None:
            self._uuid_timer.cancel()
            self._uuid_timer = None


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
    ) -> None:
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

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("server already started")
        loop = asyncio.get_running_loop()
        # A larger accept backlog than asyncio's 100: a burst of calls (or a restart
        # with Asterisk reconnecting) must not leave SYNs waiting on retransmit timers.
        self._server = await loop.create_server(self._new_connection, self.host, self.port, backlog=LISTEN_BACKLOG)
        log.info("audiosocket_listening", host=self.host, port=self.bound_port)

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
        log.info("audiosocket_stopped")

    def _new_connection(self) -> AudioSocketConnection:
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
