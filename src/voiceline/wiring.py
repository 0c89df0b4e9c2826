"""From validated settings to the parts the engine runs with.

The config package only checks what it owns (types, ranges, its own cross-field
rules). Rules owned by a domain module are applied here, once, by building the
real object: the streaming core's ``StreamParams`` and the providers. A domain
``ValueError`` becomes a ``ConfigError`` naming the key path, so ``voiceline
check-config`` and ``voiceline serve`` report a bad combination the same way.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass

from voiceline.config import ConfigError, Settings
from voiceline.core.stream_params import StreamParams
from voiceline.providers.base import Provider
from voiceline.providers.deepgram import DeepgramProvider
from voiceline.providers.echo import EchoProvider
from voiceline.providers.local import LocalAgentProvider
from voiceline.providers.openai_realtime import OpenAIRealtimeProvider

__all__ = ["Parts", "build_parts", "build_providers", "build_stream_params", "default_provider_problem"]

# StreamParams fields that are not `streaming.<same name>` in the config.
_STREAM_KEYS = {"logging_level": "logging.levels.streaming"}


def build_stream_params(settings: Settings) -> StreamParams:
    """The one StreamParams of a run (the streaming core validates it on creation)."""
    s = settings.streaming
    try:
        return StreamParams(
            chunk_size_ms=s.chunk_size_ms,
            min_start_ms=s.min_start_ms,
            low_watermark_ms=s.low_watermark_ms,
            max_buffer_ms=s.max_buffer_ms,
            fallback_timeout_ms=s.fallback_timeout_ms,
            provider_grace_ms=s.provider_grace_ms,
            logging_level=settings.logging.level_of("streaming"),
        )
    except ValueError as exc:
        raise ConfigError([f"{_stream_key(str(exc))}: {exc}"]) from None


def _stream_key(message: str) -> str:
    """The key path of the field a StreamParams message starts with."""
    first = re.match(r"\w+", message)
    name = first.group(0) if first else ""
    if name not in {f.name for f in dataclasses.fields(StreamParams)}:
        return "streaming"
    return _STREAM_KEYS.get(name, f"streaming.{name}")


def build_providers(settings: Settings) -> dict[str, Provider]:
    """Every configured provider by name; each reads its own settings model."""
    p = settings.providers
    try:
        local = LocalAgentProvider(p.local)
    except ValueError as exc:
        # The agent names the key below its section (e.g. "llm.rules[1].match[0]: ...").
        raise ConfigError([f"providers.local.{exc}"]) from None
    return {
        "echo": EchoProvider(p.echo),
        "deepgram": DeepgramProvider(p.deepgram),
        "openai_realtime": OpenAIRealtimeProvider(p.openai_realtime),
        "local": local,
    }


@dataclass(frozen=True)
class Parts:
    """What the domain rules are checked by building, each built once per run."""

    stream_params: StreamParams
    providers: dict[str, Provider]


def build_parts(settings: Settings) -> Parts:
    """Apply every domain rule by building the parts; raise one ConfigError listing
    every problem. ``check-config``, ``doctor`` and ``serve`` call it; ``serve`` hands
    the result to the App, so nothing is built (or validated) twice."""
    problems: list[str] = []
    stream_params: StreamParams | None = None
    providers: dict[str, Provider] = {}
    try:
        stream_params = build_stream_params(settings)
    except ConfigError as exc:
        problems.extend(exc.problems)
    try:
        providers = build_providers(settings)
    except ConfigError as exc:
        problems.extend(exc.problems)
    if problems or stream_params is None:
        raise ConfigError(problems)
    return Parts(stream_params, providers)


def default_provider_problem(settings: Settings, providers: Mapping[str, Provider]) -> str | None:
    """Why the default provider cannot take calls (with the fix), or None if it can."""
    name = settings.default_provider
    usable, why = providers[name].availability()
    if usable:
        return None
    others = [n for n, p in sorted(providers.items()) if n != name and p.availability()[0]]
    if others:
        suggestion = "local" if "local" in others else others[0]
        alternative = f"or pass --provider {suggestion} (usable here: {', '.join(others)})"
    else:
        alternative = "no other provider is usable either (run `voiceline doctor`)"
    return f"default provider {name!r} cannot take calls: {why}; fix that, {alternative}"
