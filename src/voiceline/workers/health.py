"""One /health and /ready for a supervisor of engine workers, out of what each worker
reported (pure: no I/O; the supervisor gathers the reports)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class WorkerState:
    """What the supervisor knows of one worker slot."""

    index: int
    pid: int | None = None
    up: bool = False          # process running and reported ready
    exit_code: int | None = None  # of the last process in this slot, once it exited
    restarts: int = 0


def merged_health(
    states: list[WorkerState],
    reports: dict[int, dict[str, Any] | str],
    *,
    mode: str,
    config_hash: str,
    draining: bool,
) -> dict[str, Any]:
    """``reports``: each worker's answer (its ``health()``) by index, or why there is
    none. Calls carry their worker's index; ``active_calls`` is the sum."""
    workers: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    history: dict[str, Any] | None = None
    for state in states:
        entry: dict[str, Any] = {
            "index": state.index, "pid": state.pid, "up": state.up,
            "exit_code": state.exit_code, "restarts": state.restarts,
        }
        report = reports.get(state.index)
        if isinstance(report, dict):
            worker_calls = list(report.get("calls") or [])
            calls.extend({**call, "worker": state.index} for call in worker_calls)
            entry.update(active_calls=len(worker_calls), pacer=report.get("pacer"),
                         history=report.get("history"))
            history = _add_history(history, report.get("history"))
        elif isinstance(report, str):
            entry["report_error"] = report
        workers.append(entry)
    return {
        "mode": mode,
        "config_hash": config_hash,
        "ari": None,
        "draining": draining,
        "workers": workers,
        "workers_up": sum(1 for s in states if s.up),
        "active_calls": len(calls),
        "calls": calls,
        "pacer": None,  # one per worker, under workers[].pacer
        "history": history,
    }


def _add_history(total: dict[str, Any] | None, one: Any) -> dict[str, Any] | None:
    """Every worker writes its own records: counts add up, failing if any fails."""
    if not isinstance(one, dict):
        return total
    if total is None:
        return {"backend": one.get("backend"), "pending": one.get("pending", 0), "written": one.get("written", 0),
                "dropped": one.get("dropped", 0), "failing": bool(one.get("failing")),
                "last_error": one.get("last_error")}
    total["pending"] += one.get("pending", 0)
    total["written"] += one.get("written", 0)
    total["dropped"] += one.get("dropped", 0)
    total["failing"] = total["failing"] or bool(one.get("failing"))
    total["last_error"] = total["last_error"] or one.get("last_error")
    return total


def merged_readiness(
    states: list[WorkerState], *, draining: bool, default_provider: dict[str, Any]
) -> tuple[bool, dict[str, Any]]:
    """Ready while at least one worker takes calls (the kernel hands new connections
    only to listening workers) and the supervisor is not draining."""
    up = sum(1 for s in states if s.up)
    checks: dict[str, Any] = {
        "workers": {"usable": up > 0, "detail": f"{up} of {len(states)} up"},
        "default_provider": default_provider,
        "taking_calls": {"usable": not draining, "detail": "draining" if draining else "ok"},
    }
    return all(v["usable"] for v in checks.values()), checks
