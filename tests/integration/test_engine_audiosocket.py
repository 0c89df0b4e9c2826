"""The whole engine in audiosocket mode on loopback: simulated Asterisk legs, echo provider."""

import asyncio
import math

import numpy as np
import pytest

from voiceline.app import App
from voiceline.config import parse_settings
from voiceline.sim.audiosocket_caller import CallerLeg


def _settings(**extra):
    data = {
        "mode": "audiosocket",
        "default_provider": "echo",
        "audiosocket": {"port": 0},
        "http": {"enabled": False},
        "history": {"enabled": False},
        "providers": {"echo": {"delay_ms": 200}},
    }
    data.update(extra)
    return parse_settings(data, env={})[0]


def _tone(seconds: float, freq: float = 600.0, rate: int = 8000) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    return (np.sin(2 * math.pi * freq * t) * 6000).astype("<i2").tobytes()


@pytest.fixture
async def app():
    application = App(_settings())
    await application.start()
    yield application
    await application.stop()


async def _wait_for(predicate, timeout=3.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)


async def test_echo_call_returns_caller_audio_and_cleans_up(app):
    leg = CallerLeg("127.0.0.1", app.audiosocket.bound_port)
    await leg.connect()
    await _wait_for(lambda: app.engine.active_calls == 1)
    tone = _tone(1.0)
    await leg.play(tone)
    await leg.send_silence(0.6)
    received = np.frombuffer(leg.received_audio(), "<i2").astype(float)
    # every outbound frame is a whole 20 ms slin frame
    assert {len(f.payload) for f in leg.audio_frames()} == {320}
    # the tone came back: strong 600 Hz energy in what the caller received
    spectrum = np.abs(np.fft.rfft(received))
    freqs = np.fft.rfftfreq(len(received), 1 / 8000)
    peak = freqs[np.argmax(spectrum)]
    assert abs(peak - 600) < 5
    # and it came back about delay_ms (+ min_start buffering) after it was sent
    energy = np.array([np.sqrt(np.mean(np.square(received[i:i + 160]))) for i in range(0, len(received) - 160, 160)])
    first_loud_ms = int(np.argmax(energy > 1000)) * 20
    assert first_loud_ms >= 200
    call_id = leg.call_uuid
    assert app.store.get(call_id) is not None
    await leg.hangup()
    await _wait_for(lambda: app.engine.active_calls == 0)
    assert len(app.store) == 0 and app.store.channel_index_size == 0
    assert app.engine.streaming.get(call_id) is None
    assert app.pacer.stats.streams == 0


async def test_duplicate_uuid_refused_other_call_unaffected(app):
    first = CallerLeg("127.0.0.1", app.audiosocket.bound_port)
    await first.connect()
    await _wait_for(lambda: app.engine.active_calls == 1)
    dup = CallerLeg("127.0.0.1", app.audiosocket.bound_port, call_uuid=first.call_uuid)
    await dup.connect()
    assert await dup.wait_closed(2.0)
    assert [f.kind for f in dup.received] == [0xFF]
    await first.play(_tone(0.6))
    await first.send_silence(0.4)
    assert app.engine.active_calls == 1
    assert len(first.audio_frames()) > 30
    await first.hangup()
    await _wait_for(lambda: app.engine.active_calls == 0)


async def test_garbage_connection_does_not_disturb_live_call(app):
    good = CallerLeg("127.0.0.1", app.audiosocket.bound_port)
    await good.connect()
    reader, writer = await asyncio.open_connection("127.0.0.1", app.audiosocket.bound_port)
    writer.write(bytes(range(7, 200)))
    await writer.drain()
    assert await reader.read() == b""  # closed on the malformed frame
    writer.close()
    await good.play(_tone(0.4))
    await good.send_silence(0.4)
    assert app.engine.active_calls == 1
    await good.hangup()
    await _wait_for(lambda: app.engine.active_calls == 0)


async def test_outbound_stream_failure_ends_the_call_with_a_reason(app):
    """Defect 9.4: a pacer tick that raised removed the stream silently and the call
    went on with no audio; now the call ends, its reason naming the failure."""
    leg = CallerLeg("127.0.0.1", app.audiosocket.bound_port)
    await leg.connect()
    await _wait_for(lambda: app.engine.active_calls == 1)
    call = app.engine.call(leg.call_uuid)
    ended = []
    app.engine._on_call_ended = ended.append

    def broken_send(pcm, kind):
        raise OSError("socket exploded")

    call.leg._connection.send_audio = broken_send  # the socket write raises on the next tick
    await _wait_for(lambda: app.engine.active_calls == 0)
    assert "outbound stream failed" in ended[0].session.end_reason
    assert "socket exploded" in ended[0].session.end_reason
    assert await leg.wait_closed(2.0)


