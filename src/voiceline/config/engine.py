"""The engine's own sections: asterisk, audiosocket, streaming, barge_in, logging, http,
history, shutdown. Each field is documented here and in ``config/ai-agent.yaml``."""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from voiceline.config.base import LogLevel, Strict


class AsteriskSettings(Strict):
    ari_url: str = Field("http://127.0.0.1:8088/ari", description="ARI base URL, including /ari")
    username: str = Field("voiceline", description="ARI user (ari.conf)")
    password: SecretStr = Field(SecretStr(""), description="ARI password; ship as ${ARI_PASSWORD}")
    app_name: str = Field("voiceline", pattern=r"^[A-Za-z0-9_.-]+$", description="Stasis application name")
    request_timeout_ms: int = Field(5000, gt=0, description="per ARI REST request")
    reconnect_initial_ms: int = Field(500, gt=0, description="events websocket backoff start")
    reconnect_max_ms: int = Field(10000, gt=0, description="events websocket backoff cap")

    @field_validator("ari_url")
    @classmethod
    def _ari_url_shape(cls, value: str) -> str:
        if not re.match(r"^https?://[^/]+/.*ari/?$", value):
            raise ValueError("must be an http(s) URL ending in /ari, e.g. http://127.0.0.1:8088/ari")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _backoff_order(self) -> AsteriskSettings:
        if self.reconnect_initial_ms > self.reconnect_max_ms:
            raise ValueError("reconnect_initial_ms must not exceed reconnect_max_ms")
        return self


class AudioSocketSettings(Strict):
    host: str = Field("127.0.0.1", description="address the AudioSocket listener binds")
    port: int = Field(9092, ge=0, le=65535, description="listener port (0 = any free port)")
    advertise_host: str = Field(
        "127.0.0.1", description="host Asterisk connects to (externalMedia external_host); ari mode"
    )
    allowed_peers: list[str] = Field(
        default_factory=lambda: ["127.0.0.1/32", "::1/128"], description="networks allowed to connect"
    )
    uuid_timeout_ms: int = Field(5000, gt=0, description="a connection must send its UUID within this")
    write_limit_bytes: int = Field(65536, ge=4096, description="unsent bytes per connection before drops")
    sample_rate: Literal[8000, 12000, 16000, 24000, 32000, 44100, 48000, 96000, 192000] = Field(
        8000, description="wire rate of slin frames we request in ari mode (externalMedia format)"
    )

    @field_validator("allowed_peers")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=True)
            except ValueError as exc:
                raise ValueError(f"{item!r} is not an IP address or network: {exc}") from None
        return value


class StreamingSettings(Strict):
    """Outbound agent audio. The cross-field rules belong to the streaming core
    (``StreamParams``); ``wiring.build_stream_params`` applies them and reports
    a broken combination with its key path."""

    chunk_size_ms: int = Field(20, description="wire frame duration (multiple of 10, 10-60)")
    min_start_ms: int = Field(120, ge=0, description="buffered agent audio before a turn starts playing")
    low_watermark_ms: int = Field(20, ge=0, description="depth below which an open turn pauses")
    max_buffer_ms: int = Field(
        60000, gt=0,
        description="memory cap of queued agent audio per call (not latency); was jitter_buffer_ms",
    )
    fallback_timeout_ms: int = Field(4000, ge=0, description="stall before file playback; 0 disables")
    provider_grace_ms: int = Field(500, ge=0, description="late chunks after turn end still played")
    realtime_priority: int = Field(
        5, ge=0, le=99,
        description="SCHED_FIFO priority of the pacer's spin and writes (1-99; 0 = off; needs CAP_SYS_NICE)",
    )
    fallback_media_dir: str = Field(
        "/var/lib/asterisk/sounds/voiceline", description="engine-side directory for fallback files"
    )
    fallback_media_uri: str = Field(
        "sound:/var/lib/asterisk/sounds/voiceline", description="the same directory as Asterisk sees it"
    )


class BargeInSettings(Strict):
    enabled: bool = True
    min_ms: int = Field(250, gt=0, description="speech needed to confirm an interruption")
    energy_threshold: int = Field(1000, ge=0, description="RMS (16-bit) a frame needs to count as speech")
    vad_aggressiveness: int = Field(2, ge=0, le=3, description="webrtcvad mode 0-3")
    cooldown_ms: int = Field(500, ge=0, description="after a trigger, further triggers are ignored this long")
    initial_protection_ms: int = Field(200, ge=0, description="inbound audio dropped after playback starts")
    soft_pause_ms: int = Field(60, ge=0, description="speech that pauses agent audio until confirmed (0 = off)")


class LoggingSettings(Strict):
    level: LogLevel = Field("INFO", description="root level")
    format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto: JSON unless stderr is a terminal"
    )
    levels: dict[str, LogLevel] = Field(
        default_factory=dict,
        description="per-component levels, e.g. {streaming: DEBUG, ari: WARNING}; "
        "`streaming` is the streaming core's (was streaming.logging_level)",
    )

    @field_validator("levels")
    @classmethod
    def _component_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_.]*$", name):
                raise ValueError(f"{name!r} is not a component name (letters, digits, _ and .)")
        return value

    def level_of(self, component: str) -> str:
        """The effective level of one component: its own, else the root level."""
        return self.levels.get(component, self.level)


class HttpSettings(Strict):
    enabled: bool = True
    host: str = Field("127.0.0.1", description="/live /ready /health /metrics bind address")
    port: int = Field(9091, ge=0, le=65535)
    bearer_token: SecretStr = Field(SecretStr(""), description="empty: no auth (loopback only by default)")


class HistorySettings(Strict):
    enabled: bool = True
    url: SecretStr = Field(SecretStr("sqlite:///data/calls.db"), description="SQLAlchemy URL")


class RecordingSettings(Strict):
    enabled: bool = Field(False, description="record both legs of every call as WAV (personal data: see docs/console.md)")
    dir: str = Field("data/recordings", min_length=1, description="where <call id>.caller.wav and .agent.wav go")
    max_seconds: float = Field(
        3600.0, gt=0, le=86400,
        description="each leg stops growing after this long; held in memory until the call ends",
    )


class ShutdownSettings(Strict):
    drain_timeout_s: float = Field(
        30.0, ge=0,
        description="on SIGTERM, calls in progress may finish for this long (new ones are refused); "
        "0 ends them at once",
    )
