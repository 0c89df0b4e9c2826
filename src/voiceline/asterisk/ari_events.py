"""Stasis event dispatch: in order per channel, concurrently across channels.

Asterisk sends every event of the application on one websocket. Events about one channel
must be handled in order (a StasisEnd must not overtake the StasisStart still being
handled), while a slow handler for one call must not hold up the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog

log = structlog.get_logger("voiceline.ari")

EventHandler = Callable[[dict[str, Any]], Awaitable[None]]

# Events after which Asterisk sends nothing more for that channel, so its worker may retire
# soon instead of waiting out the general idle timeout.
CHANNEL_TERMINAL_EVENTS = frozenset({"StasisEnd", "ChannelDestroyed"})

# Ordering key for events that concern no channel (bridge events, ApplicationReplaced, ...).
# None cannot collide with a channel id, whereas a string such as "global" could.
GLOBAL_ORDERING_KEY: str | None = None


def event_ordering_key(event: Mapping[str, Any]) -> str | None:
    """The channel id whose other events this event must stay ordered with.

    Channel events carry ``channel``; ``Dial`` carries the dialled channel as ``peer``;
    playback and recording events name their target as ``target_uri`` ("channel:<id>" or
    "bridge:<id>"). Anything else is ordered on a shared global key.
    """
    for field_name in ("channel", "peer"):
        channel = event.get(field_name)
        if isinstance(channel, dict) and isinstance(channel.get("id"), str) and channel["id"]:
            return channel["id"]
    for field_name in ("playback", "recording"):
        media_operation = event.get(field_name)
        if isinstance(media_operation, dict):
            target_uri = media_operation.get("target_uri")
            if isinstance(target_uri, str) and target_uri.startswith("channel:") and len(target_uri) > 8:
                return target_uri[len("channel:") :]
    return GLOBAL_ORDERING_KEY


class ChannelEventDispatcher:
    """Delivers events in order per channel and concurrently across channels.

    One queue plus one worker task per ordering key. A worker retires once its queue has been
    empty for ``linger_s`` after the channel ended (StasisEnd/ChannelDestroyed) or for
    ``idle_s`` otherwise; an event arriving later simply starts a new worker, so retiring never
    loses or reorders events.
    """

    def __init__(self, handler: EventHandler, *, idle_s: float, linger_s: float):
        self.handler = handler
        self._idle_s = idle_s
        self._linger_s = linger_s
        self._queues: dict[str | None, asyncio.Queue[dict[str, Any]]] = {}
        self._workers: dict[str | None, asyncio.Task[None]] = {}
        self._cancelling = False

    @property
    def worker_count(self) -> int:
        return len(self._workers)

    @property
    def cancelled(self) -> bool:
        return self._cancelling

    def submit(self, event: dict[str, Any]) -> None:
        key = event_ordering_key(event)
        queue = self._queues.get(key)
        if queue is None:
            queue = asyncio.Queue()
            self._queues[key] = queue
            self._workers[key] = asyncio.create_task(self._work(key, queue), name=f"ari-events:{key or 'global'}")
        queue.put_nowait(event)

    async def _work(self, key: str | None, queue: asyncio.Queue[dict[str, Any]]) -> None:
        channel_ended = False
        try:
            while True:
                try:
                    async with asyncio.timeout(self._linger_s if channel_ended else self._idle_s):
                        event = await queue.get()
                except TimeoutError:
                    # No await between this check and the deregistration in `finally`, so submit()
                    # cannot slip an event into a queue whose worker is leaving.
                    if queue.empty():
                        return
                    continue
                if key is not GLOBAL_ORDERING_KEY and event.get("type") in CHANNEL_TERMINAL_EVENTS:
                    channel_ended = True
                await self._deliver(key, event)
                if self._cancelling:
                    # Only reachable by the worker whose handler called close(): it was spared
                    # cancellation so close() could finish, and must not linger afterwards.
                    return
        finally:
            if self._workers.get(key) is asyncio.current_task():
                del self._workers[key]
                del self._queues[key]

    async def _deliver(self, key: str | None, event: dict[str, Any]) -> None:
        try:
            await self.handler(event)
        except asyncio.CancelledError:
            # Shutting down: let the cancellation end the worker.
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            # The handler leaked a CancelledError from something it awaited; that is a handler
            # failure like any other and must not kill this channel's worker.
            log.error("ari.event_handler_cancelled", event_type=event.get("type"), channel_id=key)
        except Exception:
            log.exception("ari.event_handler_failed", event_type=event.get("type"), channel_id=key)

    async def cancel_workers(self) -> None:
        self._cancelling = True
        current = asyncio.current_task()
        # A handler may itself be the one calling close(); it must not cancel itself.
        to_cancel = [task for task in self._workers.values() if task is not current]
        for task in to_cancel:
            task.cancel()
        if to_cancel:
            await asyncio.gather(*to_cancel, return_exceptions=True)

