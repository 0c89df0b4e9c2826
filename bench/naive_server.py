#!/usr/bin/env python3
"""The naive baseline for the benchmarks: an AudioSocket server with one task per call
that sends a 20 ms frame and then ``await asyncio.sleep(0.020)``.

    .venv/bin/python bench/naive_server.py --port 9092 --seconds 14

This is the design voiceline's pacer replaces, kept here only to be measured against
(bench/compare.py, and ``bench/pacing.py --server naive``). Each sleep starts after the
send and wakes late by the event loop's timer resolution and load, so every period is
a little longer than 20 ms and the lateness adds up: the stream drifts behind real time,
and at many calls the per-call timers wake in clumps.

Every connection plays the same audio the bench's Deepgram simulator delivers: the
greeting rendered by ``pacing_client.reference_audio`` (espeak-ng, repeated to
``--seconds``, through the provider codec round trip), from its first frame, then
digital silence until the caller hangs up. It plays rather than echoes so that the
same probes work for both servers: the pacing bench aligns what each caller heard with
that reference (gaps, "every call heard the greeting"), and the lab comparison finds
the agent audio in the caller's RTP by its speech energy. Caller frames are read and
discarded (only counted).

The engine contract the benches rely on, JSON lines on stdout:
``{"event": "voiceline_started", "audiosocket": "127.0.0.1:<port>"}`` once listening,
and one ``{"event": "call_summary", "call_id": <uuid>, ...}`` per call after it ended,
with the fields ``bench/pacing_run.py`` reads (frames_in, frames_out, agent_bytes,
duration_s, end_reason, inbound_dropped, provider_errors) plus ``drift_ms``: how far the
call's frames fell behind a 20 ms schedule.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchkit import FRAME_BYTES, FRAME_S, RATE, ZERO_FRAME  # noqa: E402
from pacing import DEFAULT_GREETING  # noqa: E402
from pacing_client import reference_audio  # noqa: E402

from voiceline.asterisk.audiosocket_codec import (  # noqa: E402
    FrameDecoder,
    FrameKind,
    ProtocolError,
    encode_audio,
)

# Bytes per second of agent audio as the provider delivers it (what agent_bytes counts).
PROVIDER_BYTES_PER_S = {"mulaw": RATE, "alaw": RATE, "linear16": RATE * 2}


def emit(event: str, **fields: Any) -> None:
    """One JSON log line on stdout, in the shape the engine's JSON log has."""
    record = {
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "level": fields.pop("level", "info"),
        "event": event,
        **fields,
    }
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


class NaiveServer:
    def __init__(self, greeting_pcm: bytes, provider_encoding: str) -> None:
        whole = len(greeting_pcm) // FRAME_BYTES
        self.frames = [encode_audio(greeting_pcm[i * FRAME_BYTES : (i + 1) * FRAME_BYTES], RATE) for i in range(whole)]
        self.silence = encode_audio(ZERO_FRAME, RATE)
        self.agent_bytes_per_frame = PROVIDER_BYTES_PER_S[provider_encoding] * FRAME_BYTES // (2 * RATE)
        self.calls = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        started = time.monotonic()
        decoder = FrameDecoder()
        call_id: str | None = None
        frames_in = 0
        end_reason = None
        player: asyncio.Task | None = None
        sent = {"frames_out": 0, "greeting_frames": 0, "first_at": None}
        try:
            while end_reason is None:
                data = await reader.read(4096)
                if not data:
                    end_reason = "caller hung up"
                    break
                for frame in decoder.feed(data):
                    if frame.kind is FrameKind.UUID and call_id is None:
                        call_id = frame.uuid
                        self.calls += 1
                        player = asyncio.create_task(self.play(writer, sent), name=f"naive-play-{call_id}")
                    elif frame.kind is FrameKind.HANGUP:
                        end_reason = "caller sent hangup"
                    elif frame.is_audio:
                        frames_in += 1  # the naive server does not listen: caller audio is dropped
        except ProtocolError as exc:
            end_reason = f"protocol error: {exc.reason}"
        except ConnectionError as exc:
            end_reason = f"connection error: {exc}"
        finally:
            if player is not None:
                player.cancel()
                await asyncio.gather(player, return_exceptions=True)
            writer.close()
        if call_id is None:
            return
        ended = time.monotonic()
        first = sent["first_at"]
        drift_ms = ((ended - first) - sent["frames_out"] * FRAME_S) * 1000.0 if first is not None else None
        emit(
            "call_summary",
            call_id=call_id,
            mode="audiosocket",
            provider="naive",
            duration_s=round(ended - started, 3),
            end_reason=end_reason,
            frames_in=frames_in,
            frames_out=sent["frames_out"],
            greeting_frames=sent["greeting_frames"],
            agent_bytes=sent["greeting_frames"] * self.agent_bytes_per_frame,
            inbound_dropped=0,  # the engine's overload drops; every caller frame is discarded here by design
            provider_errors=0,
            drift_ms=None if drift_ms is None else round(drift_ms, 1),
        )

    async def play(self, writer: asyncio.StreamWriter, sent: dict[str, Any]) -> None:
        """The per-call sleep this baseline exists for: send, then sleep 20 ms."""
        sent["first_at"] = time.monotonic()
        for frame in self.frames:
            writer.write(frame)
            await writer.drain()
            sent["frames_out"] += 1
            sent["greeting_frames"] += 1
            await asyncio.sleep(FRAME_S)
        while True:
            writer.write(self.silence)
            await writer.drain()
            sent["frames_out"] += 1
            await asyncio.sleep(FRAME_S)


async def serve(args: argparse.Namespace) -> None:
    pcm = reference_audio(args.greeting, args.seconds, args.encoding)
    naive = NaiveServer(pcm, args.encoding)
    server = await asyncio.start_server(naive.handle, args.host, args.port)
    host, port = server.sockets[0].getsockname()[:2]
    emit("voiceline_started", audiosocket=f"{host}:{port}", server="naive",
         greeting_s=round(len(naive.frames) * FRAME_S, 2))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
    emit("voiceline_stopped", calls=naive.calls)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9092, help="listening port (0: any free port)")
    p.add_argument("--seconds", "--long-answer-s", dest="seconds", type=float, default=35.0,
                   help="greeting length: the greeting is repeated (300 ms gaps) to at least this long")
    p.add_argument("--greeting", default=DEFAULT_GREETING, help="text spoken (the pacing bench's default)")
    p.add_argument("--encoding", choices=sorted(PROVIDER_BYTES_PER_S), default="mulaw",
                   help="provider codec the greeting goes through, as the simulator + engine do (config default)")
    args = p.parse_args(argv)
    if args.seconds <= 0:
        p.error("--seconds must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    asyncio.run(serve(parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
