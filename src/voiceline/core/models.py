"""Per-call state owned by the SessionStore: one CallSession per live call."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class CallState(enum.Enum):
    SETTING_UP = "setting_up"
    ACTIVE = "active"
    ENDING = "ending"
    ENDED = "ended"


@dataclass(slots=True)
class ConversationStats:
    tts_starts: int = 0
    tts_ends: int = 0
    gating_transitions: int = 0
    end_reasons: dict[str, int] = field(default_factory=dict)
    barge_ins: int = 0
    barge_in_attempts: int = 0


@dataclass(slots=True)
class CallSession:
    call_id: str
    mode: str
    provider_name: str
    started_at: float  # wall clock (time.time()) for records
    started_monotonic: float
    caller_channel_id: str | None = None
    caller_id: str | None = None
    media_channel_id: str | None = None
    bridge_id: str | None = None
    state: CallState = CallState.SETTING_UP
    # False while any agent playback of the call is active (set by the coordinator).
    audio_capture_enabled: bool = True
    wire_format: str = "slin16@8000"
    provider_input_format: str = ""
    provider_output_format: str = ""
    conversation: ConversationStats = field(default_factory=ConversationStats)
    transcript: list[dict[str, Any]] = field(default_factory=list)
    end_reason: str | None = None
    ended_at: float | None = None
    provider_fallback_reason: str | None = None

    @property
    def tts_playing(self) -> bool:
        """Agent audio is playing, i.e. the caller's audio is gated (the same flag)."""
        return not self.audio_capture_enabled

    def codec_info(self) -> dict[str, str]:
        return {
            "wire": self.wire_format,
            "provider_input": self.provider_input_format,
            "provider_output": self.provider_output_format,
        }
