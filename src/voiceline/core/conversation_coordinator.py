"""Gates caller audio while the agent talks.

Every agent playback (a streamed turn or an ARI file playback) is registered with
``on_tts_start`` and released with ``on_tts_end``. Capture is disabled while at
least one playback of the call is active, so the provider does not hear the agent
through the caller's line. Ending a playback twice (stream end and a late
PlaybackFinished, say) is a no-op, which keeps logs free of duplicate warnings.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from voiceline.core.session_store import SessionStore

log = structlog.get_logger("voiceline.conversation")

GatingListener = Callable[[str, bool], None]  # (call_id, capture_enabled)


class ConversationCoordinator:
    def __init__(self, store: SessionStore, on_gating_change: GatingListener | None = None) -> None:
        self._store = store
        self._active: dict[str, set[str]] = {}
        self._on_gating_change = on_gating_change

    def on_tts_start(self, call_id: str, playback_id: str) -> None:
        session = self._store.get(call_id)
        if session is None:
            return
        active = self._active.setdefault(call_id, set())
        if playback_id in active:
            return
        active.add(playback_id)
        session.conversation.tts_starts += 1
        self._set_capture(call_id, False)

    def on_tts_end(self, call_id: str, playback_id: str, reason: str) -> bool:
        """Release a playback. Returns False when it was not active (already ended)."""
        session = self._store.get(call_id)
        active = self._active.get(call_id)
        if session is None or active is None or playback_id not in active:
            return False
        active.discard(playback_id)
        session.conversation.tts_ends += 1
        session.conversation.end_reasons[reason] = session.conversation.end_reasons.get(reason, 0) + 1
        if not active:
            self._set_capture(call_id, True)
        return True

    def audio_capture_enabled(self, call_id: str) -> bool:
        session = self._store.get(call_id)
        return session.audio_capture_enabled if session is not None else False

    def forget(self, call_id: str) -> None:
        """Drop the call's bookkeeping (call ended)."""
        self._active.pop(call_id, None)

    def _set_capture(self, call_id: str, enabled: bool) -> None:
        session = self._store.get(call_id)
        if session is None or session.audio_capture_enabled == enabled:
            return
        session.audio_capture_enabled = enabled
        session.conversation.gating_transitions += 1
        log.debug("capture_gating", call_id=call_id, capture_enabled=enabled)
        if self._on_gating_change is not None:
            self._on_gating_change(call_id, enabled)
