"""`migrate.replay_first`: the session's first N client messages, kept so that a new
backend leg (a migration's or a failover's) is sent them again before anything else — for
protocols that authenticate or subscribe in their first messages.

Only a session of a pool that asks for it pays: its client leg takes the ordinary message
path (not the direct frame relay) until N messages have been kept, then goes back to it.
What the new backend answers to the replayed messages reaches the client like any other
message; a backend can tell a replay by the reconnect header on its upgrade request.
"""

from __future__ import annotations

from typing import Any


def record_first(session: Any) -> None:
    """Keep the first messages (as many as the pool's `migrate.replay_first`) the client
    leg forwards to a backend."""
    client = session.client
    kept: list[tuple[bytes, bool]] = []
    session.replay = kept
    cls = type(client)
    client.forwards_as_is = False  # each message through `forward`, where it is kept

    def forward(partner: Any, payload: bytes, is_binary: bool) -> None:
        keep(session, payload, is_binary)
        cls.forward(client, partner, payload, is_binary)

    client.forward = forward


def keep(session: Any, payload: bytes, is_binary: bool | None) -> None:
    """Keep one client message, if the session is still recording (raw frames are not)."""
    kept = session.replay
    wanted = session.lane.config.migrate_replay_first
    if kept is None or len(kept) >= wanted or is_binary is None:
        return
    kept.append((payload, is_binary))
    if len(kept) >= wanted:
        client = session.client
        # Back to the class's own forward and fast path: the rest costs nothing extra.
        vars(client).pop("forward", None)
        vars(client).pop("forwards_as_is", None)


def replay(session: Any, leg: Any) -> int:
    """Send the kept messages to a new backend leg, in order; how many were sent."""
    kept = session.replay
    if not kept:
        return 0
    for payload, is_binary in kept:
        session.unanswered += 1
        leg.sendMessage(payload, is_binary)
    return len(kept)
