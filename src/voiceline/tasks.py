"""Small helpers for owning asyncio tasks without leaking or swallowing errors."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import structlog

log = structlog.get_logger("voiceline.tasks")


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` and wait for it to finish.

    The task's own CancelledError is the expected outcome and is not an error;
    any other exception it ended with is logged, because nobody else will see it.
    """
    if task is None or task.done() and task.cancelled():
        return
    if not task.done():
        task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # we ourselves are being cancelled: propagate
    except Exception:
        log.exception("task_failed", task=task.get_name())


def spawn(coro: Coroutine[Any, Any, Any], *, name: str, owner: set[asyncio.Task[Any]]) -> asyncio.Task[Any]:
    """Start a task tracked in ``owner``; a crash is logged, never left unretrieved."""
    task = asyncio.create_task(coro, name=name)
    owner.add(task)

    def _done(t: asyncio.Task[Any]) -> None:
        owner.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.error("task_crashed", task=t.get_name(), error=repr(t.exception()), exc_info=t.exception())

    task.add_done_callback(_done)
    return task
