"""The call report: a call's timeline (format in ``telemetry/timeline.py``) drawn
as a PNG and an HTML page (inline SVG of the same picture plus a table of the call's metrics). Both
outputs come from one list of drawing primitives, so they show the same thing.
"""

from __future__ import annotations

import html
import json
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import structlog

from voiceline.telemetry.png import (
    GLYPH_ADVANCE,
    GLYPH_HEIGHT,
    Canvas,
    Colour,
    write_png,
)

__all__ = [
    "render_html",
    "render_png",
    "render_report",
    "render_svg",
]

log = structlog.get_logger("voiceline.report")

# ---- the picture as primitives --------------------------------------------------------

_BACKGROUND: Colour = (255, 255, 255)
_INK: Colour = (33, 33, 33)
_MUTED: Colour = (110, 110, 110)
_GRID: Colour = (228, 228, 228)
_FRAME: Colour = (160, 160, 160)
_DEPTH: Colour = (31, 119, 180)
_ENERGY: Colour = (117, 112, 179)
_AGENT: Colour = (102, 194, 165)
_PAUSE: Colour = (255, 127, 14)
_PAUSE_SHADE: Colour = (255, 229, 204)
_FALLBACK: Colour = (214, 39, 40)
_BARGE_IN: Colour = (200, 0, 160)
_TURN: Colour = (60, 60, 60)

_ENERGY_FLOOR_DBFS = -80.0  # the quietest level drawn; quieter is drawn at the bottom
_TICK_STEPS_S = (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600)
_MAX_TICKS = 12
_MIN_WIDTH, _MIN_HEIGHT = 400, 300


@dataclass(frozen=True)
class _Rect:
    x0: float
    y0: float
    x1: float
    y1: float
    colour: Colour


@dataclass(frozen=True)
class _Path:
    points: tuple[tuple[float, float], ...]
    colour: Colour
    width: int = 1


@dataclass(frozen=True)
class _Label:
    x: float
    y: float  # top of the text
    text: str
    colour: Colour
    scale: int = 1


_Shape = _Rect | _Path | _Label


@dataclass(frozen=True)
class _Panel:
    top: float
    bottom: float
    left: float
    right: float


class _Scene:
    def __init__(self, width: int, height: int) -> None:
        self.width = width
        self.height = height
        self.shapes: list[_Shape] = []

    def rect(self, x0: float, y0: float, x1: float, y1: float, colour: Colour) -> None:
        self.shapes.append(_Rect(x0, y0, x1, y1, colour))

    def path(self, points: Sequence[tuple[float, float]], colour: Colour, width: int = 1) -> None:
        if points:
            self.shapes.append(_Path(tuple(points), colour, width))

    def label(self, x: float, y: float, text: str, colour: Colour = _INK, scale: int = 1) -> None:
        self.shapes.append(_Label(x, y, text, colour, scale))


def _parse_timeline(raw: Any) -> list[tuple[int, str, Any]]:
    if not isinstance(raw, list):
        return []
    events: list[tuple[int, str, Any]] = []
    malformed = 0
    for item in raw:
        if (isinstance(item, (list, tuple)) and len(item) >= 2 and isinstance(item[0], (int, float))
                and isinstance(item[1], str)):
            events.append((int(item[0]), item[1], item[2] if len(item) > 2 else None))
        else:
            malformed += 1
    if malformed:
        log.warning("timeline entries skipped as malformed", count=malformed)
    events.sort(key=lambda e: e[0])
    return events


def _build_scene(record: Mapping[str, Any], width: int, height: int) -> _Scene:
    if width < _MIN_WIDTH or height < _MIN_HEIGHT:
        raise ValueError(f"report must be at least {_MIN_WIDTH}x{_MIN_HEIGHT}, got {width}x{height}")
    scene = _Scene(width, height)
    events = _parse_timeline(record.get("timeline"))
    duration_s = record.get("duration_s") or 0
    end_ms = max([1000, float(duration_s) * 1000.0, *(t for t, _, _ in events)])

    left, right = 70.0, width - 20.0
    scene.label(left, 12, f"Call {record.get('call_id', '?')}", scale=2)
    scene.label(left, 36, _subtitle(record), _MUTED)
    _legend(scene, left, 52)

    caption_scale = 2 if width >= 800 else 1
    caption_lines = _wrap(f"Tuning: {record.get('tuning_hint') or 'none recorded'}", width - 40, caption_scale)
    line_height = (GLYPH_HEIGHT + 4) * caption_scale
    caption_top = height - 12 - len(caption_lines) * line_height
    plots_top, plots_bottom = 74.0, caption_top - 30.0
    span = plots_bottom - plots_top
    depth = _Panel(plots_top, plots_top + span * 0.42, left, right)
    agent = _Panel(depth.bottom + span * 0.06, depth.bottom + span * 0.16, left, right)
    energy = _Panel(agent.bottom + span * 0.06, plots_bottom, left, right)

    def x_of(t_ms: float) -> float:
        return left + (right - left) * min(max(t_ms / end_ms, 0.0), 1.0)

    for panel in (depth, agent, energy):
        scene.rect(panel.left, panel.top, panel.right, panel.bottom, (250, 250, 250))
    _time_grid(scene, (depth, agent, energy), end_ms, x_of)
    _pause_shading(scene, depth, events, x_of)
    _depth_line(scene, depth, events, x_of)
    _agent_bands(scene, agent, events, x_of, end_ms)
    _energy_line(scene, energy, events, x_of)
    _markers(scene, (depth, agent, energy), events, x_of)
    for panel in (depth, agent, energy):
        _outline(scene, panel)

    for i, line in enumerate(caption_lines):
        scene.label(20, caption_top + i * line_height, line, _INK, caption_scale)
    return scene


