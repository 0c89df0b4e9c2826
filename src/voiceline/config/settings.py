"""The root of the contract: ``Settings``, one typed section per YAML key."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator

from voiceline.config.base import Strict
from voiceline.config.engine import (
    AsteriskSettings,
    AudioSocketSettings,
    BargeInSettings,
    HistorySettings,
    HttpSettings,
    LoggingSettings,
    RecordingSettings,
    ShutdownSettings,
    StreamingSettings,
)
from voiceline.config.providers import ProvidersSettings

# Keys of free-form mappings (function endpoint headers, tool definitions) whose
# values are masked like SecretStr fields when the config is shown.
SECRET_NAME = re.compile(
    r"(.*[_-])?(pass(word|wd)?|secret|token|api[_-]?key|apikey|authori[sz]ation|credentials?)", re.IGNORECASE
)

MAX_WORKERS = 64


class Settings(Strict):
    mode: Literal["ari", "audiosocket"] = Field("ari", description="call control: ari or audiosocket")
    default_provider: str = Field(
        "deepgram", description="provider for calls that do not ask for one; a name under providers:"
    )
    # After `mode`: its validator reads the mode.
    workers: int = Field(
        1, ge=1, le=MAX_WORKERS,
        description="engine worker processes sharing the AudioSocket port (audiosocket mode; 1 = one process)",
    )
    asterisk: AsteriskSettings = Field(default_factory=AsteriskSettings)
    audiosocket: AudioSocketSettings = Field(default_factory=AudioSocketSettings)
    streaming: StreamingSettings = Field(default_factory=StreamingSettings)
    barge_in: BargeInSettings = Field(default_factory=BargeInSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    history: HistorySettings = Field(default_factory=HistorySettings)
    recording: RecordingSettings = Field(default_factory=RecordingSettings)
    shutdown: ShutdownSettings = Field(default_factory=ShutdownSettings)
    providers: ProvidersSettings = Field(default_factory=ProvidersSettings)

    @field_validator("workers")
    @classmethod
    def _workers_need_audiosocket_mode(cls, value: int, info: ValidationInfo) -> int:
        if value > 1 and info.data.get("mode") == "ari":
            raise ValueError(
                "more than one worker process needs mode audiosocket: in ari mode a call's control "
                "lives in the one process holding the ARI events websocket, so ari mode runs one process; "
                "set workers: 1 or mode: audiosocket"
            )
        return value

    @field_validator("default_provider")
    @classmethod
    def _default_provider_known(cls, value: str) -> str:
        known = sorted(ProvidersSettings.model_fields)
        if value not in known:
            raise ValueError(f"unknown provider {value!r}; one of {known}")
        return value

    def masked(self) -> dict[str, Any]:
        """The effective config as plain data with every secret replaced by ``***``."""
        return _plain(self.model_dump(mode="python"), reveal=False)

    def revealed(self) -> dict[str, Any]:
        """The effective config as plain data, secrets included: what the engine worker
        supervisor hands each worker over its private control socket (the worker
        validates it again). Never log or show it: ``masked()`` is for that."""
        return _plain(self.model_dump(mode="python"), reveal=True)

    def digest(self) -> str:
        """A short hash of the effective config (secrets included, so rotating a key
        changes it) for /health and the start-up log line."""
        raw = json.dumps(_plain(self.model_dump(mode="python"), reveal=True), sort_keys=True, default=str)
        return hashlib.sha256(raw.encode()).hexdigest()[:12]


def _plain(value: Any, *, reveal: bool) -> Any:
    if isinstance(value, SecretStr):
        secret = value.get_secret_value()
        return secret if reveal else ("***" if secret else "")
    if isinstance(value, dict):
        return {
            k: "***" if not reveal and _secret_entry(k, v) else _plain(v, reveal=reveal)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_plain(v, reveal=reveal) for v in value]
    return value


def _secret_entry(key: Any, value: Any) -> bool:
    return isinstance(key, str) and isinstance(value, str) and bool(value) and bool(SECRET_NAME.fullmatch(key))
