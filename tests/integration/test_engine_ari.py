"""The engine in ari mode against a fake ARI (tests/integration/ari_harness.py)."""

from __future__ import annotations

from ari_harness import AriRig, ScriptedProvider, wait_for

from voiceline.core.stream_events import FallbackRequested


async def test_call_sets_up_bridge_and_media_and_releases_everything(tmp_path):
    async with AriRig(ScriptedProvider(), tmp_path) as rig:
        channel_id, call = await rig.call()
        assert call.session.bridge_id in rig.ari.bridges
        assert {("add_channel", call.session.bridge_id, channel_id),
                ("add_channel", call.session.bridge_id, call.session.media_channel_id)} <= set(rig.ari.log)
        await rig.engine.end_call(call.session.call_id, "test")
        assert rig.ari.bridges == {} and rig.ari.channels == set()
        assert len(rig.ended) == 1 and len(rig.store) == 0


async def test_capture_reopens_after_both_fallback_playbacks_of_a_turn_finish(tmp_path):
    """Defect 9.1: a stalled turn hands two file playbacks over (-fallback, then
    -fallback-rest); capture must come back when the last one finishes, whatever
    their order, or the provider never hears the caller again."""
    async with AriRig(ScriptedProvider(), tmp_path) as rig:
        _, call = await rig.call()
        call_id = call.session.call_id
        first = FallbackRequested(call_id, "turn1", b"\x01\x00" * 800, f"voiceline-{call_id}-turn1-fallback")
        rest = FallbackRequested(call_id, "turn1", b"\x01\x00" * 800, f"voiceline-{call_id}-turn1-fallback-rest")
        await rig.mode.play_fallback(call_id, first)
        await rig.mode.play_fallback(call_id, rest)
        assert not call.session.audio_capture_enabled
        await rig.ari.finish_playback(first.playback_id)
        assert not call.session.audio_capture_enabled, "one playback of the turn is still playing"
        await rig.ari.finish_playback(rest.playback_id)
        assert call.session.audio_capture_enabled, "both playbacks finished: the caller must be heard again"
