"""When an engine worker that exited is started again (pure: the caller passes the time)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Action(Enum):
    RESTART = "restart"      # start it again after ``delay_s``
    LEAVE = "leave"          # the supervisor is stopping: an exit is expected
    GIVE_UP = "give_up"      # it never came up: the same start would fail again


@dataclass(frozen=True)
class Decision:
    action: Action
    delay_s: float = 0.0
    reason: str = ""


@dataclass
class RestartPolicy:
    """A worker that dies unexpectedly is started again (its calls are lost, its port
    share is taken over by the others meanwhile). Restarts of one worker back off
    (``initial_delay_s`` doubling up to ``max_delay_s``) while it keeps dying within
    ``stable_after_s`` of its start, so a crash loop does not spin; a worker that ran
    that long starts again at once. A worker that never came up at all on the first
    start (bad port, missing driver) is not retried: ``serve`` fails instead, as it
    would with one process."""

    initial_delay_s: float = 0.5
    max_delay_s: float = 10.0
    stable_after_s: float = 60.0
    _next_delay_s: dict[int, float] = field(default_factory=dict)
    _ever_ready: set[int] = field(default_factory=set)

    def came_up(self, index: int) -> None:
        self._ever_ready.add(index)

    def on_exit(self, index: int, *, started_at: float, now: float, stopping: bool) -> Decision:
        if stopping:
            return Decision(Action.LEAVE, reason="supervisor stopping")
        if index not in self._ever_ready:
            return Decision(Action.GIVE_UP, reason="exited before it was ever ready")
        if now - started_at >= self.stable_after_s:
            self._next_delay_s[index] = self.initial_delay_s
            return Decision(Action.RESTART, 0.0, reason=f"ran {now - started_at:.0f} s")
        delay = self._next_delay_s.get(index, self.initial_delay_s)
        self._next_delay_s[index] = min(delay * 2, self.max_delay_s)
        return Decision(Action.RESTART, delay, reason=f"died {now - started_at:.1f} s after its start")
