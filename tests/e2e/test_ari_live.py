"""AriClient's listing and dialplan calls against the real lab Asterisk (the fake ARI cannot
tell us what the real one answers, e.g. that an unknown channel is a 404)."""

from __future__ import annotations

import uuid

from conftest import ARI_PASSWORD

from voiceline.asterisk.ari import AriClient


async def test_listings_bridges_and_missing_channels_on_real_asterisk(asterisk) -> None:
    client = AriClient(asterisk.ari_url, asterisk.ari_user, ARI_PASSWORD, "voiceline-ari-live")
    await client.open()
    try:
        channels = await client.list_channels()
        assert isinstance(channels, list)
        assert all(isinstance(channel.get("id"), str) for channel in channels)

        bridge_id = f"ari-live-{uuid.uuid4()}"
        created = await client.create_bridge(bridge_id=bridge_id, name="ari-live")
        assert created["id"] == bridge_id
        assert bridge_id in {bridge["id"] for bridge in await client.list_bridges()}
        assert await client.destroy_bridge(bridge_id) is True
        assert bridge_id not in {bridge["id"] for bridge in await client.list_bridges()}

        # A channel that does not exist is a 404 for both, which the client reports as "gone".
        missing = f"no-such-channel-{uuid.uuid4()}"
        assert await client.continue_in_dialplan(missing, "default", "s", 1) is False
        assert await client.hangup(missing) is False
    finally:
        await client.close()
