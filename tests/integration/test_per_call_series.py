"""500 calls started and ended leave no per-call series on /metrics."""

import asyncio

from voiceline.app import App
from voiceline.config import parse_settings
from voiceline.sim.audiosocket_caller import CallerLeg


async def test_500_calls_leave_no_per_call_series():
    settings = parse_settings({
        "mode": "audiosocket", "default_provider": "echo",
        "audiosocket": {"port": 0}, "http": {"enabled": False}, "history": {"enabled": False},
    }, env={})[0]
    app = App(settings)
    await app.start()
    try:
        for batch in range(10):
            legs = [CallerLeg("127.0.0.1", app.audiosocket.bound_port) for _ in range(50)]
            await asyncio.gather(*(leg.connect() for leg in legs))
            await asyncio.gather(*(leg.play(b"\x10\x00" * 480, realtime=False) for leg in legs))
            for _ in range(200):
                if app.engine.active_calls == 50 * 1 and all(app.store.get(leg.call_uuid) for leg in legs):
                    break
                await asyncio.sleep(0.01)
            text = app.metrics.render().decode()
            assert sum(leg.call_uuid in text for leg in legs) == 50, "live calls should have per-call series"
            await asyncio.gather(*(leg.hangup() for leg in legs))
            for _ in range(300):
                if app.engine.active_calls == 0:
                    break
                await asyncio.sleep(0.01)
            assert app.engine.active_calls == 0
        text = app.metrics.render().decode()
        assert 'call_id="' not in text
        assert "ai_agent_calls_total{provider=\"echo\"} 500.0" in text
    finally:
        await app.stop()
