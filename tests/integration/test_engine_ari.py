"""The engine in ari mode against a fake ARI (tests/integration/ari_harness.py)."""

from __future__ import annotations

import asyncio

from ari_harness import AriRig, ScriptedProvider, wait_for

from voiceline.core.stream_events import FallbackRequested, StreamState
from voiceline.providers import base as pb


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


async def _settled(rig) -> None:
    """Wait until nothing of any call is left, on either side."""
    await wait_for(lambda: rig.engine.active_calls == 0 and not rig.ari.bridges and not rig.ari.channels
                   and len(rig.streaming) == 0, timeout=8.0)


async def test_provider_failing_at_once_leaks_no_asterisk_resource_and_no_stream(tmp_path):
    """Defect 9.2: the call ends (provider start failed) while the ARI setup is still
    running; whatever the setup creates afterwards must be removed too, and the media
    leg arriving late must not start an orphaned stream."""
    async with AriRig(ScriptedProvider(start_error=RuntimeError("no key")), tmp_path) as rig:
        channel_id = rig.ari.new_caller()
        await rig.ari.stasis_start(channel_id)
        await _settled(rig)
        assert 'call_id="' not in rig.metrics.render().decode()
        assert len(rig.ended) == 1


async def test_call_ending_during_each_setup_step_leaves_nothing_behind(tmp_path):
    for step in ("answer", "create_bridge", "add_channel", "external_media"):
        async with AriRig(ScriptedProvider(), tmp_path) as rig:
            rig.ari.slow[step] = 0.2
            channel_id = rig.ari.new_caller()
            setup = asyncio.ensure_future(rig.ari.stasis_start(channel_id))
            await wait_for(lambda: any(entry[0] == step for entry in rig.ari.log))
            session = rig.store.by_channel(channel_id)
            rig.ari.channels.discard(channel_id)  # the caller hung up
            await rig.mode.on_event({"type": "StasisEnd", "channel": {"id": channel_id}})
            await setup
            try:
                await _settled(rig)
            except AssertionError:
                raise AssertionError(f"left behind after ending during {step}: bridges={rig.ari.bridges} "
                                     f"channels={rig.ari.channels} streams={len(rig.streaming)}") from None
            assert [c.session.call_id for c in rig.ended] == [session.call_id]


async def test_teardown_runs_every_step_and_writes_the_record_whatever_fails(tmp_path):
    """Defect 9.3: an unexpected exception in one teardown step (not an AriError) lost
    the call record and left the call, its stream and its per-call series behind."""
    async with AriRig(ScriptedProvider(), tmp_path) as rig:
        _, call = await rig.call()
        call_id = call.session.call_id

        async def broken_close(reason="call ended"):
            raise RuntimeError("provider close exploded")

        call.provider.close = broken_close
        rig.ari.fail["hangup"] = RuntimeError("unexpected ARI client bug")
        await rig.engine.end_call(call_id, "test")
        assert [c.session.call_id for c in rig.ended] == [call_id], "the call record must be written"
        assert rig.engine.active_calls == 0 and len(rig.store) == 0
        assert len(rig.streaming) == 0
        assert rig.ari.bridges == {}, "the steps after the failing one still ran"
        assert 'call_id="' not in rig.metrics.render().decode()


def _loud_frames(leg) -> int:
    import numpy as np

    return sum(1 for f in leg.audio_frames()
               if np.abs(np.frombuffer(f.payload, "<i2")).max(initial=0) > 1000)


async def test_agent_audio_buffered_when_the_provider_drops_is_played_before_the_call_ends(tmp_path):
    """Defect 9.8: audio the provider sent before closing abruptly mid-turn was thrown
    away with the call; it is played, then the call ends."""
    async with AriRig(ScriptedProvider(), tmp_path) as rig:
        _, call = await rig.call()
        session = rig.provider.sessions[0]
        await wait_for(lambda: call._provider_started.is_set())
        session.emit(pb.AgentStartedSpeaking())
        session.emit(pb.AgentAudio(b"\x00\x30" * 8000))  # 1 s, loud
        session.emit(pb.ProviderClosed("connection lost", error=True))
        await wait_for(lambda: rig.engine.active_calls == 0, timeout=5.0)
        assert "provider lost" in rig.ended[0].session.end_reason
        assert _loud_frames(rig.ari.legs[0]) >= 48, "the buffered second of agent audio must reach the caller"


async def test_agent_audio_before_the_media_leg_attaches_is_kept_and_played(tmp_path):
    """Defect 9.8: a greeting sent before the AudioSocket leg attached was dropped uncounted."""
    async with AriRig(ScriptedProvider(), tmp_path) as rig:
        rig.ari.slow["external_media"] = 0.3
        channel_id = rig.ari.new_caller()
        setup = asyncio.ensure_future(rig.ari.stasis_start(channel_id))
        await wait_for(lambda: rig.provider.sessions and rig.store.by_channel(channel_id) is not None)
        call = rig.engine.call(rig.store.by_channel(channel_id).call_id)
        await wait_for(lambda: call._provider_started.is_set())
        session = rig.provider.sessions[0]
        session.emit(pb.AgentStartedSpeaking())
        session.emit(pb.AgentAudio(b"\x00\x30" * 4000))  # 0.5 s greeting
        session.emit(pb.AgentAudioDone())
        await setup
        assert call.leg is not None
        await wait_for(lambda: _loud_frames(rig.ari.legs[0]) >= 24, timeout=3.0)


