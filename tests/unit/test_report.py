"""Call report: the timeline recorder, the PNG encoder and the rendered files."""

from __future__ import annotations

import html
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from voiceline.telemetry.png import Canvas, encode_png
from voiceline.telemetry.report import render_report
from voiceline.telemetry.timeline import TimelineRecorder, rms_to_dbfs

HINT = "streaming.min_start_ms 120 -> 260: 2 pause(s) in agent speech (longest pause 137 ms)"


# ---- PNG helpers -------------------------------------------------------------------


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, kind
        chunks.append((kind, body))
        pos += 12 + length
    return chunks


def decode_png(data: bytes) -> np.ndarray:
    """Decoder for what encode_png writes (RGB8, filter 0 on every row)."""
    chunks = png_chunks(data)
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    width, height, depth, colour_type, *_ = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour_type) == (8, 2)
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    assert len(raw) == height * (1 + width * 3)
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, 1 + width * 3)
    assert not rows[:, 0].any()  # filter type 0
    return rows[:, 1:].reshape(height, width, 3)


# ---- timeline recorder --------------------------------------------------------------


def test_recorder_times_events_from_the_call_start():
    rec = TimelineRecorder(start_s=1000.0)
    rec.add("turn_start", "turn1", now_s=1000.5)
    rec.add("agent_on", now_s=1000.6204)
    rec.add("pause", 0, now_s=1001.0)
    assert rec.events == [[500, "turn_start", "turn1"], [620, "agent_on", None], [1000, "pause", 0]]


def test_recorder_rejects_unknown_kinds():
    with pytest.raises(ValueError, match="unknown timeline kind"):
        TimelineRecorder(start_s=0.0).add("depht", now_s=1.0)


def test_depth_is_sampled_at_most_every_200_ms_and_energy_every_100_ms():
    rec = TimelineRecorder(start_s=0.0)
    for tick in range(50):  # one second of 20 ms frames
        now = tick * 0.02
        rec.depth_sample(tick, now_s=now)
        rec.energy_sample(3276.8, now_s=now)
    depth = [e for e in rec.events if e[1] == "depth"]
    energy = [e for e in rec.events if e[1] == "caller_energy"]
    assert depth == [[0, "depth", 0], [200, "depth", 10], [400, "depth", 20], [600, "depth", 30],
                     [800, "depth", 40]]
    assert [e[0] for e in energy] == [0, 100, 200, 300, 400, 500, 600, 700, 800, 900]
    assert {e[2] for e in energy} == {-20.0}


def test_rms_to_dbfs():
    assert rms_to_dbfs(32768) == 0.0
    assert rms_to_dbfs(3276.8) == -20.0
    assert rms_to_dbfs(0) == -96.0
    assert rms_to_dbfs(0.0001) == -96.0


def test_full_recorder_thins_samples_and_keeps_discrete_events():
    rec = TimelineRecorder(start_s=0.0, max_events=100)
    rec.add("turn_start", "turn1", now_s=0.0)
    for tick in range(3000):  # 60 s of frames
        rec.depth_sample(5, now_s=tick * 0.02)
        if tick == 1500:
            rec.add("barge_in", 250, now_s=tick * 0.02)
    events = rec.events
    assert len(events) <= 100
    assert [e for e in events if e[1] != "depth"] == [[0, "turn_start", "turn1"], [30000, "barge_in", 250]]
    times = [e[0] for e in events if e[1] == "depth"]
    assert times[0] == 0 and times[-1] >= 58_000  # the whole call is still covered
    assert rec.dropped == 0


def test_recorder_drops_and_counts_when_only_discrete_events_remain():
    rec = TimelineRecorder(start_s=0.0, max_events=3)
    for i in range(5):
        rec.add("pause", i, now_s=float(i))
    assert [e[2] for e in rec.events] == [0, 1, 2]
    assert rec.dropped == 2


# ---- PNG encoder ----------------------------------------------------------------------


def test_encode_png_round_trips_pixels():
    pixels = np.zeros((3, 4, 3), dtype=np.uint8)
    pixels[1, 2] = (255, 10, 20)
    assert np.array_equal(decode_png(encode_png(pixels)), pixels)