def _subtitle(record: Mapping[str, Any]) -> str:
    parts = [
        f"provider {record.get('provider') or '?'}",
        f"mode {record.get('mode') or '?'}",
        f"duration {_seconds(record.get('duration_s'))}",
        f"end {record.get('end_reason') or '?'}",
    ]
    started = _format_time(record.get("started_at"))
    if started:
        parts.insert(0, f"started {started}")
    return "   ".join(parts)


def _legend(scene: _Scene, x: float, y: float) -> None:
    for text, colour in (("buffer depth", _DEPTH), ("agent audio", _AGENT), ("caller energy", _ENERGY),
                         ("pause", _PAUSE), ("fallback", _FALLBACK), ("barge-in", _BARGE_IN)):
        scene.rect(x, y, x + 10, y + 8, colour)
        scene.label(x + 14, y + 1, text, _MUTED)
        x += 14 + Canvas.text_width(text) + 22


def _time_grid(scene: _Scene, panels: Sequence[_Panel], end_ms: float, x_of: Any) -> None:
    step_s = next((s for s in _TICK_STEPS_S if end_ms / 1000.0 / s <= _MAX_TICKS), _TICK_STEPS_S[-1])
    bottom = panels[-1].bottom
    n_ticks = int(end_ms / 1000.0 / step_s + 1e-9)
    for i in range(n_ticks + 1):
        t_s = i * step_s
        x = x_of(t_s * 1000.0)
        for panel in panels:
            scene.path([(x, panel.top), (x, panel.bottom)], _GRID)
        text = f"{t_s:g}s"
        scene.label(x - Canvas.text_width(text) / 2, bottom + 6, text, _MUTED)


def _outline(scene: _Scene, panel: _Panel) -> None:
    p = panel
    scene.path([(p.left, p.top), (p.right, p.top), (p.right, p.bottom), (p.left, p.bottom), (p.left, p.top)],
               _FRAME)


def _samples(events: Iterable[tuple[int, str, Any]], kind: str) -> list[tuple[int, float]]:
    return [(t, float(v)) for t, k, v in events if k == kind and isinstance(v, (int, float))]


