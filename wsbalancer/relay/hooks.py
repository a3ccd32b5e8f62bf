"""Extension points: session listeners and message hooks, loaded from the configuration.

    extensions:
      listeners: [mycompany.audit.AuditListener]     # a class (instantiated) or an object
      hooks: [mycompany.filters.StripSecrets]

A listener hears about every session: opened, backend picked, failed over, closed. A hook
sees every message of every session, each way, and returns the message to relay (the same,
or transformed) or None to drop it. Hooks run on the relay's hot path, in order; listeners
must not block (they run in the reactor thread). An exception in either is logged and the
session goes on. The balancer's own metrics and session log are a listener too
(`SessionRecorder` below).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.logger import LogLevel
from twisted.python.reflect import namedAny
from zope.interface import implementer

from wsbalancer.observe.logs import logger, wants
from wsbalancer.relay.interfaces import IMessageHook, ISessionListener
from wsbalancer.wire.peers import peer_host

if TYPE_CHECKING:
    from wsbalancer.observe.counters import BalancerMetrics
    from wsbalancer.relay.session import RelaySession

Message = tuple[bytes, bool]  # payload, is_binary


@implementer(ISessionListener)
class SessionListener:
    """Subclass and override what you need; every method does nothing by default."""

    def session_opened(self, session: RelaySession) -> None:
        """The client got its 101; `session.backend_state.id` is where it went."""

    def backend_picked(self, session: RelaySession, backend_id: str) -> None:
        """A backend was chosen for the session (also for each failover attempt)."""

    def failed_over(
        self, session: RelaySession, old_backend: str | None, new_backend: str | None, reason: str
    ) -> None:
        """The session left `old_backend`; `new_backend` is None when failover gave up."""

    def session_closed(self, session: RelaySession) -> None:
        """Both legs are closed; the session's counters and close code are final."""


@implementer(IMessageHook)
class MessageHook:
    """Subclass and override a direction; returning None drops the message."""

    def client_to_backend(
        self, session: RelaySession, payload: bytes, is_binary: bool
    ) -> Message | None:
        """A message from the client, before it is relayed to the backend."""
        return payload, is_binary

    def backend_to_client(
        self, session: RelaySession, payload: bytes, is_binary: bool
    ) -> Message | None:
        """A message from the backend, before it is relayed to the client."""
        return payload, is_binary


def load(name: str) -> Any:
    """A listener or hook by dotted name: a class is instantiated, anything else used as is."""
    target = namedAny(name)
    return target() if isinstance(target, type) else target


class SessionRecorder(SessionListener):
    """The balancer's own listener: Prometheus counters and one log line per session end."""

    log = logger("wsbalancer.sessions")

    def __init__(self, metrics: BalancerMetrics, clock: Any) -> None:
        self.metrics = metrics
        self.clock = clock

    def session_opened(self, session: RelaySession) -> None:
        metrics = self.metrics
        assert session.backend_state is not None
        metrics.child(metrics.sessions_opened, session.backend_state.id).inc()
        metrics.handshake_seconds.observe(self.clock.seconds() - session.started)
        if not wants(LogLevel.info):
            return  # (its fields are not even gathered)
        self.log.info(
            "session {session} {peer} {path} opened on {backend} (subprotocol {subprotocol})",
            session=session.id,
            peer=peer_host(session.client),
            path=session.client.http_request_path,
            backend=session.backend_state.id,
            subprotocol=session.subprotocol,
        )

    def failed_over(
        self, session: RelaySession, old_backend: str | None, new_backend: str | None, reason: str
    ) -> None:
        metrics = self.metrics
        if new_backend is None:
            metrics.failover_outcomes.labels("gave_up").inc()
            self.log.warn(
                "session {session} failover gave up: {error}", session=session.id, error=reason
            )
        else:
            metrics.failover_outcomes.labels("ok").inc()
            self.log.info(
                "session {session} failed over from {old} to {new} (reconnect {n}, "
                "{lost} messages possibly lost so far)",
                session=session.id,
                old=old_backend or "-",
                new=new_backend,
                n=session.reconnects,
                lost=session.lost,
            )

    def session_closed(self, session: RelaySession) -> None:
        backend_id = session.backend_id or "-"
        code = session.close_code
        metrics = self.metrics
        metrics.child(metrics.sessions_closed, backend_id, str(code or 1005)).inc()
        if not wants(LogLevel.info):
            return
        self.log.info(
            "session {session} {peer} {path} on {backend} ended after {duration:.1f}s: "
            "close {code} {reason!r} by {by}; {msgs_in} msgs/{bytes_in} B in, "
            "{msgs_out} msgs/{bytes_out} B out, {failovers} failovers",
            session=session.id,
            peer=peer_host(session.client),
            path=session.client.http_request_path,
            backend=backend_id,
            duration=self.clock.seconds() - session.started,
            code=code,
            reason=session.close_reason,
            by=session.closed_by or "-",
            msgs_in=session.msgs_in,
            bytes_in=session.bytes_in,
            msgs_out=session.msgs_out,
            bytes_out=session.bytes_out,
            failovers=session.reconnects,
        )
