"""ARI REST calls: one method per operation in ``ari_endpoints``, and the request plumbing.

:class:`AriRestCalls` holds no connection of its own: the HTTP session is opened and closed by
:class:`voiceline.asterisk.ari.AriClient`, which adds the events websocket on top.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import aiohttp
import structlog
from yarl import URL

from voiceline.asterisk.ari_endpoints import (
    ASTERISK_INFO,
    BRIDGES_LIST,
    BRIDGE_ADD_CHANNEL,
    BRIDGE_CREATE,
    BRIDGE_DESTROY,
    CHANNELS_LIST,
    CHANNEL_ANSWER,
    CHANNEL_CONTINUE,
    CHANNEL_DTMF,
    CHANNEL_REDIRECT,
    CHANNEL_EXTERNAL_MEDIA,
    CHANNEL_HANGUP,
    CHANNEL_PLAY,
    CHANNEL_PLAY_WITH_ID,
    CHANNEL_VARIABLE_GET,
    CHANNEL_VARIABLE_SET,
    PLAYBACK_STOP,
    AriEndpoint,
)

log = structlog.get_logger("voiceline.ari")


class AriError(Exception):
    """An ARI request failed.

    ``status`` is the HTTP status Asterisk answered with, or 0 when no HTTP answer was
    obtained (connection refused, timeout, client not open). ``body`` is Asterisk's response
    text (usually JSON like ``{"message": "Channel not found"}``) or the transport error.
    """

    def __init__(self, status: int, method: str, path: str, body: str, message: str | None = None):
        self.status = status
        self.method = method
        self.path = path
        self.body = body
        if message is None:
            message = f"ARI {method} {path} failed with HTTP {status}: {body[:500]}"
        super().__init__(message)


class AriRestCalls:
    """The REST half of the ARI client. ``_session`` is owned (opened, closed) by the subclass."""

    def __init__(self, base_url: str, request_timeout_s: float) -> None:
        # Kept as already-encoded text so REST paths can be appended without re-quoting.
        self._base_url = base_url
        self._request_timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self._request_timeout_s = request_timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def asterisk_info(self) -> dict[str, Any]:
        return _expect_object(await self._call(ASTERISK_INFO), ASTERISK_INFO)

    async def answer(self, channel_id: str) -> None:
        await self._call(CHANNEL_ANSWER, path_params={"channelId": channel_id})

    async def hangup(self, channel_id: str, reason: str = "normal") -> bool:
        """Hang up a channel. Returns False when it was already gone (404)."""
        return await self._call_found(CHANNEL_HANGUP, path_params={"channelId": channel_id}, query={"reason": reason})

    async def create_bridge(
        self, bridge_type: str = "mixing", name: str | None = None, bridge_id: str | None = None
    ) -> dict[str, Any]:
        query = {"type": bridge_type}
        if bridge_id is not None:
            query["bridgeId"] = bridge_id
        if name is not None:
            query["name"] = name
        return _expect_object(await self._call(BRIDGE_CREATE, query=query), BRIDGE_CREATE)

    async def add_channel(self, bridge_id: str, channel_ids: list[str]) -> None:
        if not channel_ids:
            raise ValueError("add_channel needs at least one channel id")
        # ARI takes multi-valued query parameters as one comma-separated value.
        await self._call(
            BRIDGE_ADD_CHANNEL, path_params={"bridgeId": bridge_id}, query={"channel": ",".join(channel_ids)}
        )

    async def destroy_bridge(self, bridge_id: str) -> bool:
        """Destroy a bridge. Returns False when it was already gone (404)."""
        return await self._call_found(BRIDGE_DESTROY, path_params={"bridgeId": bridge_id})

    async def external_media(
        self,
        *,
        app: str,
        external_host: str,
        data: str,
        format: str = "slin",
        encapsulation: str = "audiosocket",
        transport: str = "tcp",
        channel_id: str | None = None,
        variables: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Create an external media channel. For AudioSocket, ``data`` is the session UUID that
        Asterisk sends in the AudioSocket ID frame."""
        query = {
            "app": app,
            "external_host": external_host,
            "data": data,
            "format": format,
            "encapsulation": encapsulation,
            "transport": transport,
        }
        if channel_id is not None:
            query["channelId"] = channel_id
        body = {"variables": dict(variables)} if variables else None
        return _expect_object(
            await self._call(CHANNEL_EXTERNAL_MEDIA, query=query, body=body), CHANNEL_EXTERNAL_MEDIA
        )

    async def play(self, channel_id: str, media: str, playback_id: str | None = None) -> dict[str, Any]:
        """Start playing ``media`` (e.g. "sound:hello-world") and return the Playback object."""
        if playback_id is None:
            endpoint, path_params = CHANNEL_PLAY, {"channelId": channel_id}
        else:
            endpoint, path_params = CHANNEL_PLAY_WITH_ID, {"channelId": channel_id, "playbackId": playback_id}
        return _expect_object(await self._call(endpoint, path_params=path_params, query={"media": media}), endpoint)

    async def stop_playback(self, playback_id: str) -> bool:
        """Stop a playback. Returns False when it had already finished (404), which is normal."""
        return await self._call_found(PLAYBACK_STOP, path_params={"playbackId": playback_id})

    async def get_variable(self, channel_id: str, name: str) -> str | None:
        """Read a channel variable; None when unset.

        ARI answers 404 both for an unset variable and for an unknown channel, so a vanished
        channel also reads as None.
        """
        result = await self._call(
            CHANNEL_VARIABLE_GET, path_params={"channelId": channel_id}, query={"variable": name}, not_found_ok=True
        )
        if result is _NOT_FOUND:
            return None
        value = _expect_object(result, CHANNEL_VARIABLE_GET).get("value")
        if not isinstance(value, str):
            raise AriError(
                200, "GET", CHANNEL_VARIABLE_GET.path, json.dumps(result), "ARI variable response has no string 'value'"
            )
        return value

    async def set_variable(self, channel_id: str, name: str, value: str) -> None:
        await self._call(
            CHANNEL_VARIABLE_SET, path_params={"channelId": channel_id}, query={"variable": name, "value": value}
        )

    async def continue_in_dialplan(
        self,
        channel_id: str,
        context: str | None = None,
        extension: str | None = None,
        priority: int | None = None,
    ) -> bool:
        """Send the channel out of Stasis, back to the dialplan (where it left it, unless
        ``context``/``extension``/``priority`` say otherwise). Returns False when the channel
        is already gone (404); a channel not in Stasis (409) raises :class:`AriError`."""
        query: dict[str, str] = {}
        if context is not None:
            query["context"] = context
        if extension is not None:
            query["extension"] = extension
        if priority is not None:
            if isinstance(priority, bool) or not isinstance(priority, int) or priority < 1:
                raise ValueError(f"continue_in_dialplan: priority must be a positive integer, got {priority!r}")
            query["priority"] = str(priority)
        return await self._call_found(CHANNEL_CONTINUE, path_params={"channelId": channel_id}, query=query)

    async def send_dtmf(self, channel_id: str, digits: str) -> bool:
        """Play DTMF ``digits`` on the channel (towards its far end); False when it is gone (404)."""
        return await self._call_found(CHANNEL_DTMF, path_params={"channelId": channel_id}, query={"dtmf": digits})

    async def redirect(self, channel_id: str, endpoint: str) -> bool:
        """Redirect the channel to ``endpoint`` (e.g. ``PJSIP/100``; the channel driver moves
        the call, a SIP 302 for PJSIP). False when the channel is gone (404)."""
        return await self._call_found(
            CHANNEL_REDIRECT, path_params={"channelId": channel_id}, query={"endpoint": endpoint}
        )

    async def list_channels(self) -> list[dict[str, Any]]:
        """Every channel Asterisk has (not only this application's), as ARI Channel objects."""
        return _expect_list_of_objects(await self._call(CHANNELS_LIST), CHANNELS_LIST)

    async def list_bridges(self) -> list[dict[str, Any]]:
        """Every bridge Asterisk has, as ARI Bridge objects."""
        return _expect_list_of_objects(await self._call(BRIDGES_LIST), BRIDGES_LIST)

    async def _call_found(
        self,
        endpoint: AriEndpoint,
        *,
        path_params: Mapping[str, str],
        query: Mapping[str, str] | None = None,
    ) -> bool:
        """A call whose only answer is whether the resource existed: False for a 404."""
        result = await self._call(endpoint, path_params=path_params, query=query, not_found_ok=True)
        return result is not _NOT_FOUND

    async def _call(
        self,
        endpoint: AriEndpoint,
        *,
        path_params: Mapping[str, str] | None = None,
        query: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
        not_found_ok: bool = False,
    ) -> Any:
        """Perform one REST call; returns the decoded JSON (None for an empty body), or
        ``_NOT_FOUND`` for a 404 when ``not_found_ok``."""
        query = dict(query or {})
        endpoint.check_request(query, body)
        path = endpoint.render_path(path_params or {})
        session = self._session
        if session is None or session.closed:
            raise AriError(0, endpoint.method, path, "", f"ARI {endpoint.method} {path}: client is not open")
        url = URL(self._base_url + path, encoded=True)
        try:
            async with session.request(
                endpoint.method, url, params=query or None, json=body, timeout=self._request_timeout
            ) as response:
                status = response.status
                text = await response.text()
        except TimeoutError as exc:
            raise AriError(
                0, endpoint.method, path, repr(exc),
                f"ARI {endpoint.method} {path}: no response within {self._request_timeout_s}s",
            ) from exc
        except aiohttp.ClientError as exc:
            raise AriError(
                0, endpoint.method, path, repr(exc),
                f"ARI {endpoint.method} {path}: cannot reach Asterisk at {self._base_url}: {exc}",
            ) from exc

        log.debug("ari.rest", method=endpoint.method, path=path, status=status)
        if status == 404 and not_found_ok:
            return _NOT_FOUND
        if not 200 <= status < 300:
            raise AriError(status, endpoint.method, path, text)
        if not text.strip():
            return None
        try:
            return json.loads(text)
        except ValueError as exc:
            raise AriError(
                status, endpoint.method, path, text, f"ARI {endpoint.method} {path}: response is not JSON: {exc}"
            ) from exc


class _NotFound:
    def __repr__(self) -> str:
        return "<ARI 404>"


_NOT_FOUND: Any = _NotFound()


def _expect_object(result: Any, endpoint: AriEndpoint) -> dict[str, Any]:
    if not isinstance(result, dict):
        raise AriError(
            200, endpoint.method, endpoint.path, json.dumps(result),
            f"ARI {endpoint.method} {endpoint.path}: expected a JSON object, got {type(result).__name__}",
        )
    return result


def _expect_list_of_objects(result: Any, endpoint: AriEndpoint) -> list[dict[str, Any]]:
    if not isinstance(result, list) or not all(isinstance(item, dict) for item in result):
        raise AriError(
            200, endpoint.method, endpoint.path, json.dumps(result)[:500],
            f"ARI {endpoint.method} {endpoint.path}: expected a JSON array of objects",
        )
    return result
