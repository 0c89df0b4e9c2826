"""One engine worker process: ``python -m voiceline.workers.child --control-fd N --index I``.

Started by the supervisor (``workers.supervisor``) only. It reads its settings from the
control channel, runs a full engine (``App``: AudioSocket listener sharing the port with
SO_REUSEPORT, pacer, providers, barge-in, call history writes) without an HTTP server,
reports ``ready``, answers health requests, and drains like ``serve`` on SIGTERM, or when
the supervisor's end of the channel closes. Every log line carries ``worker`` (the index).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys

import structlog

from voiceline.app import App
from voiceline.config import Settings
from voiceline.telemetry.logging import configure_logging
from voiceline.telemetry.metrics import Metrics
from voiceline.wiring import build_parts
from voiceline.workers.control import ControlChannel

log = structlog.get_logger("voiceline.worker")


async def run_worker(sock: socket.socket) -> int:
    channel = await ControlChannel.over(sock)
    hello = await channel.receive()
    if hello is None or hello.get("op") != "start":
        print("voiceline worker: no start message from the supervisor", file=sys.stderr)
        return 1
    settings = Settings.model_validate(hello["settings"])
    configure_logging(settings.logging.level, settings.logging.format, settings.logging.levels)
    # Every task, callback and to_thread call of this process copies this context.
    structlog.contextvars.bind_contextvars(worker=int(hello["index"]))
    index = int(hello["index"])
    # Worker i ticks at i/N of the 20 ms period: the workers' tick bursts take turns
    # on the cores instead of colliding.
    app = App(settings, parts=build_parts(settings), metrics=Metrics(per_call_series=False),
              reuse_port=True, started_event="worker_started", pacer_phase=index / settings.workers)
    stop = asyncio.Event()

    async def report_ready() -> None:
        assert app.audiosocket is not None
        await channel.send({"event": "ready", "pid": os.getpid(), "port": app.audiosocket.bound_port})
        serving.append(asyncio.create_task(answer(channel, app, stop), name="worker-control"))

    serving: list[asyncio.Task[None]] = []
    await app.run_until_signalled(stop=stop, on_started=report_ready)
    for task in serving:
        task.cancel()
    channel.close()
    return 0


async def answer(channel: ControlChannel, app: App, stop: asyncio.Event) -> None:
    """Answer the supervisor's requests until its end closes; then drain (set ``stop``)."""
    try:
        while (request := await channel.receive()) is not None:
            if request.get("op") == "health":
                ready, checks = app.readiness()
                await channel.send({"id": request.get("id"), "health": app.health(), "ready": [ready, checks]})
            else:
                log.warning("unknown control request ignored", op=request.get("op"))
    except (ValueError, OSError):
        # A bug, not an outage: the calls go on, the supervisor sees this worker not answering.
        log.exception("control channel failed; health requests are no longer answered")
        return
    if not stop.is_set():
        log.warning("supervisor gone (control channel closed): draining")
        stop.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="voiceline-worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--control-fd", type=int, required=True)
    args = parser.parse_args(argv)
    sock = socket.socket(fileno=args.control_fd)
    try:
        return asyncio.run(run_worker(sock))
    except OSError as exc:
        # e.g. the port is taken by a program without SO_REUSEPORT: the supervisor logs the exit.
        print(f"voiceline worker: cannot start: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
