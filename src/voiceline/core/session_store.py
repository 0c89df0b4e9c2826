"""The one owner of live calls: lookup by call id, ARI channel id and AudioSocket UUID."""

from __future__ import annotations

from collections.abc import Iterator

from voiceline.core.models import CallSession


class SessionStore:
    def __init__(self) -> None:
        self._by_call: dict[str, CallSession] = {}
        self._by_channel: dict[str, str] = {}

    def add(self, session: CallSession) -> None:
        if session.call_id in self._by_call:
            raise KeyError(f"call {session.call_id} already exists")
        self._by_call[session.call_id] = session
        self._index(session)

    def _index(self, session: CallSession) -> None:
        for channel_id in (session.caller_channel_id, session.media_channel_id):
            if channel_id:
                self._by_channel[channel_id] = session.call_id

    def link_channel(self, call_id: str, channel_id: str) -> None:
        """Record that ``channel_id`` belongs to ``call_id`` (e.g. the media channel)."""
        if call_id not in self._by_call:
            raise KeyError(f"unknown call {call_id}")
        self._by_channel[channel_id] = call_id

    def get(self, call_id: str) -> CallSession | None:
        return self._by_call.get(call_id)

    def by_channel(self, channel_id: str) -> CallSession | None:
        call_id = self._by_channel.get(channel_id)
        return self._by_call.get(call_id) if call_id else None

    def remove(self, call_id: str) -> CallSession | None:
        session = self._by_call.pop(call_id, None)
        if session is not None:
            for channel_id in [c for c, cid in self._by_channel.items() if cid == call_id]:
                del self._by_channel[channel_id]
        return session

    def __contains__(self, call_id: object) -> bool:
        return call_id in self._by_call

    def __len__(self) -> int:
        return len(self._by_call)

    def __iter__(self) -> Iterator[CallSession]:
        return iter(list(self._by_call.values()))

    @property
    def channel_index_size(self) -> int:
        return len(self._by_channel)
