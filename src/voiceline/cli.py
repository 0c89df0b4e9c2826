"""The ``voiceline`` command line: serve, check-config and the operator tools."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import structlog
import yaml

from voiceline.config import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from voiceline.wiring import Parts

log = structlog.get_logger("voiceline.cli")

DEFAULT_CONFIG = "config/ai-agent.yaml"
EXIT_INVALID = 2


def _config_path(value: str | None) -> Path:
    return Path(value or os.environ.get("VOICELINE_CONFIG") or DEFAULT_CONFIG)


def _fail(message: str) -> NoReturn:
    print(message, file=sys.stderr)
    raise SystemExit(EXIT_INVALID)


def load_or_exit(path: Path, overrides: dict | None = None) -> tuple[Settings, list[str]]:
    """The validated settings and the operator warnings (unset variables, renamed keys);
    exits 2 with every problem named by its key path if the file is not usable."""
    try:
        return load_settings(path, overrides=overrides)
    except ConfigError as exc:
        _fail(str(exc))


def build_or_exit(settings: Settings, path: Path) -> Parts:
    """Apply the domain rules (streaming, providers); exits 2 naming the key if one fails."""
    from voiceline.wiring import build_parts

    try:
        return build_parts(settings)
    except ConfigError as exc:
        _fail(str(exc.with_source(str(path))))


def _print_warnings(warnings: list[str]) -> None:
    for item in warnings:
        print(f"warning: {item}", file=sys.stderr)


def load_and_build_or_exit(path: Path, overrides: dict | None = None) -> tuple[Settings, Parts, list[str]]:
    """``load_or_exit``, its warnings printed, then ``build_or_exit``: what every command
    that runs the engine's parts starts with."""
    settings, warnings = load_or_exit(path, overrides)
    _print_warnings(warnings)
    return settings, build_or_exit(settings, path), warnings


def cmd_check_config(args: argparse.Namespace) -> int:
    path = _config_path(args.path)
    settings, _, _ = load_and_build_or_exit(path)
    print(f"# {path}: valid (config hash {settings.digest()})")
    print(yaml.safe_dump(settings.masked(), sort_keys=False, default_flow_style=False), end="")
    return 0


def _configure_logging(settings: Settings) -> None:
    from voiceline.telemetry.logging import configure_logging

    configure_logging(settings.logging.level, settings.logging.format, settings.logging.levels)


def cmd_serve(args: argparse.Namespace) -> int:
    from voiceline.app import App
    from voiceline.wiring import default_provider_problem

    overrides: dict = {}
    if args.mode:
        overrides["mode"] = args.mode
    if args.provider:
        overrides["default_provider"] = args.provider
    path = _config_path(args.config)
    settings, parts, warnings = load_and_build_or_exit(path, overrides)
    if settings.mode == "ari" and not settings.asterisk.password.get_secret_value():
        print("voiceline: asterisk.password is empty in ari mode: export ARI_PASSWORD "
              "(the password of the ARI user in ari.conf), or use --mode audiosocket", file=sys.stderr)
        return EXIT_INVALID
    # Taking calls that can only fail is worse than not starting: say what to fix.
    problem = default_provider_problem(settings, parts.providers)
    if problem is not None:
        print(f"voiceline: {problem}", file=sys.stderr)
        return EXIT_INVALID
    _configure_logging(settings)
    for item in warnings:  # again in the log, where collectors see it
        log.warning("config_warning", detail=item)
    try:
        if settings.workers > 1:
            from voiceline.workers.supervisor import Supervisor

            return asyncio.run(Supervisor(settings, parts).run())
        asyncio.run(App(settings, parts=parts).run_until_signalled())
    except OSError as exc:
        print(f"voiceline: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from voiceline.doctor import doctor
    from voiceline.telemetry.logging import configure_logging

    configure_logging("WARNING", "console", {})
    overrides = {"mode": args.mode} if args.mode else {}
    path = _config_path(args.config)
    settings, parts, _ = load_and_build_or_exit(path, overrides)
    report, healthy = doctor(settings, parts.providers)
    print(report)
    print("all required checks passed" if healthy else "some required checks failed")
    return 0 if healthy else 1


def cmd_sim(args: argparse.Namespace) -> int:
    if args.which == "deepgram":
        from voiceline.sim.deepgram_sim import main as sim_main
    else:
        from voiceline.sim.openai_sim import main as sim_main
    return int(sim_main(args.sim_args) or 0)


def _history_store(args: argparse.Namespace):
    from voiceline.telemetry.history import HistoryStore

    settings, _ = load_or_exit(_config_path(args.config))
    return HistoryStore(settings.history.url.get_secret_value())


def cmd_calls(args: argparse.Namespace) -> int:
    from voiceline.history_format import format_call, format_call_list

    store = _history_store(args)
    try:
        if args.action == "list":
            print(format_call_list(store.list_calls(args.limit, args.offset)))
            return 0
        row = store.get_call(args.call_id)
        if row is None:
            print(f"no call {args.call_id!r} in the history", file=sys.stderr)
            return 1
        print(format_call(row))
        return 0
    finally:
        store.close()


def cmd_report(args: argparse.Namespace) -> int:
    from voiceline.telemetry.report import render_report

    store = _history_store(args)
    try:
        row = store.get_call(args.call_id)
    finally:
        store.close()
    if row is None:
        print(f"no call {args.call_id!r} in the history", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    png, html = out / f"{args.call_id}.png", out / f"{args.call_id}.html"
    render_report(row, png, html, width=args.width, height=args.height)
    print(f"{png}\n{html}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voiceline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the engine")
    serve.add_argument("--config", help=f"config file (default {DEFAULT_CONFIG} or $VOICELINE_CONFIG)")
    serve.add_argument("--mode", choices=["ari", "audiosocket"], help="override the call-control mode")
    serve.add_argument("--provider", help="override default_provider")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check-config", help="validate a config file and print it with secrets masked")
    check.add_argument("path", nargs="?", help=f"config file (default {DEFAULT_CONFIG})")
    check.set_defaults(func=cmd_check_config)

    doc = sub.add_parser("doctor", help="check ARI, ports, provider keys, local models and binaries")
    doc.add_argument("--config", help=f"config file (default {DEFAULT_CONFIG})")
    doc.add_argument("--mode", choices=["ari", "audiosocket"], help="check for this call-control mode")
    doc.set_defaults(func=cmd_doctor)

    calls = sub.add_parser("calls", help="call history: list, or show one call")
    calls_sub = calls.add_subparsers(dest="action", required=True)
    listing = calls_sub.add_parser("list", help="recent calls, newest first")
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--offset", type=int, default=0)
    show = calls_sub.add_parser("show", help="one call's full record")
    show.add_argument("call_id")
    for p in (listing, show):
        p.add_argument("--config", help=f"config file (default {DEFAULT_CONFIG})")
        p.set_defaults(func=cmd_calls)

    report = sub.add_parser("report", help="render a call's timeline as PNG and HTML")
    report.add_argument("call_id")
    report.add_argument("--config", help=f"config file (default {DEFAULT_CONFIG})")
    report.add_argument("--out", default="reports", help="output directory (default ./reports)")
    report.add_argument("--width", type=int, default=1200)
    report.add_argument("--height", type=int, default=700)
    report.set_defaults(func=cmd_report)

    sim = sub.add_parser("sim", help="run a provider protocol simulator (for tests and demos)")
    sim.add_argument("which", choices=["deepgram", "openai"])
    sim.add_argument("sim_args", nargs=argparse.REMAINDER, help="simulator options (see --help)")
    sim.set_defaults(func=cmd_sim)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
