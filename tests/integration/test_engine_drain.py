"""Graceful drain: no new calls, live calls finish, the rest are ended with records."""

import asyncio

from ari_harness import AriRig, ScriptedProvider, wait_for

from voiceline.app import App
from voiceline.asterisk.ari import AriError
from voiceline.config import parse_settings
from voiceline.sim.audiosocket_caller import CallerLeg


def _app(drain_timeout_s: float) -> App:
    settings = parse_settings({
        "mode": "audiosocket", "default_provider": "echo",
        "audiosocket": {"port": 0}, "http": {"enabled": False}, "history": {"enabled": False},
        "shutdown": {"drain_timeout_s": drain_timeout_s},
    }, env={})[0]
    return App(settings)


async def test_drain_refuses_new_calls_and_waits_for_live_ones():
    app = _app(30.0)
    await app.start()
    try:
        live = CallerLeg("127.0.0.1", app.audiosocket.bound_port)
        await live.connect()
        await wait_for(lambda: app.engine.active_calls == 1)
        ended = []
        app.engine._on_call_ended = ended.append
        drain = asyncio.ensure_future(app.drain())
        await wait_for(lambda: app.draining)
        ready, checks = app.readiness()
        assert not ready and checks["taking_calls"] == {"usable": False, "detail": "draining"}
        late = CallerLeg("127.0.0.1", app.audiosocket.bound_port)
        await late.connect()
        assert await late.wait_closed(2.0)
        assert app.engine.active_calls == 1 and not drain.done()
        await live.hangup()
        assert await drain == 0
        assert [c.session.call_id for c in ended] == [live.call_uuid]
    finally:
        await app.stop()


async def test_drain_timeout_ends_remaining_calls_with_their_records():
    app = _app(0.2)
    await app.start()
    try:
        legs = [CallerLeg("127.0.0.1", app.audiosocket.bound_port) for _ in range(2)]
        for leg in legs:
            await leg.connect()
        await wait_for(lambda: app.engine.active_calls == 2)
        ended = []
        app.engine._on_call_ended = ended.append
        assert await app.drain() == 2
        assert app.engine.active_calls == 0
        assert sorted(c.session.end_reason for c in ended) == ["shutdown: drain timeout"] * 2
        for leg in legs:
            assert await leg.wait_closed(2.0)
    finally:
        await app.stop()


async def test_second_signal_ends_the_drain_at_once():
    app = _app(30.0)
    await app.start()
    try:
        leg = CallerLeg("127.0.0.1", app.audiosocket.bound_port)
        await leg.connect()
        await wait_for(lambda: app.engine.active_calls == 1)
        abort = asyncio.Event()
        drain = asyncio.ensure_future(app.drain(abort))
        await wait_for(lambda: app.draining)
        abort.set()
        assert await asyncio.wait_for(drain, 5.0) == 1
        assert app.engine.active_calls == 0
    finally:
        await app.stop()


async def test_ari_caller_arriving_while_draining_goes_back_to_the_dialplan(tmp_path):
    async with AriRig(ScriptedProvider(), tmp_path) as rig:
        rig.engine.stop_accepting()
        channel_id = rig.ari.new_caller()
        await rig.ari.stasis_start(channel_id)
        assert ("continue_in_dialplan", channel_id) in rig.ari.log
        assert rig.engine.active_calls == 0 and channel_id in rig.ari.channels
        # When the channel cannot continue, it is hung up instead.
        rig.ari.fail["continue_in_dialplan"] = AriError(404, "POST", "/channels/x/continue", "gone")
        other = rig.ari.new_caller()
        await rig.ari.stasis_start(other)
        assert ("hangup", other) in rig.ari.log and other not in rig.ari.channels