async def test_capture_reopens_when_a_turn_end_message_is_lost(tmp_path):
    """Defect 9.11: a malformed AgentAudioDone left the caller gated until the fallback
    timer (4 s). Gating follows audio really played: once the stream had nothing to send
    for provider_grace_ms (500 ms), capture reopens. (The exact rule is unit-tested with
    a fake clock in tests/unit/test_call_policy.py.)"""
    async with AriRig(ScriptedProvider(), tmp_path) as rig:
        _, call = await rig.call()
        session = rig.provider.sessions[0]
        await wait_for(lambda: call._provider_started.is_set())
        session.emit(pb.AgentStartedSpeaking())
        session.emit(pb.AgentAudio(b"\x00\x30" * 2400))  # 0.3 s; its AgentAudioDone never comes
        await wait_for(lambda: not call.session.audio_capture_enabled)
        # Reopens after the audio (~0.3 s) and the grace (0.5 s); the fallback timer would
        # only reopen it ~4.4 s after the audio started.
        await wait_for(lambda: call.session.audio_capture_enabled, timeout=3.0)
        assert call.session.conversation.end_reasons.get("starved") == 1


async def test_caller_speaking_after_a_starved_turn_is_a_new_turn_not_a_barge_in(tmp_path):
    """Found by the e2e fault suite (malformed AgentAudioDone): the turn whose end message
    was lost stayed open after capture reopened, so the provider's UserStartedSpeaking for
    the caller's next question counted as a barge-in of audio that had long finished. It
    must close the starved turn quietly: no barge-in, turn ends 'completed'."""
    async with AriRig(ScriptedProvider(), tmp_path) as rig:
        _, call = await rig.call()
        session = rig.provider.sessions[0]
        await wait_for(lambda: call._provider_started.is_set())
        session.emit(pb.AgentStartedSpeaking())
        # 0.3 s and a partial frame; its AgentAudioDone never comes
        session.emit(pb.AgentAudio(b"\x00\x30" * 2450))
        await wait_for(lambda: not call.session.audio_capture_enabled)
        await wait_for(lambda: call.session.audio_capture_enabled, timeout=3.0)
        session.emit(pb.UserStartedSpeaking())
        await wait_for(lambda: call.stream.state is StreamState.IDLE, timeout=3.0)
        assert call.session.conversation.barge_ins == 0
        assert "barge-in" not in call.session.conversation.end_reasons
        # Closing the silent turn plays nothing more: the partial frame left in the
        # buffer must not gate the caller again (the detector would then take the
        # caller's question for an interruption).
        assert call.session.audio_capture_enabled
        assert call.session.conversation.tts_starts == 1


async def test_fallback_files_are_deleted_when_played_and_at_call_end(tmp_path):
    async with AriRig(ScriptedProvider(), tmp_path) as rig:
        _, call = await rig.call()
        call_id = call.session.call_id
        first = FallbackRequested(call_id, "turn1", b"\x01\x00" * 800, f"voiceline-{call_id}-turn1-fallback")
        rest = FallbackRequested(call_id, "turn1", b"\x01\x00" * 800, f"voiceline-{call_id}-turn1-fallback-rest")
        await rig.mode.play_fallback(call_id, first)
        await rig.mode.play_fallback(call_id, rest)
        fallback_dir = tmp_path / "fallback"
        assert {p.name for p in fallback_dir.iterdir()} == {f"{first.playback_id}.sln", f"{rest.playback_id}.sln"}
        await rig.ari.finish_playback(first.playback_id)
        assert [p.name for p in fallback_dir.iterdir()] == [f"{rest.playback_id}.sln"]
        await rig.engine.end_call(call_id, "test")
        assert list(fallback_dir.iterdir()) == []


async def test_stale_fallback_files_are_removed_at_start(tmp_path):
    fallback_dir = tmp_path / "fallback"
    fallback_dir.mkdir()
    (fallback_dir / "voiceline-old-turn1-fallback.sln").write_bytes(b"\x00" * 10)
    (fallback_dir / "voiceline-old-turn2-fallback.sln16.tmp").write_bytes(b"\x00" * 10)
    (fallback_dir / "operator-prompt.sln").write_bytes(b"\x00" * 10)
    async with AriRig(ScriptedProvider(), tmp_path) as rig:
        assert rig.mode.remove_stale_fallback_files() == 2
        assert [p.name for p in fallback_dir.iterdir()] == ["operator-prompt.sln"]


async def test_leftovers_of_a_previous_engine_are_cleaned_on_connect_live_calls_kept(tmp_path):
    async with AriRig(ScriptedProvider(), tmp_path) as rig:
        channel_id, call = await rig.call()
        # What a killed engine process left behind: a bridge with its caller in our app.
        rig.ari.bridges["old-bridge"] = "voiceline-dead-call"
        rig.ari.bridges["foreign"] = "conference-room"
        rig.ari.channels.add("old-caller")
        assert await rig.mode.clean_up_leftovers() == (1, 1)
        assert set(rig.ari.bridges) == {call.session.bridge_id, "foreign"}
        assert rig.ari.channels == {channel_id, call.session.media_channel_id}
        assert rig.engine.active_calls == 1


async def test_barge_in_stops_every_playback_of_the_call(tmp_path):
    async with AriRig(ScriptedProvider(), tmp_path) as rig:
        _, call = await rig.call()
        call_id = call.session.call_id
        for suffix in ("fallback", "fallback-rest"):
            await rig.mode.play_fallback(
                call_id, FallbackRequested(call_id, "turn1", b"\x01\x00" * 800, f"voiceline-{call_id}-turn1-{suffix}"))
        assert rig.mode.playing(call_id)
        await rig.mode.stop_playbacks(call_id)
        assert rig.ari.playbacks == set() and not rig.mode.playing(call_id)
        assert call.session.audio_capture_enabled
