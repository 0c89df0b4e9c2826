"""A local stand-in for the Deepgram Voice Agent API v1, for tests and benchmarks.

It speaks the real wire protocol so ``DeepgramSession`` talks to it unchanged (see
``deepgram_server``); agent audio is delivered in one of several patterns and the
session can be made to fail in one of several ways (``deepgram_delivery``); Settings are
validated as strictly as the real service does (``deepgram_schema``); what a connection
runs with and what it saw is in ``deepgram_state``. This module is the
command line and the one import point for users of the simulator.

Run standalone: ``python -m voiceline.sim.deepgram_sim --port 8765 --pattern jitter``
(``--fault error`` etc.; per call: ``?pattern=...&fault=...`` on the URL).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence

from voiceline.sim.deepgram_delivery import FAULTS, PATTERNS, delivery_plan
from voiceline.sim.deepgram_schema import SETTINGS_SCHEMA, validate_settings
from voiceline.sim.deepgram_server import (
    DEFAULT_ANSWER,
    DEFAULT_TRANSCRIPT,
    PATH,
    AgentTurn,
    DeepgramSimulator,
    SimOptions,
    SimSession,
)

__all__ = [
    "DEFAULT_ANSWER",
    "DEFAULT_TRANSCRIPT",
    "FAULTS",
    "PATH",
    "PATTERNS",
    "SETTINGS_SCHEMA",
    "AgentTurn",
    "DeepgramSimulator",
    "SimOptions",
    "SimSession",
    "delivery_plan",
    "main",
    "validate_settings",
]


# ---- CLI ---------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="voiceline-sim-deepgram",
        description="Local Deepgram Voice Agent v1 simulator (no STT/LLM; espeak-ng answers).",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--pattern", choices=PATTERNS, default="steady", help="agent audio delivery pattern")
    p.add_argument("--speed", type=float, default=1.2, help="delivery speed relative to real time")
    p.add_argument("--stall-s", type=float, default=3.0, help="stall length for --pattern stall")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--answer-text", default=DEFAULT_ANSWER)
    p.add_argument("--greeting", default=None, help="override the Settings greeting ('' for none)")
    p.add_argument("--long-answer-s", type=float, default=None, help="repeat answers to at least this long")
    p.add_argument("--close-after-s", type=float, default=None, help="close each call with 1011 after this long")
    p.add_argument("--error-on-settings", default=None, help="reject Settings with this description")
    p.add_argument("--settings-delay-s", type=float, default=0.0)
    p.add_argument("--think-delay-s", type=float, default=0.15)
    p.add_argument("--call-function", default=None, help="request this (declared) function before answering")
    p.add_argument("--fault", choices=FAULTS, default=None, help="make every call fail this way (see deepgram_delivery)")
    return p


async def _serve(args: argparse.Namespace) -> None:
    sim = DeepgramSimulator(
        pattern=args.pattern,
        speed=args.speed,
        stall_s=args.stall_s,
        seed=args.seed,
        answer_text=args.answer_text,
        greeting=args.greeting,
        long_answer_s=args.long_answer_s,
        close_after_s=args.close_after_s,
        error_on_settings=args.error_on_settings,
        settings_delay_s=args.settings_delay_s,
        think_delay_s=args.think_delay_s,
        call_function=args.call_function,
        fault=args.fault,
    )
    url = await sim.start(args.host, args.port)
    fault = f", fault {args.fault}" if args.fault else ""
    print(f"deepgram simulator on {url} (pattern {args.pattern}{fault}); any 'Authorization: Token <x>' accepted", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await sim.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
