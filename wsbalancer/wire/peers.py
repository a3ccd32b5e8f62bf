"""Who is on the other end of a connection, as the logs and X-Forwarded-For name it."""

from typing import Any


def peer_host(protocol: Any) -> str:
    """The peer's address (`unix` for a Unix socket, or once the transport is gone)."""
    transport = protocol.transport
    peer = transport.getPeer() if transport is not None else None
    return getattr(peer, "host", None) or "unix"
