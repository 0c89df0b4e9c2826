"""Call history rendered for people: the tables ``voiceline calls`` prints.

Pure functions over the plain row dicts ``HistoryStore`` returns; no database here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

__all__ = ["format_call", "format_call_list"]


def format_call_list(rows: Sequence[Mapping[str, Any]]) -> str:
    """A fixed-width table for ``voiceline calls``."""
    if not rows:
        return "no calls recorded"
    headers = ("CALL ID", "STARTED (UTC)", "DURATION", "PROVIDER", "OUTCOME", "HINT")
    table = [
        (
            str(row.get("call_id") or ""),
            _short_time(row.get("started_at")),
            f"{row['duration_s']:.1f}s" if isinstance(row.get("duration_s"), (int, float)) else "-",
            str(row.get("provider") or "-"),
            str(row.get("end_reason") or "-"),
            _one_line(row.get("tuning_hint"), 60),
        )
        for row in rows
    ]
    widths = [max(len(headers[i]), *(len(r[i]) for r in table)) for i in range(len(headers) - 1)]
    lines = []
    for cells in (headers, *table):
        fixed = "  ".join(cell.ljust(width) for cell, width in zip(cells, widths))
        lines.append(f"{fixed}  {cells[-1]}".rstrip())
    return "\n".join(lines)


def format_call(row: Mapping[str, Any]) -> str:
    """The whole record, readable, for ``voiceline calls show CALL_ID``."""
    lines = [f"call {row.get('call_id')}"]
    for key in ("started_at", "ended_at", "duration_s", "mode", "provider", "end_reason", "caller_id"):
        value = row.get(key)
        lines.append(f"  {key + ':':<12} {'-' if value is None else value}")
    lines.append(f"  {'hint:':<12} {row.get('tuning_hint') or '-'}")
    lines.append("metrics:")
    metrics = row.get("metrics") or {}
    if metrics:
        lines.extend(f"  {key}: {value}" for key, value in _flat_items(metrics))
    else:
        lines.append("  -")
    transcript = row.get("transcript") or []
    lines.append(f"transcript ({len(transcript)} lines):")
    for entry in transcript:
        if isinstance(entry, Mapping):
            who = entry.get("role") or entry.get("speaker") or "?"
            lines.append(f"  {who}: {entry.get('text') or entry.get('content') or ''}")
        else:
            lines.append(f"  {entry}")
    timeline = row.get("timeline") or []
    kinds: dict[str, int] = {}
    for event in timeline:
        if isinstance(event, (list, tuple)) and len(event) >= 2:
            kinds[str(event[1])] = kinds.get(str(event[1]), 0) + 1
    summary = ", ".join(f"{kind} {count}" for kind, count in sorted(kinds.items()))
    lines.append(f"timeline: {len(timeline)} events" + (f" ({summary})" if summary else ""))
    return "\n".join(lines)


def _flat_items(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, Mapping):
        items: list[tuple[str, Any]] = []
        for key, item in value.items():
            items.extend(_flat_items(item, f"{prefix}.{key}" if prefix else str(key)))
        return items
    return [(prefix, value)]


def _short_time(value: Any) -> str:
    if isinstance(value, str):
        return value.replace("T", " ")[:19]
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return "-"


def _one_line(value: Any, limit: int) -> str:
    if not value:
        return "-"
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
