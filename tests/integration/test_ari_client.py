"""AriClient REST calls against a fake ARI server (tests/integration/ari_fake.py): every endpoint
sends the swagger request, errors, auth and base URLs. Events, reconnect and shutdown are in
test_ari_client_events.py, test_ari_client_reconnect.py and test_ari_client_shutdown.py."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from ari_fake import APP, PASSWORD, USERNAME, FakeAri, _basic_header, make_client, unused_port

from voiceline.asterisk.ari import AriClient, AriError


# -- REST ---------------------------------------------------------------------

RestCall = Callable[[AriClient], Awaitable[Any]]

# (call, expected method, expected route, expected concrete path, expected query, expected body, expected result)
REST_CASES: list[tuple[str, RestCall, str, str, str, list[tuple[str, str]], Any, Any]] = [
    ("asterisk_info", lambda c: c.asterisk_info(), "GET", "/ari/asterisk/info", "/ari/asterisk/info", [], None,
     {"system": {"version": "22.10.1"}}),
    ("answer", lambda c: c.answer("1700000000.12"), "POST", "/ari/channels/{channelId}/answer",
     "/ari/channels/1700000000.12/answer", [], None, None),
    ("hangup", lambda c: c.hangup("chan-1", reason="busy"), "DELETE", "/ari/channels/{channelId}",
     "/ari/channels/chan-1", [("reason", "busy")], None, True),
    ("hangup_default_reason", lambda c: c.hangup("chan-1"), "DELETE", "/ari/channels/{channelId}",
     "/ari/channels/chan-1", [("reason", "normal")], None, True),
    ("create_bridge", lambda c: c.create_bridge(), "POST", "/ari/bridges", "/ari/bridges", [("type", "mixing")], None,
     {"id": "bridge-1", "bridge_type": "mixing", "channels": []}),
    ("create_bridge_named", lambda c: c.create_bridge("mixing,dtmf_events", name="call-7", bridge_id="br-7"),
     "POST", "/ari/bridges", "/ari/bridges",
     [("type", "mixing,dtmf_events"), ("bridgeId", "br-7"), ("name", "call-7")], None,
     {"id": "bridge-1", "bridge_type": "mixing", "channels": []}),
    ("add_channel", lambda c: c.add_channel("br-7", ["chan-1", "media-1"]), "POST",
     "/ari/bridges/{bridgeId}/addChannel", "/ari/bridges/br-7/addChannel", [("channel", "chan-1,media-1")], None, None),
    ("destroy_bridge", lambda c: c.destroy_bridge("br-7"), "DELETE", "/ari/bridges/{bridgeId}", "/ari/bridges/br-7",
     [], None, True),
    ("external_media",
     lambda c: c.external_media(app=APP, external_host="127.0.0.1:9092", data="0b2f8d1e-6c1a-4a43-9c1e-2b1f3c4d5e6f",
                                channel_id="media-1", variables={"VOICELINE_CALL": "chan-1"}),
     "POST", "/ari/channels/externalMedia", "/ari/channels/externalMedia",
     [("app", APP), ("external_host", "127.0.0.1:9092"), ("data", "0b2f8d1e-6c1a-4a43-9c1e-2b1f3c4d5e6f"),
      ("format", "slin"), ("encapsulation", "audiosocket"), ("transport", "tcp"), ("channelId", "media-1")],
     {"variables": {"VOICELINE_CALL": "chan-1"}},
     {"id": "media-1", "name": "AudioSocket/127.0.0.1:9092-1"}),
    ("external_media_minimal",
     lambda c: c.external_media(app=APP, external_host="127.0.0.1:9092", data="u-1", format="slin16"),
     "POST", "/ari/channels/externalMedia", "/ari/channels/externalMedia",
     [("app", APP), ("external_host", "127.0.0.1:9092"), ("data", "u-1"), ("format", "slin16"),
      ("encapsulation", "audiosocket"), ("transport", "tcp")],
     None, {"id": "media-1", "name": "AudioSocket/127.0.0.1:9092-1"}),
    ("play", lambda c: c.play("chan-1", "sound:hello-world"), "POST", "/ari/channels/{channelId}/play",
     "/ari/channels/chan-1/play", [("media", "sound:hello-world")], None, {"id": "pb-auto", "state": "queued"}),
    ("play_with_id", lambda c: c.play("chan-1", "sound:hello-world", playback_id="pb-1"), "POST",
     "/ari/channels/{channelId}/play/{playbackId}", "/ari/channels/chan-1/play/pb-1",
     [("media", "sound:hello-world")], None, {"id": "pb-1", "state": "queued"}),
    ("stop_playback", lambda c: c.stop_playback("pb-1"), "DELETE", "/ari/playbacks/{playbackId}",
     "/ari/playbacks/pb-1", [], None, True),
    ("get_variable", lambda c: c.get_variable("chan-1", "CALLERID(num)"), "GET", "/ari/channels/{channelId}/variable",
     "/ari/channels/chan-1/variable", [("variable", "CALLERID(num)")], None, "42"),
    ("set_variable", lambda c: c.set_variable("chan-1", "VOICELINE_STATE", "talking"), "POST",
     "/ari/channels/{channelId}/variable", "/ari/channels/chan-1/variable",
     [("variable", "VOICELINE_STATE"), ("value", "talking")], None, None),
    ("continue_in_dialplan", lambda c: c.continue_in_dialplan("chan-1"), "POST",
     "/ari/channels/{channelId}/continue", "/ari/channels/chan-1/continue", [], None, True),
    ("continue_in_dialplan_to", lambda c: c.continue_in_dialplan("chan-1", "after-ai", "s", 3), "POST",
     "/ari/channels/{channelId}/continue", "/ari/channels/chan-1/continue",
     [("context", "after-ai"), ("extension", "s"), ("priority", "3")], None, True),
    ("send_dtmf", lambda c: c.send_dtmf("chan-1", "12#"), "POST", "/ari/channels/{channelId}/dtmf",
     "/ari/channels/chan-1/dtmf", [("dtmf", "12#")], None, True),
    ("redirect", lambda c: c.redirect("chan-1", "PJSIP/operator"), "POST", "/ari/channels/{channelId}/redirect",
     "/ari/channels/chan-1/redirect", [("endpoint", "PJSIP/operator")], None, True),
    ("list_channels", lambda c: c.list_channels(), "GET", "/ari/channels", "/ari/channels", [], None,
     [{"id": "chan-1", "name": "PJSIP/alice-1", "state": "Up"}]),
    ("list_bridges", lambda c: c.list_bridges(), "GET", "/ari/bridges", "/ari/bridges", [], None,
     [{"id": "br-7", "bridge_type": "mixing", "channels": ["chan-1", "media-1"]}]),
]


@pytest.mark.parametrize(
    ("call", "method", "route", "path", "query", "body", "expected"),
    [case[1:] for case in REST_CASES],
    ids=[case[0] for case in REST_CASES],
)
async def test_rest_method_sends_the_swagger_request(
    client: AriClient, fake_ari: FakeAri, call: RestCall, method: str, route: str, path: str,
    query: list[tuple[str, str]], body: Any, expected: Any,
) -> None:
    result = await call(client)

    assert result == expected
    [request] = fake_ari.rest_requests()
    assert (request.method, request.route, request.path) == (method, route, path)
    assert sorted(request.query) == sorted(query)
    assert request.body == body
    assert request.authorization == _basic_header(USERNAME, PASSWORD)


def test_rest_cases_cover_every_registered_endpoint() -> None:
    covered = {(case[2], case[3].removeprefix("/ari")) for case in REST_CASES}
    assert covered == set(AriClient.REST_ENDPOINTS)


@pytest.mark.parametrize(
    ("call", "route", "gone_result"),
    [
        (lambda c: c.hangup("gone"), ("DELETE", "/ari/channels/{channelId}"), False),
        (lambda c: c.destroy_bridge("gone"), ("DELETE", "/ari/bridges/{bridgeId}"), False),
        (lambda c: c.stop_playback("finished"), ("DELETE", "/ari/playbacks/{playbackId}"), False),
        (lambda c: c.get_variable("chan-1", "UNSET_VAR"), ("GET", "/ari/channels/{channelId}/variable"), None),
        (lambda c: c.continue_in_dialplan("gone"), ("POST", "/ari/channels/{channelId}/continue"), False),
    ],
    ids=["hangup", "destroy_bridge", "stop_playback", "get_variable", "continue_in_dialplan"],
)
async def test_not_found_means_already_gone(
    client: AriClient, fake_ari: FakeAri, call: RestCall, route: tuple[str, str], gone_result: Any
) -> None:
    fake_ari.responses[route] = (404, {"message": "Not found"})
    assert await call(client) is gone_result


async def test_continue_for_a_channel_not_in_stasis_raises(client: AriClient, fake_ari: FakeAri) -> None:
    fake_ari.responses[("POST", "/ari/channels/{channelId}/continue")] = (
        409, {"message": "Channel not in Stasis application"}
    )
    with pytest.raises(AriError) as caught:
        await client.continue_in_dialplan("chan-1")
    assert caught.value.status == 409 and "not in Stasis" in caught.value.body


@pytest.mark.parametrize("priority", [0, -1, True, "2"])
async def test_continue_refuses_a_priority_that_is_not_a_positive_integer(
    client: AriClient, fake_ari: FakeAri, priority: Any
) -> None:
    with pytest.raises(ValueError, match="priority"):
        await client.continue_in_dialplan("chan-1", "after-ai", "s", priority)
    assert fake_ari.rest_requests() == []


@pytest.mark.parametrize(
    ("call", "route"),
    [
        (lambda c: c.list_channels(), ("GET", "/ari/channels")),
        (lambda c: c.list_bridges(), ("GET", "/ari/bridges")),
    ],
    ids=["list_channels", "list_bridges"],
)
@pytest.mark.parametrize("body", [{"id": "chan-1"}, ["chan-1"], "null"], ids=["object", "list-of-strings", "null"])
async def test_listing_that_is_not_an_array_of_objects_raises(
    client: AriClient, fake_ari: FakeAri, call: RestCall, route: tuple[str, str], body: Any
) -> None:
    fake_ari.responses[route] = (200, body)
    with pytest.raises(AriError, match="array of objects"):
        await call(client)


async def test_unexpected_status_raises_with_asterisk_text(client: AriClient, fake_ari: FakeAri) -> None:
    fake_ari.responses[("POST", "/ari/channels/{channelId}/answer")] = (500, "Allocation failed: out of cheese")

    with pytest.raises(AriError) as caught:
        await client.answer("chan-1")

    error = caught.value
    assert (error.status, error.method, error.path) == (500, "POST", "/channels/chan-1/answer")
    assert "out of cheese" in error.body
    assert "out of cheese" in str(error) and "500" in str(error)


async def test_not_found_is_an_error_where_not_expected(client: AriClient, fake_ari: FakeAri) -> None:
    fake_ari.responses[("POST", "/ari/channels/{channelId}/answer")] = (404, {"message": "Channel not found"})
    with pytest.raises(AriError) as caught:
        await client.answer("gone")
    assert caught.value.status == 404 and "Channel not found" in caught.value.body


async def test_rejected_credentials_raise_401(fake_ari: FakeAri) -> None:
    ari = AriClient(fake_ari.base_url, USERNAME, "wrong-password", APP)
    await ari.open()
    try:
        with pytest.raises(AriError) as caught:
            await ari.asterisk_info()
    finally:
        await ari.close()
    assert caught.value.status == 401


async def test_unreachable_asterisk_raises_status_zero() -> None:
    ari = make_client(f"http://127.0.0.1:{unused_port()}/ari")
    await ari.open()
    try:
        with pytest.raises(AriError) as caught:
            await ari.hangup("chan-1")
    finally:
        await ari.close()
    assert caught.value.status == 0
    assert "cannot reach Asterisk" in str(caught.value)


async def test_silent_asterisk_raises_status_zero_after_timeout(fake_ari: FakeAri) -> None:
    fake_ari.stalled_routes.add(("GET", "/ari/asterisk/info"))
    ari = make_client(fake_ari.base_url, request_timeout_s=0.2)
    await ari.open()
    try:
        with pytest.raises(AriError) as caught:
            await ari.asterisk_info()
    finally:
        await ari.close()
    assert caught.value.status == 0
    assert "no response within 0.2s" in str(caught.value)


async def test_rest_call_on_unopened_client_raises(fake_ari: FakeAri) -> None:
    ari = make_client(fake_ari.base_url)
    with pytest.raises(AriError) as caught:
        await ari.answer("chan-1")
    assert caught.value.status == 0 and "not open" in str(caught.value)


async def test_base_url_with_trailing_slash_works(fake_ari: FakeAri) -> None:
    ari = make_client(fake_ari.base_url + "/")
    await ari.open()
    try:
        assert await ari.hangup("chan-1") is True
    finally:
        await ari.close()
    assert fake_ari.rest_requests()[0].path == "/ari/channels/chan-1"


@pytest.mark.parametrize(
    ("base_url", "complaint"),
    [
        ("http://127.0.0.1:8088", "/ari"),
        ("http://user:pw@127.0.0.1:8088/ari", "credentials"),
        ("http://127.0.0.1:8088/ari?api_key=user:pw", "query"),
        ("127.0.0.1:8088/ari", "http"),
    ],
)
def test_bad_base_url_is_rejected(base_url: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        AriClient(base_url, USERNAME, PASSWORD, APP)
