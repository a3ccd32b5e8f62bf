"""The Autobahn protocol options both legs are set up with, in one place."""

from __future__ import annotations

from typing import Any

from wsbalancer.config import Config


def leg_options(process: Config, handshake_timeout: float, keepalive: Any) -> dict[str, Any]:
    """Options shared by the client leg and the backend leg; each adds its own (the
    compression policy, the server's connection limit). `process`: the process-wide
    settings (sizes, close timeout); the handshake timeout and keepalive may be a pool's."""
    config = process
    return {
        "openHandshakeTimeout": handshake_timeout,
        "closeHandshakeTimeout": config.close_timeout,
        "autoPingInterval": keepalive.ping_interval,
        "autoPingTimeout": keepalive.pong_timeout,
        "maxMessagePayloadSize": config.max_message_size,
        "maxFramePayloadSize": config.max_frame_size,
        # A peer's protocol error gets a close frame with our reason, not a dropped TCP
        # connection, and a close is answered with the peer's own code and reason.
        "failByDrop": False,
        "echoCloseCodeReason": True,
        "tcpNoDelay": True,
    }
