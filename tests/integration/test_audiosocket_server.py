"""AudioSocket server over real loopback TCP, with clients playing Asterisk (well or badly)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import structlog.testing

from voiceline.asterisk.audiosocket import AudioSocketConnection, AudioSocketServer
from voiceline.asterisk.audiosocket_codec import (
    REFUSAL_ERROR_CODE,
    Frame,
    FrameDecoder,
    FrameKind,
    encode_audio,
    encode_frame,
    encode_hangup,
    encode_uuid,
)

TIMEOUT_S = 5.0
GOOD_HOST = "127.0.0.2"  # Linux routes all of 127/8 to loopback, so clients can pick a source
OTHER_HOST = "127.0.0.1"


def audio_payload(seed: int, length: int = 320) -> bytes:
    return bytes((seed * 31 + i * 7) & 0xFF for i in range(length))


# -- test doubles -------------------------------------------------------------


class RecordingHandler:
    """Records every callback in order; optionally echoes audio back to the caller."""

    def __init__(self, conn: AudioSocketConnection, *, echo: bool = False) -> None:
        self.conn = conn
        self.echo = echo
        self.events: list[tuple[str, Any]] = []
        self.closed_reasons: list[str] = []
        self.closed = asyncio.Event()
        self.raise_in: str | None = None
        self._changed = asyncio.Event()

    def _record(self, name: str, value: Any) -> None:
        self.events.append((name, value))
        self._changed.set()
        if self.raise_in == name:
            raise RuntimeError(f"handler exploded in {name}")

    def on_audio(self, frame: Frame) -> None:
        self._record("audio", frame)
        if self.echo:
            self.conn.send_audio(frame.payload, frame.kind)

    def on_dtmf(self, digit: str) -> None:
        self._record("dtmf", digit)

    def on_error_frame(self, code: int | None) -> None:
        self._record("error", code)

    def on_closed(self, reason: str) -> None:
        self.closed_reasons.append(reason)
        self.closed.set()

    async def wait_for_events(self, count: int) -> None:
        async with asyncio.timeout(TIMEOUT_S):
            while len(self.events) < count:
                self._changed.clear()
                await self._changed.wait()


@dataclass
class Acceptor:
    """The engine's accept callback: hands out recording handlers, refuses listed UUIDs."""

    refuse: set[str] = field(default_factory=set)
    echo: bool = True
    handlers: dict[str, RecordingHandler] = field(default_factory=dict)
    accepted: asyncio.Queue[RecordingHandler] = field(default_factory=asyncio.Queue)
    seen_peers: list[tuple[str, int]] = field(default_factory=list)

    def __call__(self, conn: AudioSocketConnection) -> RecordingHandler | None:
        assert conn.uuid is not None
        self.seen_peers.append(conn.peer)
        if conn.uuid in self.refuse:
            return None
        handler = RecordingHandler(conn, echo=self.echo)
        self.handlers[conn.uuid] = handler
        self.accepted.put_nowait(handler)
        return handler

    async def next_handler(self) -> RecordingHandler:
        async with asyncio.timeout(TIMEOUT_S):
            return await self.accepted.get()


