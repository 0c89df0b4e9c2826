"""Named providers built from config, and the per-call choice among them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import structlog

from voiceline.providers.base import Provider

log = structlog.get_logger("voiceline.providers")


@dataclass(frozen=True, slots=True)
class ProviderChoice:
    provider: Provider
    requested: str | None
    # Why the requested provider was not used (None when it was, or none was asked for).
    fallback_reason: str | None = None


class ProviderRegistry:
    def __init__(self, providers: Mapping[str, Provider], default: str) -> None:
        if default not in providers:
            raise ValueError(f"default provider {default!r} is not configured; have {sorted(providers)}")
        self._providers = dict(providers)
        self.default = default

    @property
    def names(self) -> list[str]:
        return sorted(self._providers)

    def get(self, name: str) -> Provider | None:
        return self._providers.get(name)

    def choose(self, requested: str | None) -> ProviderChoice:
        """The provider for one call: the requested one if known and usable, else the default."""
        default = self._providers[self.default]
        if not requested or requested == self.default:
            return ProviderChoice(default, requested)
        provider = self._providers.get(requested)
        if provider is None:
            return ProviderChoice(default, requested, f"unknown provider {requested!r} (known: {self.names})")
        usable, why = provider.availability()
        if not usable:
            return ProviderChoice(default, requested, f"provider {requested!r} unavailable: {why}")
        return ProviderChoice(provider, requested)
