"""The boundaries of the relay floor, as zope Interfaces.

A session reports what happens to it to the registry that owns it (`ISessionEvents`, which
the balancer implements); the registry tells its listeners (`ISessionListener`), the
balancer's own metrics recorder among them; message hooks (`IMessageHook`) see messages.
The two legs call a session through `IRelaySession`, and the admin site's gauges read the
fleet through `IFleetView`. Typing against these, not the classes, is what keeps the relay's
modules from importing each other in a circle.
"""

from __future__ import annotations

from typing import Any

from zope.interface import Attribute, Interface


class ISessionListener(Interface):
    """Hears about every session (a class named in `extensions.listeners`)."""

    def session_opened(session: Any) -> None:
        """The client got its 101; `session.backend_state.id` is where it went."""

    def backend_picked(session: Any, backend_id: str) -> None:
        """A backend was chosen for the session (also for each failover attempt)."""

    def failed_over(
        session: Any, old_backend: str | None, new_backend: str | None, reason: str
    ) -> None:
        """The session left `old_backend`; `new_backend` is None when failover gave up."""

    def session_closed(session: Any) -> None:
        """Both legs are closed; the session's counters and close code are final."""


class IMessageHook(Interface):
    """Sees every message, each way (a class named in `extensions.hooks`)."""

    def client_to_backend(session: Any, payload: bytes, is_binary: bool) -> Any:
        """The (payload, is_binary) to relay to the backend, or None to drop the message."""

    def backend_to_client(session: Any, payload: bytes, is_binary: bool) -> Any:
        """The (payload, is_binary) to relay to the client, or None to drop the message."""


class IRelaySession(Interface):
    """One client's session, as its two legs and the splice path call it."""

    id = Attribute("The session's id, unique across the master and its workers")
    client = Attribute("The client leg (a server protocol)")
    backend = Attribute("The open backend leg, or None while failing over")
    hooks = Attribute("The message hooks every message of this session passes")
    msgs_in = Attribute("Messages from the client")
    msgs_out = Attribute("Messages to the client")
    bytes_in = Attribute("Payload bytes from the client")
    bytes_out = Attribute("Payload bytes to the client")
    unanswered = Attribute("Client messages relayed since the backend last sent one")
    asked_at = Attribute("When the oldest unanswered client message went out, or None")
    balancer = Attribute("The ISessionEvents it reports to (its seconds() times responses)")
    reconnecting = Attribute("True while a new backend leg is being dialled")
    spliced = Attribute("True once frames pass as they are (splice mode)")
    lost = Attribute("Client messages sent to backends that then died")

    def start(request: Any) -> Any:
        """Route, pick and dial; a Deferred of (subprotocol, headers) for the 101."""

    def client_opened() -> None:
        """The client got its 101."""

    def hold(payload: bytes, is_binary: bool | None) -> None:
        """Keep a client message while no backend leg is open."""

    def client_close_frame(code: int | None, reason: bytes | None) -> None:
        """The client sent a valid close."""

    def backend_close_frame(leg: Any, code: int | None, reason: bytes | None) -> None:
        """The backend sent a valid close."""

    def client_lost(code: int | None) -> None:
        """The client leg ended."""

    def backend_lost(leg: Any, failure_code: int | None, was_clean: bool) -> None:
        """The backend leg ended."""


class ISessionEvents(Interface):
    """What a session reports to the registry that owns it (the balancer)."""

    config = Attribute("The top-level Config")
    clock = Attribute("The IReactorTime sessions schedule on")
    seconds = Attribute("The clock's seconds(), bound (response times are read per message)")
    log = Attribute("The Logger sessions' decisions are written to")
    hooks = Attribute("The message hooks, in order")
    lanes = Attribute("The pools by name (a session without a route goes to the default)")
    session_ids = Attribute("An iterator of the ids new sessions take")

    def handshake_outcome(outcome: str) -> None:
        """Count a client handshake's outcome (a bounded set of labels)."""

    def backend_picked(session: Any, backend: Any) -> None:
        """A backend was chosen for a session (first dial or failover)."""

    def dial_failed(backend: Any, reason: str) -> None:
        """A backend leg could not be opened; the next backend will be tried."""

    def no_backend(session: Any, errors: list[str]) -> None:
        """No backend could take the session."""

    def session_opened(session: Any) -> None:
        """The backend leg is open; the client is about to get its 101."""

    def failover_started(session: Any, backend: Any, reason: str) -> None:
        """A session's backend leg died under an open client; it is being re-dialled."""

    def failover_done(session: Any, error: str | None) -> None:
        """A failover ended: on a new backend (error None) or given up."""

    def session_ended(session: Any) -> None:
        """Both legs are closed."""

    def session_migrated(session: Any, old_backend: str | None, outcome: str) -> None:
        """A migration ended: `migrated` (from `old_backend`), `skipped: ...`, `failed: ...`."""

    def backend_idle(state: Any) -> None:
        """A leg on `state` was let go of (migrated away): forget it if removed and empty."""


class IFleetView(Interface):
    """What the scrape-time gauges read: the backends and the traffic."""

    clock = Attribute("The IReactorTime the estimates are computed at")
    sessions = Attribute("The live sessions by id (their traffic not yet settled)")

    def all_backends() -> list[tuple[Any, Any]]:
        """Every backend of every pool, as (lane, BackendState)."""

    def traffic_totals() -> tuple[int, int, int, int]:
        """Messages and bytes each way, ended and live sessions together."""


class IProxyHost(Interface):
    """What the plain-HTTP proxy reads of the balancer it serves."""

    config = Attribute("The top-level Config")
    reactor = Attribute("The reactor backend requests are made with")
    clock = Attribute("The IReactorTime deadlines are scheduled on")
    metrics = Attribute("The BalancerMetrics its timeouts and refusals are counted in")

    def route(target: str, host: str | None) -> Any:
        """The pool (Lane) a request goes to, or None (404)."""

    def http_body_limit() -> int:
        """The largest request body any pool that proxies HTTP accepts."""

    def backend_idle(state: Any) -> None:
        """A removed backend's last plain-HTTP request ended."""
