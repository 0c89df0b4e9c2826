"""HTTP functions: the model's arguments POSTed as JSON to the function's URL, the JSON
reply handed back to the model (``providers.<name>.actions.http``).

Bounded on every side: the function's ``timeout_s`` for the whole exchange, at most
``max_response_bytes`` of reply read, redirects followed only to the same scheme, host
and port (at most ``MAX_REDIRECTS``), and a reply that is not JSON is an error. Every
failure raises ``ActionError`` with a reason the model can be told; the URL and the
headers (which may carry credentials) are never part of it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
import structlog

from voiceline.config import HttpFunction
from voiceline.core.actions import ActionError, Handler

__all__ = ["MAX_REDIRECTS", "call_http_function", "http_handler"]

log = structlog.get_logger("voiceline.functions.http")

MAX_REDIRECTS = 3
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


async def call_http_function(fn: HttpFunction, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """POST ``arguments`` to ``fn.url``; the reply's JSON (a non-object is wrapped as
    ``{"result": value}``)."""
    timeout = aiohttp.ClientTimeout(total=fn.timeout_s)
    url = fn.url
    origin = _origin(url)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as http:
            for _ in range(MAX_REDIRECTS + 1):
                async with http.post(url, json=dict(arguments), headers=fn.headers, allow_redirects=False) as resp:
                    if resp.status in _REDIRECTS:
                        location = resp.headers.get("Location", "")
                        target = urljoin(url, location)
                        if not location or _origin(target) != origin:
                            raise ActionError(f"the {fn.name} service redirected to another host; refused")
                        url = target
                        continue
                    if resp.status >= 400:
                        raise ActionError(f"the {fn.name} service answered HTTP {resp.status}")
                    body = await resp.content.read(fn.max_response_bytes + 1)
                    break
            else:
                raise ActionError(f"the {fn.name} service redirected more than {MAX_REDIRECTS} times")
    except TimeoutError:
        raise ActionError(f"the {fn.name} service did not answer within {fn.timeout_s:g} s") from None
    except aiohttp.ClientError as exc:
        raise ActionError(f"the {fn.name} service could not be reached ({type(exc).__name__})") from None
    if len(body) > fn.max_response_bytes:
        raise ActionError(f"the {fn.name} service's reply is larger than {fn.max_response_bytes} bytes")
    try:
        value = json.loads(body)
    except ValueError:
        raise ActionError(f"the {fn.name} service's reply is not JSON") from None
    return value if isinstance(value, dict) else {"result": value}


def http_handler(fn: HttpFunction) -> Handler:
    async def handle(arguments: Mapping[str, Any]) -> dict[str, Any]:
        return await call_http_function(fn, arguments)

    return handle