async def test_provider_refusing_caller_audio_ends_the_call_with_a_reason(app):
    """A provider whose send_audio raised killed only the call's inbound sender task
    (logged as task_crashed); the call stayed up with the agent deaf. The call's own
    tasks are essential: the call ends, its reason naming the failure."""
    leg = CallerLeg("127.0.0.1", app.audiosocket.bound_port)
    await leg.connect()
    await _wait_for(lambda: app.engine.active_calls == 1)
    call = app.engine.call(leg.call_uuid)
    ended = []
    app.engine._on_call_ended = ended.append

    async def broken_send_audio(audio):
        raise RuntimeError("provider socket refused the frame")

    call.provider.send_audio = broken_send_audio
    await leg.play(_tone(0.2), realtime=False)
    await _wait_for(lambda: app.engine.active_calls == 0)
    assert "caller audio to provider failed" in ended[0].session.end_reason
    assert "refused the frame" in ended[0].session.end_reason
    assert await leg.wait_closed(2.0)


async def test_frames_of_another_sample_rate_are_refused_counted_and_logged_once(app):
    """Defect 9.7: 16 kHz frames on an 8 kHz call reached the provider as if 8 kHz.
    They are refused (not resampled: a leg switching rate mid-call is a dialplan
    error to fix, not audio to guess at), counted per call and in a metric."""
    leg = CallerLeg("127.0.0.1", app.audiosocket.bound_port, sample_rate=16000)
    await leg.connect()
    await _wait_for(lambda: app.engine.active_calls == 1)
    call = app.engine.call(leg.call_uuid)
    await leg.play(_tone(0.4, rate=16000), realtime=False)
    await _wait_for(lambda: call.counters.frames_in == 20)
    assert call.counters.frames_wrong_rate == 20
    assert call.counters.frames_to_provider == 0
    assert 'ai_agent_inbound_frames_refused_total{reason="wrong_rate"} 20.0' in app.metrics.render().decode()
    from voiceline.app import call_summary
    assert call_summary(call)["frames_wrong_rate"] == 20
    await leg.hangup()
    await _wait_for(lambda: app.engine.active_calls == 0)


async def test_full_collections_wait_for_the_last_call_to_end(app):
    # A full GC pass walks every object of every call with the GIL held; while calls
    # play it stops all of them at once. The engine runs it once idle instead.
    import gc

    assert gc.get_threshold()[2] > 10**9  # no automatic full collection
    before = app.gc_keeper.collections
    legs = [CallerLeg("127.0.0.1", app.audiosocket.bound_port) for _ in range(2)]
    for leg in legs:
        await leg.connect()
    await _wait_for(lambda: app.engine.active_calls == 2)
    await legs[0].hangup()
    await _wait_for(lambda: app.engine.active_calls == 1)
    assert app.gc_keeper.collections == before  # one call still playing
    await legs[1].hangup()
    await _wait_for(lambda: app.engine.active_calls == 0)
    assert app.gc_keeper.collections == before + 1


async def test_stopping_the_app_restores_the_collector_thresholds():
    import gc

    before = gc.get_threshold()
    application = App(_settings())
    await application.start()
    assert gc.get_threshold() != before
    await application.stop()
    assert gc.get_threshold() == before


async def test_young_collections_run_at_the_end_of_pacer_ticks_while_calls_play(app):
    # The engine's pacer hands its quiet moment (after every write and read of the
    # tick) to the collector, so young collections stop landing between two writes.
    legs = [CallerLeg("127.0.0.1", app.audiosocket.bound_port) for _ in range(2)]
    for leg in legs:
        await leg.connect()
    await _wait_for(lambda: app.engine.active_calls == 2)
    before = app.gc_keeper.young_collections
    hoard = []
    deadline = asyncio.get_running_loop().time() + 5.0
    while app.gc_keeper.young_collections == before and asyncio.get_running_loop().time() < deadline:
        hoard.extend({} for _ in range(50))  # survivors push the young count up
        await asyncio.sleep(0.005)
    assert app.gc_keeper.young_collections > before
    for leg in legs:
        await leg.hangup()
    await _wait_for(lambda: app.engine.active_calls == 0)


async def test_the_pacer_plays_calls_inside_a_realtime_window_and_the_loop_runs_normal_outside_it(app):
    # Root (CI, the lab) may use real-time scheduling: the window opens every tick
    # while a call plays, and closes before the loop runs anything else.
    import os

    assert os.geteuid() == 0, "this test needs root (the kernel refuses SCHED_FIFO otherwise)"
    leg = CallerLeg("127.0.0.1", app.audiosocket.bound_port)
    await leg.connect()
    await _wait_for(lambda: app.engine.active_calls == 1)
    before = app.realtime_window.windows
    await asyncio.sleep(0.2)
    assert app.realtime_window.windows - before >= 5
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # here, between ticks
    assert app.health()["pacer"]["realtime"] == "on"
    await leg.hangup()
    await _wait_for(lambda: app.engine.active_calls == 0)


async def test_realtime_priority_zero_runs_the_pacer_without_a_window():
    application = App(_settings(streaming={"realtime_priority": 0}))
    await application.start()
    try:
        assert application.realtime_window is None
        assert application.health()["pacer"]["realtime"] == "off"
    finally:
        await application.stop()
