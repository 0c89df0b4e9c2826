"""The ARI REST operations the client uses, each declared once, named as in ARI's swagger files.

An :class:`AriEndpoint` gives the method, the swagger path template and the parameter names
the client sends. The request code refuses parameters not declared here, so
:data:`REST_ENDPOINTS` is an exact description of what goes on the wire and is checked
against Asterisk's own swagger files (``tests/unit/test_ari_swagger.py``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

@dataclass(frozen=True)
class AriEndpoint:
    """One ARI operation as the client uses it, named exactly as in ARI's swagger files."""

    method: str
    path: str  # swagger template, e.g. "/channels/{channelId}/play/{playbackId}"
    query_always: frozenset[str] = frozenset()  # query parameters sent on every call
    query_optional: frozenset[str] = frozenset()  # query parameters sent only when given
    body: frozenset[str] = frozenset()  # top-level keys of the JSON body, when one is sent

    @property
    def path_params(self) -> tuple[str, ...]:
        return tuple(re.findall(r"\{(\w+)\}", self.path))

    @property
    def query(self) -> frozenset[str]:
        return self.query_always | self.query_optional

    def render_path(self, path_params: Mapping[str, str]) -> str:
        if set(path_params) != set(self.path_params):
            raise ValueError(f"{self.path} needs path parameters {self.path_params}, got {sorted(path_params)}")
        path = self.path
        for name, value in path_params.items():
            if not value:
                raise ValueError(f"{self.path}: path parameter {name} must not be empty")
            # Quote everything (including "/") so an id can never change which resource is addressed.
            path = path.replace("{" + name + "}", quote(str(value), safe=""))
        return path

    def check_request(self, query: Mapping[str, str], body: Mapping[str, Any] | None) -> None:
        """Guard against drift between the declared parameters and what the code sends."""
        undeclared = set(query) - self.query
        missing = self.query_always - set(query)
        undeclared_body = set(body or ()) - self.body
        if undeclared or missing or undeclared_body:
            raise ValueError(
                f"{self.method} {self.path}: request does not match its declaration "
                f"(undeclared query {sorted(undeclared)}, missing query {sorted(missing)}, "
                f"undeclared body {sorted(undeclared_body)})"
            )


ASTERISK_INFO = AriEndpoint("GET", "/asterisk/info")
CHANNEL_ANSWER = AriEndpoint("POST", "/channels/{channelId}/answer")
CHANNEL_HANGUP = AriEndpoint("DELETE", "/channels/{channelId}", query_always=frozenset({"reason"}))
BRIDGE_CREATE = AriEndpoint(
    "POST", "/bridges", query_always=frozenset({"type"}), query_optional=frozenset({"bridgeId", "name"})
)
BRIDGE_ADD_CHANNEL = AriEndpoint("POST", "/bridges/{bridgeId}/addChannel", query_always=frozenset({"channel"}))
BRIDGE_DESTROY = AriEndpoint("DELETE", "/bridges/{bridgeId}")
CHANNEL_EXTERNAL_MEDIA = AriEndpoint(
    "POST",
    "/channels/externalMedia",
    query_always=frozenset({"app", "external_host", "data", "format", "encapsulation", "transport"}),
    query_optional=frozenset({"channelId"}),
    body=frozenset({"variables"}),
)
CHANNEL_PLAY = AriEndpoint("POST", "/channels/{channelId}/play", query_always=frozenset({"media"}))
CHANNEL_PLAY_WITH_ID = AriEndpoint(
    "POST", "/channels/{channelId}/play/{playbackId}", query_always=frozenset({"media"})
)
PLAYBACK_STOP = AriEndpoint("DELETE", "/playbacks/{playbackId}")
CHANNEL_VARIABLE_GET = AriEndpoint("GET", "/channels/{channelId}/variable", query_always=frozenset({"variable"}))
CHANNEL_VARIABLE_SET = AriEndpoint(
    "POST", "/channels/{channelId}/variable", query_always=frozenset({"variable", "value"})
)
CHANNEL_CONTINUE = AriEndpoint(
    "POST", "/channels/{channelId}/continue", query_optional=frozenset({"context", "extension", "priority"})
)
CHANNEL_DTMF = AriEndpoint("POST", "/channels/{channelId}/dtmf", query_always=frozenset({"dtmf"}))
CHANNEL_REDIRECT = AriEndpoint("POST", "/channels/{channelId}/redirect", query_always=frozenset({"endpoint"}))
CHANNELS_LIST = AriEndpoint("GET", "/channels")
BRIDGES_LIST = AriEndpoint("GET", "/bridges")

REST_ENDPOINTS: tuple[AriEndpoint, ...] = (
    ASTERISK_INFO,
    CHANNEL_ANSWER,
    CHANNEL_HANGUP,
    BRIDGE_CREATE,
    BRIDGE_ADD_CHANNEL,
    BRIDGE_DESTROY,
    CHANNEL_EXTERNAL_MEDIA,
    CHANNEL_PLAY,
    CHANNEL_PLAY_WITH_ID,
    PLAYBACK_STOP,
    CHANNEL_VARIABLE_GET,
    CHANNEL_VARIABLE_SET,
    CHANNEL_CONTINUE,
    CHANNEL_DTMF,
    CHANNEL_REDIRECT,
    CHANNELS_LIST,
    BRIDGES_LIST,
)

# The websocket upgrade is a GET on /events (swagger: "upgrade": "websocket").
EVENTS_ENDPOINT = AriEndpoint("GET", "/events", query_always=frozenset({"app", "subscribeAll"}))
