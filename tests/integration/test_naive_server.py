"""bench/naive_server.py keeps the engine contract the benches rely on: it announces its
port, plays the pacing bench's greeting reference to every caller from its first frame,
and logs one call_summary per call with the fields bench/pacing_run.py reads. Content and
counts only: its timing is what the benches measure, not what a test may assert."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from voiceline.asterisk.audiosocket_codec import FrameKind
from voiceline.sim.audiosocket_caller import CallerLeg

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

from pacing import DEFAULT_GREETING  # noqa: E402
from pacing_client import reference_audio  # noqa: E402

pytestmark = pytest.mark.espeak  # the greeting is spoken by espeak-ng

FRAME = 320


async def test_every_caller_hears_the_greeting_and_gets_a_summary():
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "bench" / "naive_server.py"), "--port", "0", "--seconds", "5"],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )
    try:
        started = json.loads(await asyncio.to_thread(proc.stdout.readline))
        assert started["event"] == "voiceline_started"
        host, port = started["audiosocket"].rsplit(":", 1)
        legs = [CallerLeg(host, int(port)) for _ in range(2)]
        for leg in legs:
            await leg.connect()
        await asyncio.gather(*(leg.send_silence(0.6) for leg in legs))
        for leg in legs:
            leg._writer.close()
            await leg._writer.wait_closed()
        lines = [json.loads(await asyncio.to_thread(proc.stdout.readline)) for _ in legs]
    finally:
        proc.terminate()
        proc.wait(10)

    reference = reference_audio(DEFAULT_GREETING, 5, "mulaw")
    summaries = {s["call_id"]: s for s in lines}
    assert {s["event"] for s in lines} == {"call_summary"}
    assert set(summaries) == {leg.call_uuid for leg in legs}
    for leg in legs:
        audio = [f.payload for f in leg.received if f.kind == FrameKind.SLIN_8K]
        assert audio, "no audio frames"
        assert b"".join(audio) == reference[: len(audio) * FRAME], "not the greeting, from its first frame"
        s = summaries[leg.call_uuid]
        assert s["frames_out"] == s["greeting_frames"] >= len(audio)
        assert s["agent_bytes"] == s["greeting_frames"] * 160  # mu-law bytes, as the provider delivers
        assert s["frames_in"] == 30  # 0.6 s of caller frames, read and discarded
        assert s["end_reason"] == "caller hung up"
        for key in ("duration_s", "inbound_dropped", "provider_errors", "drift_ms"):
            assert key in s