class Client:
    """A stand-in for Asterisk's side of one AudioSocket connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder(max_audio_payload=0xFFFF)
        self.pending: list[Frame] = []

    @classmethod
    async def connect(cls, port: int, *, source: str = GOOD_HOST, rcvbuf: int | None = None) -> Client:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Set before connecting so the advertised window (and kernel autotuning) stays small.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        try:
            sock.bind((source, 0))
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        except OSError:
            sock.close()
            raise
        reader, writer = await asyncio.open_connection(sock=sock)
        client = cls(reader, writer)
        _open_clients.append(client)
        return client

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_frames(self, count: int) -> list[Frame]:
        async with asyncio.timeout(TIMEOUT_S):
            while len(self.pending) < count:
                chunk = await self.reader.read(65536)
                assert chunk, f"EOF after {len(self.pending)} of {count} frames"
                self.pending += self.decoder.feed(chunk)
        frames, self.pending = self.pending[:count], self.pending[count:]
        return frames

    async def read_until_closed(self) -> bytes:
        """Everything the server sends until it ends the connection (FIN or RST)."""
        received = bytearray()
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                try:
                    chunk = await self.reader.read(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                received += chunk
        return bytes(received)

    async def close(self) -> None:
        self.writer.close()
        # The server may already have reset a misbehaving connection; that is the point.
        with contextlib.suppress(ConnectionResetError):
            await self.writer.wait_closed()


# -- fixtures -----------------------------------------------------------------

_open_clients: list[Client] = []


@pytest.fixture(autouse=True)
async def close_clients_after_test() -> AsyncIterator[None]:
    yield
    while _open_clients:
        await _open_clients.pop().close()


ServerFactory = Callable[..., Awaitable[tuple[AudioSocketServer, Acceptor]]]


@pytest.fixture
async def make_server() -> AsyncIterator[ServerFactory]:
    servers: list[AudioSocketServer] = []

    async def start(**options: Any) -> tuple[AudioSocketServer, Acceptor]:
        acceptor = options.pop("acceptor", None) or Acceptor()
        options.setdefault("allowed_peers", ["127.0.0.0/8"])
        server = AudioSocketServer("127.0.0.1", 0, acceptor, **options)
        await server.start()
        servers.append(server)
        return server, acceptor

    yield start
    for server in servers:
        await server.stop()


async def start_call(
    port: int, acceptor: Acceptor, call_uuid: str | None = None, **connect: Any
) -> tuple[Client, RecordingHandler]:
    client = await Client.connect(port, **connect)
    await client.send(encode_uuid(call_uuid or str(uuid.uuid4())))
    return client, await acceptor.next_handler()


async def assert_audio_flows(client: Client, handler: RecordingHandler, seed: int) -> None:
    """Audio in both directions: the echo handler sends each frame straight back."""
    payloads = [audio_payload(seed + i) for i in range(3)]
    before = len(handler.events)
    await client.send(b"".join(encode_audio(p) for p in payloads))
    await handler.wait_for_events(before + len(payloads))
    echoed = await client.read_frames(len(payloads))
    assert [frame.payload for frame in echoed] == payloads
    assert not handler.closed.is_set()


# -- well-behaved calls -------------------------------------------------------


async def test_call_frames_reach_the_handler_in_order_and_replies_arrive_intact(
    make_server: ServerFactory,
) -> None:
    server, acceptor = await make_server(acceptor=Acceptor(echo=False))
    call_uuid = str(uuid.uuid4())
    client = await Client.connect(server.bound_port)
    payloads = [audio_payload(i) for i in range(50)]
    stream = encode_uuid(call_uuid) + b"".join(encode_audio(p) for p in payloads) + encode_frame(FrameKind.DTMF, b"#")
    # Dribble the stream in uneven chunks so frames straddle TCP reads.
    for index in range(0, len(stream), 997):
        await client.send(stream[index : index + 997])

    handler = await acceptor.next_handler()
    await handler.wait_for_events(51)
    assert handler.events == [("audio", Frame(FrameKind.SLIN_8K, p)) for p in payloads] + [("dtmf", "#")]
    conn = handler.conn
    assert conn.uuid == call_uuid
    assert conn.peer[0] == GOOD_HOST
    assert (conn.frames_in, conn.bytes_in) == (52, len(stream))
    assert server.connections == 1

    replies = [audio_payload(100 + i, length=320 + i) for i in range(20)]  # odd lengths too
    assert all(conn.send_audio(p) for p in replies)
    assert conn.send_audio(audio_payload(7, 640), FrameKind.SLIN_16K)
    received = await client.read_frames(21)
    assert received == [Frame(FrameKind.SLIN_8K, p) for p in replies] + [
        Frame(FrameKind.SLIN_16K, audio_payload(7, 640))
    ]
    assert conn.frames_out == 21
    assert conn.dropped_frames == 0
    await client.close()


async def test_nodelay_is_set_on_accepted_sockets(make_server: ServerFactory) -> None:
    server, acceptor = await make_server()
    client, handler = await start_call(server.bound_port, acceptor)
    sock = handler.conn._transport.get_extra_info("socket")  # type: ignore[union-attr]
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    await client.close()


async def test_error_frame_from_asterisk_reaches_the_handler(make_server: ServerFactory) -> None:
    server, acceptor = await make_server()
    client, handler = await start_call(server.bound_port, acceptor)
    await client.send(encode_frame(FrameKind.ERROR, b"\x02") + encode_frame(FrameKind.ERROR))
    await handler.wait_for_events(2)
    assert handler.events == [("error", 2), ("error", None)]
    assert not handler.closed.is_set()
    await client.close()


async def test_refused_call_gets_an_error_frame_then_eof(make_server: ServerFactory) -> None:
    refused = str(uuid.uuid4())
    server, acceptor = await make_server(acceptor=Acceptor(refuse={refused}))
    client = await Client.connect(server.bound_port)
    await client.send(encode_uuid(refused))
    received = await client.read_until_closed()
    assert FrameDecoder().feed(received) == [Frame(FrameKind.ERROR, bytes((REFUSAL_ERROR_CODE,)))]
    assert acceptor.seen_peers and acceptor.handlers == {}
    assert server.connections == 0


async def test_accept_that_raises_refuses_only_that_call(make_server: ServerFactory) -> None:
    acceptor = Acceptor()
    exploding = str(uuid.uuid4())

    def accept(conn: AudioSocketConnection) -> RecordingHandler | None:
        if conn.uuid == exploding:
            raise RuntimeError("engine is confused")
        return acceptor(conn)

    server = AudioSocketServer("127.0.0.1", 0, accept, allowed_peers=["127.0.0.0/8"])
    await server.start()
    try:
        good_client, good_handler = await start_call(server.bound_port, acceptor)
        bad_client = await Client.connect(server.bound_port)
        with structlog.testing.capture_logs() as logs:
            await bad_client.send(encode_uuid(exploding))
            received = await bad_client.read_until_closed()
        assert FrameDecoder().feed(received)[0].kind is FrameKind.ERROR
        assert next(e for e in logs if e["event"] == "audiosocket_accept_failed")["log_level"] == "error"
        await assert_audio_flows(good_client, good_handler, seed=1)
        await good_client.close()
    finally:
        await server.stop()


async def test_peer_hangup_frame_closes_with_reason(make_server: ServerFactory) -> None:
    server, acceptor = await make_server()
    client, handler = await start_call(server.bound_port, acceptor)
    await client.send(encode_audio(audio_payload(1)) + encode_hangup())
    await client.read_frames(1)  # the echoed frame, sent before the hangup was processed
    assert await client.read_until_closed() == b""
    assert handler.closed_reasons == ["peer hangup"]


async def test_peer_eof_reports_peer_closed(make_server: ServerFactory) -> None:
    server, acceptor = await make_server()
    client, handler = await start_call(server.bound_port, acceptor)
    client.writer.write_eof()
    async with asyncio.timeout(TIMEOUT_S):
        await handler.closed.wait()
    assert handler.closed_reasons == ["peer closed"]
    assert handler.conn.closed
    assert not handler.conn.send_audio(audio_payload(1))  # sending after close is a no-op
    await client.close()


async def test_send_hangup_reaches_asterisk_and_closes(make_server: ServerFactory) -> None:
    server, acceptor = await make_server()
    client, handler = await start_call(server.bound_port, acceptor)
    handler.conn.send_audio(audio_payload(3))
    handler.conn.send_hangup()
    received = await client.read_until_closed()
    assert FrameDecoder().feed(received) == [
        Frame(FrameKind.SLIN_8K, audio_payload(3)),
        Frame(FrameKind.HANGUP, b""),
    ]
    assert handler.closed_reasons == ["local hangup"]


async def test_connection_closed_before_uuid_is_not_an_error(make_server: ServerFactory) -> None:
    server, _ = await make_server()
    with structlog.testing.capture_logs() as logs:
        client = await Client.connect(server.bound_port)
        await client.close()
        async with asyncio.timeout(TIMEOUT_S):
            while not any(e["event"] == "audiosocket_closed" for e in logs):
                await asyncio.sleep(0.01)
    assert all(e["log_level"] in ("debug", "info") for e in logs)
    assert server.connections == 0


# -- misbehaving peers end only their own connection --------------------------


async def send_random_bytes(client: Client) -> None:
    # Seeded so the failure is reproducible; the first byte (0x0b... for this
    # seed) is not a frame kind.
    await client.send(random.Random(20240601).randbytes(4096))


async def send_truncated_frame_then_close(client: Client) -> None:
    await client.send(encode_uuid(str(uuid.uuid4())) + encode_audio(audio_payload(1))[:100])
    client.writer.write_eof()


async def send_oversized_length(client: Client) -> None:
    await client.send(encode_uuid(str(uuid.uuid4())) + bytes((FrameKind.SLIN_8K, 0xEA, 0x60)) + bytes(1000))


async def send_unknown_kind(client: Client) -> None:
    await client.send(encode_uuid(str(uuid.uuid4())) + b"\x02\x00\x00")  # Go-only "silence"


async def send_audio_before_uuid(client: Client) -> None:
    await client.send(encode_audio(audio_payload(1)) + encode_uuid(str(uuid.uuid4())))


async def send_second_uuid(client: Client) -> None:
    await client.send(encode_uuid(str(uuid.uuid4())) + encode_uuid(str(uuid.uuid4())))


async def send_nothing(client: Client) -> None:
    return None


@pytest.mark.parametrize(
    ("misbehave", "source", "log_event", "reason_fragment"),
    [
        (send_random_bytes, GOOD_HOST, "audiosocket_protocol_error", "unknown frame kind"),
        (send_truncated_frame_then_close, GOOD_HOST, "audiosocket_truncated_frame", None),
        (send_oversized_length, GOOD_HOST, "audiosocket_protocol_error", "60000"),
        (send_unknown_kind, GOOD_HOST, "audiosocket_protocol_error", "0x02"),
        (send_audio_before_uuid, GOOD_HOST, "audiosocket_protocol_error", "before UUID"),
        (send_second_uuid, GOOD_HOST, "audiosocket_protocol_error", "second UUID"),
        (send_nothing, GOOD_HOST, "audiosocket_uuid_timeout", None),
        (send_nothing, OTHER_HOST, "audiosocket_peer_not_allowed", None),
    ],
    ids=[
        "random-bytes",
        "truncated-then-close",
        "oversized-length",
        "unknown-kind",
        "audio-before-uuid",
        "second-uuid",
        "uuid-timeout",
        "disallowed-peer",
    ],
)
async def test_misbehaving_peer_ends_only_its_connection(
    make_server: ServerFactory,
    misbehave: Callable[[Client], Awaitable[None]],
    source: str,
    log_event: str,
    reason_fragment: str | None,
) -> None:
    server, acceptor = await make_server(allowed_peers=["10.0.0.0/8", f"{GOOD_HOST}/32"], uuid_timeout_s=0.3)
    good_client, good_handler = await start_call(server.bound_port, acceptor)
    await assert_audio_flows(good_client, good_handler, seed=10)

    with structlog.testing.capture_logs() as logs:
        bad_client = await Client.connect(server.bound_port, source=source)
        await misbehave(bad_client)
        # The server sends nothing after a violation: it just ends the connection.
        assert await bad_client.read_until_closed() == b""

    events = [e for e in logs if e["event"] == log_event]
    assert len(events) == 1, logs
    assert events[0]["log_level"] == "warning"
    assert events[0]["peer"].startswith(f"{source}:")
    if reason_fragment is not None:
        assert reason_fragment in events[0]["reason"]
    # Any handler the bad connection got was told exactly once why it ended.
    for handler in acceptor.handlers.values():
        if handler is not good_handler:
            assert len(handler.closed_reasons) == 1

    assert server.connections == 1
    await assert_audio_flows(good_client, good_handler, seed=20)
    await bad_client.close()
    await good_client.close()


async def test_disallowed_peer_never_reaches_accept(make_server: ServerFactory) -> None:
    server, acceptor = await make_server(allowed_peers=["10.0.0.0/8"])
    with structlog.testing.capture_logs() as logs:
        client = await Client.connect(server.bound_port, source=OTHER_HOST)
        await client.send(encode_uuid(str(uuid.uuid4())))
        assert await client.read_until_closed() == b""
    assert acceptor.seen_peers == []
    warnings = [e for e in logs if e["event"] == "audiosocket_peer_not_allowed"]
    assert [w["peer"].split(":")[0] for w in warnings] == [OTHER_HOST]


@pytest.mark.parametrize(
    ("raise_in", "data", "delivered"),
    [
        pytest.param("dtmf", encode_frame(FrameKind.DTMF, b"1") + encode_audio(audio_payload(1)),
                     [("dtmf", "1")], id="general path"),
        # Whole audio frames in one read take the streaming fast path.
        pytest.param("audio", b"".join(encode_audio(audio_payload(i)) for i in range(3)),
                     [("audio", Frame(FrameKind.SLIN_8K, audio_payload(0)))], id="audio fast path"),
    ],
)
async def test_handler_exception_ends_only_that_call(
    make_server: ServerFactory, raise_in: str, data: bytes, delivered: list[tuple[str, object]]
) -> None:
    server, acceptor = await make_server()
    good_client, good_handler = await start_call(server.bound_port, acceptor)
    bad_client, bad_handler = await start_call(server.bound_port, acceptor)
    bad_handler.raise_in = raise_in
    with structlog.testing.capture_logs() as logs:
        await bad_client.send(data)
        assert await bad_client.read_until_closed() == b""
    assert bad_handler.events == delivered  # nothing after the failure is delivered
    assert len(bad_handler.closed_reasons) == 1
    assert f"on_{raise_in}" in bad_handler.closed_reasons[0]
    failures = [e for e in logs if e["event"] == "audiosocket_handler_failed"]
    assert len(failures) == 1 and failures[0]["call_id"] == bad_handler.conn.uuid
    await assert_audio_flows(good_client, good_handler, seed=30)
    await good_client.close()


# -- lifecycle and back-pressure ------------------------------------------------


async def test_stop_closes_every_connection_and_notifies_each_handler_once(
    make_server: ServerFactory,
) -> None:
    server, acceptor = await make_server()
    calls = [await start_call(server.bound_port, acceptor) for _ in range(3)]
    port = server.bound_port
    pending = await Client.connect(port)  # connected, no UUID yet
    async with asyncio.timeout(TIMEOUT_S):
        while server.connections < 4:  # the accept of `pending` runs on the server's next loop turn
            await asyncio.sleep(0.01)

    await server.stop()

    assert server.connections == 0
    for client, handler in calls:
        assert handler.closed_reasons == ["server stopping"]
        assert await client.read_until_closed() == b""
    assert await pending.read_until_closed() == b""
    with pytest.raises(ConnectionRefusedError):
        await Client.connect(port)


async def test_write_limit_drops_frames_instead_of_buffering_without_bound(
    make_server: ServerFactory,
) -> None:
    limit = 64 * 1024
    server, acceptor = await make_server(write_limit_bytes=limit)
    client, handler = await start_call(server.bound_port, acceptor, rcvbuf=4096)
    conn = handler.conn
    chunk = audio_payload(5, 16000)

    with structlog.testing.capture_logs() as logs:
        # The client never reads: kernel buffers fill, then the transport's own buffer.
        for _ in range(20000):
            conn.send_audio(chunk)
            assert conn.pending_write_bytes <= limit
            if conn.dropped_frames >= 50:
                break
        assert conn.dropped_frames >= 50
        assert not conn.send_audio(chunk)

        # Let the client drain the backlog, then sending works again.
        async with asyncio.timeout(TIMEOUT_S):
            while conn.pending_write_bytes > 0:
                await client.reader.read(65536)
        assert conn.send_audio(chunk)

    dropping = [e for e in logs if e["event"] == "audiosocket_write_backlog_dropping"]
    assert len(dropping) == 1  # once per burst, not once per dropped frame
    assert dropping[0]["log_level"] == "warning"
    cleared = [e for e in logs if e["event"] == "audiosocket_write_backlog_cleared"]
    assert [e["dropped_frames"] for e in cleared] == [conn.dropped_frames]
    assert not handler.closed.is_set()
    await client.close()


# -- graceful drain -------------------------------------------------------------


async def test_stop_accepting_refuses_new_connections_while_live_calls_go_on(make_server: ServerFactory) -> None:
    server, acceptor = await make_server()
    assert server.accepting
    live_client, live_handler = await start_call(server.bound_port, acceptor)
    early = await Client.connect(server.bound_port)  # connected before the drain, UUID only after it
    async with asyncio.timeout(TIMEOUT_S):
        while server.connections < 2:  # the accept of `early` runs on the server's next loop turn
            await asyncio.sleep(0.01)

    with structlog.testing.capture_logs() as logs:
        server.stop_accepting()
        server.stop_accepting()  # idempotent
        assert not server.accepting
        refused = [await Client.connect(server.bound_port) for _ in range(5)]
        for client in refused:
            assert await client.read_until_closed() == b""  # closed at once, nothing sent

    assert server.refused_while_draining == 5
    assert len(acceptor.seen_peers) == 1  # the refused connections never reached accept
    assert [e["log_level"] for e in logs if e["event"] == "audiosocket_stopped_accepting"] == ["info"]
    refusals = [e["log_level"] for e in logs if e["event"] == "audiosocket_refusing_while_draining"]
    assert refusals == ["info"] + ["debug"] * 4  # once at INFO, not a line per connection above DEBUG
    assert not [e for e in logs if e["log_level"] in ("warning", "error")]

    # Live connections are untouched: the call in progress and the one that was still
    # waiting for its UUID both carry audio.
    await assert_audio_flows(live_client, live_handler, seed=40)
    await early.send(encode_uuid(str(uuid.uuid4())))
    early_handler = await acceptor.next_handler()
    await assert_audio_flows(early, early_handler, seed=50)
    assert server.connections == 2
    for client in (live_client, early, *refused):
        await client.close()


async def test_accepting_follows_the_server_lifecycle() -> None:
    server = AudioSocketServer("127.0.0.1", 0, Acceptor())
    assert not server.accepting
    server.stop_accepting()  # before start there is nothing to drain: start() still serves
    await server.start()
    try:
        assert server.accepting
        server.stop_accepting()
        assert not server.accepting
    finally:
        await server.stop()
    assert not server.accepting
    await server.start()  # a restarted server serves again
    try:
        assert server.accepting
    finally:
        await server.stop()
