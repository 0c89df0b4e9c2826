"""Call recording: the per-call buffers, file names, WAV output and the sink that feeds them."""

from __future__ import annotations

import wave
from pathlib import Path

import pytest

from voiceline.telemetry.call_sink import TelemetrySink
from voiceline.telemetry.metrics import Metrics
from voiceline.telemetry.recording import (
    CallRecording,
    RecordingWriter,
    recording_files,
    recording_name,
    write_recording,
)

FRAME = b"\x10\x00" * 160  # 20 ms at 8 kHz


def read_wav(path: Path) -> tuple[int, bytes]:
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth()) == (1, 2)
        return wav.getframerate(), wav.readframes(wav.getnframes())


def test_each_leg_stops_growing_at_max_seconds_and_counts_the_rest():
    recording = CallRecording(8000, max_seconds=0.1)  # 5 frames
    for _ in range(7):
        recording.add_caller(FRAME)
    recording.add_agent(FRAME)
    assert len(recording.caller) == 5 * len(FRAME)
    assert recording.truncated_bytes == 2 * len(FRAME)
    assert bytes(recording.agent) == FRAME


def test_a_hole_in_the_caller_leg_is_filled_so_both_legs_keep_one_timeline():
    recording = CallRecording(8000, max_seconds=10)
    slack = int(CallRecording.GAP_SLACK_S * 50)  # in 20 ms frames
    for i in range(100):  # 2 s of agent frames; the caller talks for the first 0.4 s only
        if i < 20:
            recording.add_caller(FRAME)
        recording.add_agent(b"\x00\x00" * 160)
    assert len(recording.caller) == (100 - slack) * len(FRAME)
    assert recording.caller[: 20 * len(FRAME)] == FRAME * 20
    assert recording.caller[20 * len(FRAME):] == bytes((80 - slack) * len(FRAME))
    recording.add_caller(FRAME)  # the caller speaks again: after the silence, not in its place
    assert recording.caller.endswith(bytes(len(FRAME)) + FRAME)


def test_a_caller_leg_within_the_slack_is_not_padded():
    recording = CallRecording(8000, max_seconds=10)
    for _ in range(50):
        recording.add_agent(FRAME)
        recording.add_caller(FRAME)
    recording.add_agent(FRAME)  # the caller's frame of this tick comes a little later
    assert len(recording.caller) == 50 * len(FRAME)


@pytest.mark.parametrize("call_id", ["1796399058.25", "e653402c-5889-4af8-9aac-bc2e6f8c0545"])
def test_plain_call_ids_are_their_own_file_names(call_id):
    assert recording_name(call_id) == call_id


@pytest.mark.parametrize("call_id", ["../../etc/passwd", "a/b", ".hidden", "x..y", "", "é", "a" * 200])
def test_other_call_ids_become_a_hash_that_stays_in_the_directory(call_id):
    name = recording_name(call_id)
    assert name.startswith("call-") and len(name) == 37 and "/" not in name and ".." not in name
    assert recording_name(call_id + "x") != name


def test_both_legs_written_as_wav_at_the_calls_rate(tmp_path):
    recording = CallRecording(16000, max_seconds=10)
    recording.add_caller(FRAME * 2)
    recording.add_agent(b"\x01\x02\x03")  # an odd byte count is cut to whole samples
    paths = write_recording(tmp_path / "rec", "../evil", recording)
    assert [p.parent for p in paths] == [tmp_path / "rec"] * 2
    found = recording_files(tmp_path / "rec", "../evil")
    assert set(found) == {"caller", "agent"}
    assert read_wav(found["caller"]) == (16000, FRAME * 2)
    assert read_wav(found["agent"]) == (16000, b"\x01\x02")
    assert not list((tmp_path / "rec").glob("*.partial"))


def test_no_files_no_legs(tmp_path):
    assert recording_files(tmp_path, "nothing") == {}


async def test_sink_records_each_call_and_writes_it_when_the_call_ends(tmp_path):
    writer = RecordingWriter(tmp_path, sample_rate=8000, max_seconds=60)
    sink = TelemetrySink(Metrics(), recordings=writer)
    sink.call_started("c1", "echo")
    call = sink.for_call("c1", "echo", start_s=0.0)
    for _ in range(3):
        call.caller_audio(FRAME)
        call.agent_audio(b"\x00\x00" * 160)
    assert not recording_files(tmp_path, "c1"), "written before the call ended"
    sink.call_ended("c1", "echo")
    await writer.close()
    found = recording_files(tmp_path, "c1")
    assert read_wav(found["caller"]) == (8000, FRAME * 3)
    assert read_wav(found["agent"]) == (8000, b"\x00\x00" * 480)


async def test_a_call_without_audio_leaves_no_files(tmp_path):
    writer = RecordingWriter(tmp_path, sample_rate=8000, max_seconds=60)
    sink = TelemetrySink(Metrics(), recordings=writer)
    sink.for_call("c2", "echo", start_s=0.0)
    sink.call_ended("c2", "echo")
    await writer.close()
    assert list(tmp_path.iterdir()) == []


def test_without_a_writer_nothing_is_recorded():
    sink = TelemetrySink(Metrics())
    call = sink.for_call("c3", "echo", start_s=0.0)
    call.caller_audio(FRAME)
    call.agent_audio(FRAME)
    assert call.recording is None
    sink.call_ended("c3", "echo")
