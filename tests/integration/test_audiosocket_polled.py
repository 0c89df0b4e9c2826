"""A streaming call's connection read by the media plane's tick (``poll_read``)
instead of one event-loop callback per frame: same frames, same endings."""

from __future__ import annotations

import asyncio
import socket
import struct

from test_audiosocket_server import (  # the server tests' doubles and fixtures
    TIMEOUT_S,
    Client,
    RecordingHandler,
    ServerFactory,
    audio_payload,
    close_clients_after_test,  # noqa: F401 - autouse fixture
    make_server,  # noqa: F401 - fixture
    start_call,
)

from voiceline.asterisk.audiosocket_codec import Frame, FrameKind, encode_audio, encode_frame


async def poll_until(handler: RecordingHandler, done) -> None:  # type: ignore[no-untyped-def]
    """Poll the way the pacer does until ``done()``; yields between polls so the
    client's bytes can arrive."""
    async with asyncio.timeout(TIMEOUT_S):
        while not done():
            handler.conn.poll_read()
            await asyncio.sleep(0.002)


async def test_polled_connection_delivers_every_frame_in_order_and_leaves_the_loop(
    make_server: ServerFactory,
) -> None:
    server, acceptor = await make_server()
    client, handler = await start_call(server.bound_port, acceptor)
    conn = handler.conn
    transport = conn._transport
    assert transport is not None and transport.is_reading()
    conn.poll_read()  # the stream opened: from now on the tick reads
    assert not transport.is_reading()

    payloads = [audio_payload(i) for i in range(40)]
    data = b"".join(encode_audio(p) for p in payloads) + encode_frame(FrameKind.DTMF, b"5")
    for index in range(0, len(data), 701):  # frames straddle reads
        await client.send(data[index : index + 701])
    await poll_until(handler, lambda: len(handler.events) >= 41)
    assert handler.events == [("audio", Frame(FrameKind.SLIN_8K, p)) for p in payloads] + [("dtmf", "5")]
    assert conn.frames_in == 41 + 1  # and the UUID frame
    assert not handler.closed.is_set()


async def test_polled_connection_reports_the_peer_closing(make_server: ServerFactory) -> None:
    server, acceptor = await make_server()
    client, handler = await start_call(server.bound_port, acceptor)
    handler.conn.poll_read()
    await client.send(encode_audio(audio_payload(1)))
    client.writer.write_eof()
    await poll_until(handler, handler.closed.is_set)
    assert handler.events == [("audio", Frame(FrameKind.SLIN_8K, audio_payload(1)))]
    assert handler.closed_reasons == ["peer closed"]


async def test_polled_connection_reports_a_reset_as_a_lost_connection(make_server: ServerFactory) -> None:
    server, acceptor = await make_server()
    client, handler = await start_call(server.bound_port, acceptor)
    handler.conn.poll_read()
    sock = client.writer.get_extra_info("socket")
    # Linger 0: close sends RST instead of FIN, as a crashed peer's kernel would.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.writer.transport.abort()
    await poll_until(handler, handler.closed.is_set)
    (reason,) = handler.closed_reasons
    assert reason.startswith("connection lost:") and "reset" in reason.lower()
    assert handler.conn.closed


async def test_polling_a_closed_connection_does_nothing(make_server: ServerFactory) -> None:
    server, acceptor = await make_server()
    client, handler = await start_call(server.bound_port, acceptor)
    handler.conn.close("call ended")
    handler.conn.poll_read()
    assert handler.closed_reasons == ["call ended"]
    await Client.close(client)
