"""The AudioSocket port every engine worker binds, resolved once by the supervisor."""

from __future__ import annotations

import socket


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` with SO_REUSEPORT (and SO_REUSEADDR, as
    asyncio's listeners set it), not listening."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def resolve_port(host: str, port: int) -> tuple[int, socket.socket | None]:
    """``(port, holder)``: the port the workers share. A configured port is used as is
    (holder None). Port 0 ("any free port") is picked here, by binding a SO_REUSEPORT
    socket, and that socket is returned still bound: as long as the caller keeps it
    (open, never listening: it takes no connections), no other program can take the
    port, so a worker started again later binds the same one. The caller closes it."""
    if port != 0:
        return port, None
    holder = reuse_port_socket(host, 0)
    return int(holder.getsockname()[1]), holder