def test_encode_png_rejects_other_arrays():
    with pytest.raises(ValueError):
        encode_png(np.zeros((3, 4), dtype=np.uint8))


def test_canvas_clips_drawing_outside_the_image():
    canvas = Canvas(10, 10)
    canvas.fill_rect(-5, -5, 3, 3, (0, 0, 0))
    canvas.line(-20, 5, 30, 5, (255, 0, 0), width=3)
    canvas.text(8, 8, "HELLO", (0, 0, 255), scale=2)
    assert tuple(canvas.pixels[0, 0]) == (0, 0, 0)
    assert tuple(canvas.pixels[5, 9]) == (255, 0, 0)


# ---- report -------------------------------------------------------------------------------


def sample_record() -> dict:
    rec = TimelineRecorder(start_s=0.0)
    rec.add("turn_start", "turn1", now_s=0.5)
    rec.add("agent_on", now_s=0.62)
    for tick in range(200):
        now = 0.62 + tick * 0.02
        rec.depth_sample(6 + tick % 5, now_s=now)
        rec.energy_sample(200.0 if tick < 150 else 4000.0, now_s=now)
    rec.add("pause", 0, now_s=2.0)
    rec.add("resume", 140.0, now_s=2.14)
    rec.add("barge_in", 3500, now_s=3.62)
    rec.add("agent_off", now_s=3.62)
    rec.add("fallback", "turn2", now_s=6.0)
    return {
        "call_id": "1712345678.42",
        "started_at": "2024-04-05T19:14:38+00:00",
        "duration_s": 8.0,
        "provider": "deepgram",
        "mode": "ari",
        "end_reason": "caller-hangup",
        "tuning_hint": HINT,
        "metrics": {"streaming": {"turns": 1, "pauses": 1, "depth": {"min": 0, "p95": 10}}, "frames_in": 400},
        "transcript": [{"role": "user", "text": "<hi> & bye"}],
        "timeline": rec.events,
    }


def test_report_png_has_requested_size_and_a_picture(tmp_path: Path):
    png, page = tmp_path / "out" / "call.png", tmp_path / "out" / "call.html"
    render_report(sample_record(), png, page, width=900, height=500)
    data = png.read_bytes()
    chunks = png_chunks(data)
    width, height = struct.unpack(">II", chunks[0][1][:8])
    assert (width, height) == (900, 500)
    pixels = decode_png(data)
    rgb = pixels.reshape(-1, 3).astype(np.uint32)
    colours = np.unique(rgb[:, 0] << 16 | rgb[:, 1] << 8 | rgb[:, 2])
    assert len(colours) > 5  # not a single colour


def test_report_html_has_call_id_hint_svg_metrics_and_escaped_text(tmp_path: Path):
    png, page = tmp_path / "call.png", tmp_path / "call.html"
    render_report(sample_record(), png, page)
    text = page.read_text()
    assert "1712345678.42" in text
    assert html.escape(HINT) in text
    assert "<svg" in text and "<polyline" in text
    assert "metrics.streaming.pauses" in text and "metrics.frames_in" in text
    assert "&lt;hi&gt; &amp; bye" in text


def test_report_of_a_call_without_timeline(tmp_path: Path):
    record = {"call_id": "empty", "duration_s": None, "tuning_hint": None, "timeline": None}
    render_report(record, tmp_path / "a.png", tmp_path / "a.html")
    pixels = decode_png((tmp_path / "a.png").read_bytes())
    assert pixels.shape == (700, 1200, 3)
    assert "none recorded" in (tmp_path / "a.html").read_text()


def test_report_skips_malformed_timeline_entries(tmp_path: Path):
    record = {"call_id": "odd", "timeline": [[100, "depth", 3], "garbage", [None, "pause"], [300, "depth", 4]]}
    render_report(record, tmp_path / "a.png", tmp_path / "a.html", width=400, height=300)
    assert decode_png((tmp_path / "a.png").read_bytes()).shape == (300, 400, 3)


def test_report_refuses_tiny_sizes(tmp_path: Path):
    with pytest.raises(ValueError, match="at least"):
        render_report(sample_record(), tmp_path / "a.png", tmp_path / "a.html", width=100, height=100)
