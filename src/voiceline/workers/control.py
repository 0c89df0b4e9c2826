"""The control channel between the supervisor and one engine worker: JSON lines over a
private Unix socket pair (inherited by the worker as a file descriptor).

Messages, one JSON object per line:

* supervisor -> worker ``{"op": "start", "index": i, "settings": {...}}`` once, first:
  the validated settings (secrets included; the socket is the two processes' alone);
  ``{"op": "health", "id": n}``: asks for a health report.
* worker -> supervisor ``{"event": "ready", "pid": p, "port": n}`` once it takes
  calls; ``{"id": n, "health": {...}, "ready": [bool, {...}]}`` answering a request.

End of file on either side means the other process is gone: a worker then drains and
exits (a supervisor killed outright must not leave orphans holding the port).
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

# A health report lists every live call of the worker: far above asyncio's 64 KiB default.
LINE_LIMIT = 64 * 1024 * 1024


class ControlChannel:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def over(cls, sock: socket.socket) -> ControlChannel:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=LINE_LIMIT)
        return cls(reader, writer)

    async def send(self, message: dict[str, Any]) -> None:
        # default=str: health data may carry enums or datetimes; show them, don't fail.
        self._writer.write(json.dumps(message, default=str).encode() + b"\n")
        await self._writer.drain()

    async def receive(self) -> dict[str, Any] | None:
        """The next message; None at end of file (the other side is gone)."""
        try:
            line = await self._reader.readline()
        except ConnectionError:
            return None
        if not line:
            return None
        message = json.loads(line)
        if not isinstance(message, dict):
            raise ValueError(f"control message is not an object: {line[:80]!r}")
        return message

    def close(self) -> None:
        self._writer.close()