def _segments(samples: list[tuple[int, float]]) -> list[list[tuple[int, float]]]:
    """Split where samples stop for a while (between turns), so no line bridges a gap."""
    if len(samples) < 2:
        return [samples] if samples else []
    gaps = sorted(b[0] - a[0] for a, b in pairwise(samples))
    limit = 2.5 * max(gaps[len(gaps) // 2], 1)
    segments: list[list[tuple[int, float]]] = [[samples[0]]]
    for previous, sample in pairwise(samples):
        if sample[0] - previous[0] > limit:
            segments.append([])
        segments[-1].append(sample)
    return segments


def _depth_line(scene: _Scene, panel: _Panel, events: list[tuple[int, str, Any]], x_of: Any) -> None:
    samples = _samples(events, "depth")
    top_value = max([10.0, *(v for _, v in samples)])
    scene.label(8, panel.top, "depth", _INK)
    scene.label(8, panel.top + 12, "frames", _MUTED)
    scene.label(panel.left - 6 - Canvas.text_width(f"{top_value:g}"), panel.top + 2, f"{top_value:g}", _MUTED)
    scene.label(panel.left - 12, panel.bottom - 8, "0", _MUTED)

    def y_of(value: float) -> float:
        return panel.bottom - (panel.bottom - panel.top) * value / top_value

    for segment in _segments(samples):
        scene.path([(x_of(t), y_of(v)) for t, v in segment], _DEPTH, 2)


def _energy_line(scene: _Scene, panel: _Panel, events: list[tuple[int, str, Any]], x_of: Any) -> None:
    samples = _samples(events, "caller_energy")
    scene.label(8, panel.top, "caller", _INK)
    scene.label(8, panel.top + 12, "dBFS", _MUTED)
    scene.label(panel.left - 6 - Canvas.text_width("0"), panel.top + 2, "0", _MUTED)
    floor_text = f"{_ENERGY_FLOOR_DBFS:g}"
    scene.label(panel.left - 6 - Canvas.text_width(floor_text), panel.bottom - 8, floor_text, _MUTED)
    if not samples:
        scene.label(panel.left + 8, panel.top + 8, "no caller energy recorded", _MUTED)
        return

    def y_of(dbfs: float) -> float:
        level = (min(max(dbfs, _ENERGY_FLOOR_DBFS), 0.0) - _ENERGY_FLOOR_DBFS) / -_ENERGY_FLOOR_DBFS
        return panel.bottom - (panel.bottom - panel.top) * level

    for segment in _segments(samples):
        scene.path([(x_of(t), y_of(v)) for t, v in segment], _ENERGY, 1)


def _agent_bands(scene: _Scene, panel: _Panel, events: list[tuple[int, str, Any]], x_of: Any,
                 end_ms: float) -> None:
    scene.label(8, panel.top, "agent", _INK)
    on_since: int | None = None
    for t, kind, _ in events:
        if kind == "agent_on" and on_since is None:
            on_since = t
        elif kind == "agent_off" and on_since is not None:
            scene.rect(x_of(on_since), panel.top + 2, max(x_of(t), x_of(on_since) + 1), panel.bottom - 2, _AGENT)
            on_since = None
        elif kind == "turn_start":
            scene.path([(x_of(t), panel.top), (x_of(t), panel.top + 5)], _TURN)
    if on_since is not None:  # still speaking when the call ended
        scene.rect(x_of(on_since), panel.top + 2, x_of(end_ms), panel.bottom - 2, _AGENT)


def _pause_shading(scene: _Scene, panel: _Panel, events: list[tuple[int, str, Any]], x_of: Any) -> None:
    paused_at: int | None = None
    for t, kind, _ in events:
        if kind == "pause":
            paused_at = t
        elif kind in ("resume", "agent_off", "turn_end") and paused_at is not None:
            scene.rect(x_of(paused_at), panel.top + 1, max(x_of(t), x_of(paused_at) + 1), panel.bottom - 1,
                       _PAUSE_SHADE)
            paused_at = None


def _markers(scene: _Scene, panels: Sequence[_Panel], events: list[tuple[int, str, Any]], x_of: Any) -> None:
    colours = {"pause": _PAUSE, "fallback": _FALLBACK, "barge_in": _BARGE_IN}
    top, bottom = panels[0].top, panels[-1].bottom
    for t, kind, _ in events:
        colour = colours.get(kind)
        if colour is not None:
            x = x_of(t)
            scene.path([(x, top), (x, bottom)], colour, 2)


def _wrap(text: str, width_px: float, scale: int) -> list[str]:
    columns = max(int(width_px // (GLYPH_ADVANCE * scale)), 10)
    return textwrap.wrap(text, columns) or [""]


def _seconds(value: Any) -> str:
    return f"{float(value):.1f}s" if isinstance(value, (int, float)) else "?"


def _format_time(value: Any) -> str | None:
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, str) and value:
        return value.replace("T", " ")[:19] + (" UTC" if value.endswith(("+00:00", "Z")) else "")
    return None


# ---- output ---------------------------------------------------------------------------


def _rasterize(scene: _Scene) -> Canvas:
    canvas = Canvas(scene.width, scene.height, _BACKGROUND)
    for shape in scene.shapes:
        if isinstance(shape, _Rect):
            canvas.fill_rect(shape.x0, shape.y0, shape.x1, shape.y1, shape.colour)
        elif isinstance(shape, _Path):
            canvas.polyline(shape.points, shape.colour, shape.width)
        else:
            canvas.text(shape.x, shape.y, shape.text, shape.colour, shape.scale)
    return canvas


def _svg(scene: _Scene) -> str:
    def rgb(colour: Colour) -> str:
        return "#{:02x}{:02x}{:02x}".format(*colour)

    parts = [
        (f'<svg xmlns="http://www.w3.org/2000/svg" width="{scene.width}" height="{scene.height}"'
         f' viewBox="0 0 {scene.width} {scene.height}">'),
        f'<rect width="{scene.width}" height="{scene.height}" fill="{rgb(_BACKGROUND)}"/>',
    ]
    for shape in scene.shapes:
        if isinstance(shape, _Rect):
            x0, x1 = sorted((shape.x0, shape.x1))
            y0, y1 = sorted((shape.y0, shape.y1))
            parts.append(f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{x1 - x0:.1f}" height="{y1 - y0:.1f}"'
                         f' fill="{rgb(shape.colour)}"/>')
        elif isinstance(shape, _Path):
            points = " ".join(f"{x:.1f},{y:.1f}" for x, y in shape.points)
            parts.append(f'<polyline points="{points}" fill="none" stroke="{rgb(shape.colour)}"'
                         f' stroke-width="{shape.width}"/>')
        else:
            size = 9 * shape.scale
            baseline = shape.y + GLYPH_HEIGHT * shape.scale
            parts.append(f'<text x="{shape.x:.1f}" y="{baseline:.1f}" font-family="monospace"'
                         f' font-size="{size}" fill="{rgb(shape.colour)}">{html.escape(shape.text)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def flatten_for_display(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Nested metrics as (dotted key, display text) rows: floats to 3 decimals, long lists cut."""
    if isinstance(value, Mapping):
        rows: list[tuple[str, str]] = []
        for key, item in value.items():
            rows.extend(flatten_for_display(item, f"{prefix}.{key}" if prefix else str(key)))
        return rows
    if isinstance(value, float):
        return [(prefix, f"{value:.3f}".rstrip("0").rstrip("."))]
    if isinstance(value, (list, tuple)):
        shown = json.dumps(list(value[:20]), default=str)
        more = f" … ({len(value)} values)" if len(value) > 20 else ""
        return [(prefix, shown + more)]
    return [(prefix, "" if value is None else str(value))]


def _transcript_lines(transcript: Any) -> list[str]:
    if not isinstance(transcript, list):
        return []
    lines = []
    for entry in transcript:
        if isinstance(entry, Mapping):
            who = entry.get("role") or entry.get("speaker") or "?"
            lines.append(f"{who}: {entry.get('text') or entry.get('content') or ''}")
        else:
            lines.append(str(entry))
    return lines


def render_png(record: Mapping[str, Any], png_path: str | Path, *, width: int = 1200, height: int = 700) -> None:
    _write_png(_build_scene(record, width, height), png_path)


def render_html(record: Mapping[str, Any], html_path: str | Path, *, width: int = 1200, height: int = 700) -> None:
    _write_html(record, _build_scene(record, width, height), html_path)


def render_svg(record: Mapping[str, Any], *, width: int = 1200, height: int = 700) -> str:
    """The timeline picture as an SVG element (the operator console embeds it)."""
    return _svg(_build_scene(record, width, height))


def render_report(record: Mapping[str, Any], png_path: str | Path, html_path: str | Path, *,
                  width: int = 1200, height: int = 700) -> None:
    """Write the call's timeline picture as a PNG and as an HTML page with its metrics."""
    scene = _build_scene(record, width, height)
    for path in (png_path, html_path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    _write_png(scene, png_path)
    _write_html(record, scene, html_path)


def _write_png(scene: _Scene, png_path: str | Path) -> None:
    write_png(png_path, _rasterize(scene).pixels)


def _write_html(record: Mapping[str, Any], scene: _Scene, html_path: str | Path) -> None:
    call_id = html.escape(str(record.get("call_id", "?")))
    summary = {k: record.get(k) for k in ("call_id", "started_at", "ended_at", "duration_s", "mode", "provider",
                                          "end_reason", "caller_id", "tuning_hint")}
    rows = flatten_for_display(summary) + flatten_for_display(record.get("metrics") or {}, "metrics")
    table = "\n".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    transcript = _transcript_lines(record.get("transcript"))
    transcript_html = (
        "<h2>Transcript</h2>\n<ol>\n" + "\n".join(f"<li>{html.escape(line)}</li>" for line in transcript) + "\n</ol>"
        if transcript else ""
    )
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>voiceline call {call_id}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #212121; }}
table {{ border-collapse: collapse; }}
th, td {{ text-align: left; padding: 2px 10px; border-bottom: 1px solid #e4e4e4; font-size: 13px; }}
th {{ font-weight: 600; font-family: monospace; }}
.hint {{ background: #fff4e5; padding: 8px 12px; border-left: 4px solid #ff7f0e; }}
</style>
</head>
<body>
<h1>Call {call_id}</h1>
<p class="hint"><strong>Tuning hint:</strong> {html.escape(str(record.get("tuning_hint") or "none recorded"))}</p>
{_svg(scene)}
<h2>Metrics</h2>
<table>
{table}
</table>
{transcript_html}
</body>
</html>
"""
    Path(html_path).write_text(page, encoding="utf-8")
