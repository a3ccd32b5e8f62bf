"""Each backend's share of the traffic of the sessions it carried, its response times and its
legs' close codes, at no per-message cost beyond what a session already counts.

A session counts messages and bytes each way, and may move between backends (failover,
migration). When a backend leg is let go of, it is *settled*: what the session's counters
moved since the previous settle is added to that backend's `traffic`; a live session's
current share is added only when someone reads (`traffic_by_backend`). Messages held during
a failover are not settled with the dead leg, so they count for the backend they are
delivered to. A response time costs one clock read per question and one per answer:
`asked_at` is set by a client message when none is pending, and the backend's next message
to the client closes it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from wsbalancer.observe.traffic import BackendTraffic
from wsbalancer.wire.states import NO_CLOSE_FRAME


def settle(session: Any) -> None:
    """Add what the session carried since the last settle to its current backend."""
    state = session.backend_state
    if state is None:
        return  # no leg to charge: what was counted meanwhile goes to the next one
    base = session.leg_base
    now = [session.msgs_in, session.msgs_out, session.bytes_in, session.bytes_out]
    if base is None:
        state.traffic.add(*now)
    else:
        state.traffic.add(now[0] - base[0], now[1] - base[1], now[2] - base[2], now[3] - base[3])
    session.leg_base = now


def traffic_by_backend(backends: Iterable[Any], sessions: Iterable[Any]) -> dict[str, Any]:
    """Each backend's traffic (a copy) with its live sessions' unsettled shares added."""
    figures: dict[str, BackendTraffic] = {b.id: b.traffic.copy() for b in backends}
    for s in sessions:
        state = s.backend_state
        target = figures.get(state.id) if state is not None else None
        if target is None:
            continue
        base = s.leg_base or (0, 0, 0, 0)
        target.add(
            s.msgs_in - base[0], s.msgs_out - base[1], s.bytes_in - base[2], s.bytes_out - base[3]
        )
    return figures


def traffic_of(backend: Any, sessions: Iterable[Any]) -> BackendTraffic:
    """One backend's traffic, its live sessions' shares included."""
    on_it = (s for s in sessions if s.backend_state is backend)
    return traffic_by_backend([backend], on_it)[backend.id]  # type: ignore[no-any-return]


def answered(session: Any, asked: float) -> None:
    """The backend answered a client message sent at `asked` (clock seconds)."""
    state = session.backend_state
    if state is not None:
        state.traffic.responded(session.balancer.seconds() - asked)


def drained_message(session: Any, state: Any, messages: int, octets: int) -> None:
    """A migrated session's old leg relayed a message to the client: it is the old
    backend's, so it is charged there and kept out of the new leg's share."""
    state.traffic.add(0, messages, 0, octets)
    base = session.leg_base
    if base is None:
        base = session.leg_base = [0, 0, 0, 0]
    base[1] += messages
    base[3] += octets


def leg_close_code(leg: Any, was_clean: bool) -> int | None:
    """The code of the close that ended a leg, whichever side sent it first (1006: the
    connection ended without a closing handshake; None: a close frame without a code)."""
    if not was_clean:
        return NO_CLOSE_FRAME
    if getattr(leg, "closedByMe", False):
        return getattr(leg, "localCloseCode", None)  # type: ignore[no-any-return]
    return getattr(leg, "remoteCloseCode", None)  # type: ignore[no-any-return]


def client_leg_closed(session: Any, code: int | None) -> None:
    """Count the end of an opened session's client leg on the backend it was last on."""
    state = session.backend_state
    if state is None and session.last_backend is not None:
        state = session.lane.pool.backends.get(session.last_backend)
    if state is not None:
        state.traffic.leg_closed("client", code)
