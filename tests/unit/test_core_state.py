from voiceline.core.conversation_coordinator import ConversationCoordinator
from voiceline.core.models import CallSession
from voiceline.core.session_store import SessionStore
from voiceline.providers.base import Provider
from voiceline.providers.registry import ProviderRegistry


def _session(call_id="c1", channel="ch1"):
    return CallSession(call_id=call_id, mode="ari", provider_name="echo", started_at=0.0,
                       started_monotonic=0.0, caller_channel_id=channel)


def test_store_indexes_and_releases_channels():
    store = SessionStore()
    store.add(_session())
    store.link_channel("c1", "media1")
    assert store.by_channel("ch1").call_id == "c1"
    assert store.by_channel("media1").call_id == "c1"
    assert store.remove("c1") is not None
    assert len(store) == 0 and store.channel_index_size == 0
    assert store.by_channel("media1") is None


def test_coordinator_gates_while_any_playback_active():
    store = SessionStore()
    store.add(_session())
    changes = []
    coord = ConversationCoordinator(store, on_gating_change=lambda cid, on: changes.append(on))
    assert coord.audio_capture_enabled("c1")
    coord.on_tts_start("c1", "p1")
    coord.on_tts_start("c1", "p2")
    coord.on_tts_start("c1", "p2")  # duplicate start is ignored
    assert not coord.audio_capture_enabled("c1")
    assert coord.on_tts_end("c1", "p1", "completed")
    assert not coord.audio_capture_enabled("c1")
    assert coord.on_tts_end("c1", "p2", "barge-in")
    assert coord.audio_capture_enabled("c1")
    assert not coord.on_tts_end("c1", "p2", "playback-finished")  # second end: no-op
    conv = store.get("c1").conversation
    assert changes == [False, True]
    assert conv.gating_transitions == 2 and conv.tts_starts == 2 and conv.tts_ends == 2
    assert conv.end_reasons == {"completed": 1, "barge-in": 1}


class _Fake(Provider):
    def __init__(self, name, usable=True):
        self.name = name
        self.usable = usable

    def availability(self):
        return self.usable, "set FAKE_KEY"

    def create_session(self, ctx):
        raise NotImplementedError


def test_registry_falls_back_to_default_with_reason():
    reg = ProviderRegistry({"a": _Fake("a"), "b": _Fake("b", usable=False)}, "a")
    assert reg.choose(None).provider.name == "a"
    unknown = reg.choose("zzz")
    assert unknown.provider.name == "a" and "unknown provider 'zzz'" in unknown.fallback_reason
    unavailable = reg.choose("b")
    assert unavailable.provider.name == "a" and "set FAKE_KEY" in unavailable.fallback_reason
    reg2 = ProviderRegistry({"a": _Fake("a"), "b": _Fake("b")}, "a")
    assert reg2.choose("b").provider.name == "b" and reg2.choose("b").fallback_reason is None
