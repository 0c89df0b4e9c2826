"""A simulated Asterisk AudioSocket leg: connects like Asterisk does, sends the
caller's audio in real-time 20 ms frames and records every frame it receives
with its arrival time. Used by integration tests, the demo and the benchmarks."""

from __future__ import annotations

import asyncio
import time
import uuid as uuidlib
from dataclasses import dataclass, field

from voiceline.asterisk.audiosocket_codec import (
    FrameDecoder,
    FrameKind,
    ProtocolError,
    encode_audio,
    encode_frame,
    encode_uuid,
)


@dataclass
class ReceivedFrame:
    at: float  # time.monotonic() on arrival
    kind: int
    payload: bytes


@dataclass
class CallerLeg:
    host: str
    port: int
    call_uuid: str = field(default_factory=lambda: str(uuidlib.uuid4()))
    sample_rate: int = 8000
    received: list[ReceivedFrame] = field(default_factory=list)
    closed_reason: str | None = None
    error: str | None = None

    async def connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        self._writer.write(encode_uuid(self.call_uuid))
        await self._writer.drain()
        self._read_task = asyncio.create_task(self._read_loop(), name=f"caller-read-{self.call_uuid}")

    async def _read_loop(self) -> None:
        decoder = FrameDecoder()
        try:
            while True:
                data = await self._reader.read(65536)
                if not data:
                    self.closed_reason = "engine closed"
                    return
                now = time.monotonic()
                for frame in decoder.feed(data):
                    self.received.append(ReceivedFrame(now, int(frame.kind), frame.payload))
        except ProtocolError as exc:
            self.error = exc.reason
            self.closed_reason = "protocol error"
        except ConnectionError as exc:
            self.closed_reason = f"connection error: {exc}"

    async def play(self, pcm: bytes, *, frame_ms: int = 20, realtime: bool = True) -> None:
        """Send slin16 audio as frames on an absolute 20 ms schedule (like Asterisk)."""
        frame_bytes = self.sample_rate * frame_ms // 1000 * 2
        loop = asyncio.get_running_loop()
        start = loop.time()
        for index, offset in enumerate(range(0, len(pcm), frame_bytes)):
            chunk = pcm[offset : offset + frame_bytes]
            if len(chunk) < frame_bytes:
                chunk = chunk + b"\x00" * (frame_bytes - len(chunk))
            self._writer.write(encode_audio(chunk, self.sample_rate))
            if realtime:
                delay = start + (index + 1) * frame_ms / 1000 - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
        await self._writer.drain()

    async def send_silence(self, seconds: float) -> None:
        await self.play(b"\x00" * int(self.sample_rate * 2 * seconds))

    def send_dtmf(self, digit: str) -> None:
        self._writer.write(encode_frame(FrameKind.DTMF, digit.encode("ascii")))

    async def hangup(self) -> None:
        """Close the way Asterisk does: it just closes the socket."""
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except ConnectionError:
            pass  # the engine may have closed first; the socket is gone either way
        await self.wait_closed(1.0)

    async def wait_closed(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(asyncio.shield(self._read_task), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    def audio_frames(self) -> list[ReceivedFrame]:
        return [f for f in self.received if 0x10 <= f.kind <= 0x18]

    def received_audio(self) -> bytes:
        return b"".join(f.payload for f in self.audio_frames())
