"""The balancer: the pool, the dialer, the live sessions and what is counted about them.

`Balancer` is the object the protocols call into; it owns no sockets itself, so it can be
built from a `Config` in tests and in programs that embed the balancer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from zope.interface import implementer

from wsbalancer.config import BackendConfig, Config
from wsbalancer.config.interfaces import IReconfigurable
from wsbalancer.observe.counters import BalancerMetrics
from wsbalancer.observe.logs import Lazy, logger
from wsbalancer.relay import hooks as extensions
from wsbalancer.relay.evacuation import DEFAULT_PACE, Evacuation
from wsbalancer.relay.factory import RelayFactory
from wsbalancer.relay.hooks import SessionRecorder
from wsbalancer.relay.httpproxy import proxy_site
from wsbalancer.relay.ids import session_ids as new_session_ids
from wsbalancer.relay.interfaces import IFleetView, IProxyHost, ISessionEvents, ISessionListener
from wsbalancer.relay.protocols import (
    BackendProtocol,
    HookedBackendProtocol,
)
from wsbalancer.relay.rebalance import Rebalancer
from wsbalancer.relay.session import RelaySession
from wsbalancer.upstream.cluster import Cluster
from wsbalancer.upstream.pool import BackendPool, BackendState
from wsbalancer.upstream.routing import Lane
from wsbalancer.wire.peers import peer_host


@implementer(ISessionEvents, IFleetView, IProxyHost, IReconfigurable)
class Balancer:
    """Everything one balancer process knows, independent of its listening sockets: the
    pools (lanes), the live sessions (the registry sessions report to), their listeners."""

    log = logger("wsbalancer")

    def __init__(
        self,
        config: Config,
        reactor: Any,
        clock: Any = None,
        rng: Any = None,
        secret_seed: bytes | None = None,
        session_ids: Iterator[int] | None = None,
    ) -> None:
        self.config = config
        self.reactor = reactor
        self.clock = clock or reactor
        self.seconds = self.clock.seconds  # bound once: the per-message path reads it
        self.metrics = BalancerMetrics()
        self.events: deque[tuple[float, str]] = deque(maxlen=50)  # for the dashboard
        self.hooks: list[Any] = [extensions.load(name) for name in config.hooks]
        self.cluster = Cluster(
            config,
            reactor,
            self.clock,
            self.metrics,
            leg_class=lambda: HookedBackendProtocol if self.hooks else BackendProtocol,
            event=self.event,
            move_sessions=self._move_sessions,
            rng=rng,
            secret_seed=secret_seed,
        )
        self.sessions: dict[int, RelaySession] = {}
        # Unique across a master and its workers (each worker is handed its own block).
        self.session_ids = session_ids or new_session_ids()
        self.factories: list[RelayFactory] = []
        self.evacuations: dict[str, Evacuation] = {}  # by backend id, the latest of each
        self.rebalancer = Rebalancer(self, rng)  # ticked by the service (rebalance.*)
        self.listeners: list[Any] = [SessionRecorder(self.metrics, self.clock)]
        self.listeners += [extensions.load(name) for name in config.listeners]
        self.draining = False
        # Traffic of sessions already ended: msgs in, msgs out, bytes in, bytes out.
        self._ended_traffic = [0, 0, 0, 0]

    # --- the backend side (upstream.cluster), as callers knew it here ------------------

    @property
    def lanes(self) -> dict[str, Lane]:
        """The pools by name."""
        return self.cluster.lanes

    @property
    def pool(self) -> BackendPool:
        """The top-level pool."""
        return self.cluster.pool

    def route(self, target: str, host: str | None) -> Lane | None:
        """The pool a request goes to, or None when no route takes it (404)."""
        return self.cluster.router.route(target, host)

    def lane_of(self, backend: BackendState) -> Lane | None:
        """The pool a backend belongs to."""
        return self.cluster.lane_of(backend)

    def all_backends(self) -> list[tuple[Lane, BackendState]]:
        """Every backend of every pool, with its pool."""
        return self.cluster.all_backends()

    def add_backend(self, config: BackendConfig, lane: Lane | None = None) -> BackendState:
        """Add a backend at run time (admin API, DNS discovery) to a pool (the default)."""
        return self.cluster.add_backend(config, lane)

    def remove_backend(self, state: BackendState, mode: str) -> int:
        """Stop sending sessions to a backend; with `failover` its sessions move at once."""
        return self.cluster.remove_backend(state, mode)

    def backend_idle(self, state: BackendState) -> None:
        """A removed backend's last plain-HTTP request ended: forget it if nothing is left."""
        self.cluster.backend_idle(state)

    def http_body_limit(self) -> int:
        """The largest request body any pool that proxies HTTP accepts."""
        return self.cluster.http_body_limit()

    def evacuate(self, state: BackendState, pace: float = DEFAULT_PACE) -> Evacuation:
        """Migrate every session off a backend, `pace` a second; it takes no new ones."""
        previous = self.evacuations.pop(state.id, None)
        if previous is not None:
            previous.stop()
        on_it = [s for s in self.sessions.values() if s.backend_state is state]
        evacuation = self.evacuations[state.id] = Evacuation(state, on_it, self.clock, pace)
        evacuation.start()
        return evacuation

    def _move_sessions(self, state: BackendState, reason: str, how: str) -> int:
        if how == "migrate":
            return self.evacuate(state).view()["sessions"]  # type: ignore[no-any-return]
        moved = 0
        for session in list(self.sessions.values()):
            if session.backend_state is state:
                session.move(reason)
                moved += 1
        return moved

    # --- the client-facing factory ------------------------------------------------

    def server_factory(self) -> RelayFactory:
        """An Autobahn server factory relaying to this balancer's backends."""
        factory = RelayFactory(
            open_session=lambda client: RelaySession(self, client),
            route=self.route,
            handshake_outcome=self.handshake_outcome,
            make_http_site=lambda: proxy_site(self),
        )
        self._configure_factory(factory)
        factory.server = "wsbalancer"
        self.factories.append(factory)
        return factory

    def _configure_factory(self, factory: RelayFactory) -> None:
        factory.configure(self.config, hooked=bool(self.hooks))

    # --- reload and drain -------------------------------------------------------------

    def reconfigure(self, new: Config) -> list[str]:
        """Apply a re-read configuration to the running balancer; returns what changed.

        Backends are added, re-weighted or removed; a removed backend takes no new sessions
        and its sessions stay until they end (`reload.removed_sessions: drain`) or are moved
        to other backends at once (`failover`). Listen addresses change only on restart."""
        old, self.config = self.config, new
        changes: list[str] = []
        if (new.listen, new.admin_listen) != (old.listen, old.admin_listen):
            changes.append("listen addresses are unchanged until a restart")
        for factory in self.factories:
            self._configure_factory(factory)
        changes += self.cluster.reconfigure(new)
        return changes

    def drain(self) -> None:
        """Take no new sessions (readiness goes false); existing ones continue."""
        self.draining = True

    # --- events from sessions -------------------------------------------------------

    def _tell(self, event: str, call: Callable[[ISessionListener], None]) -> None:
        """Call every listener; one that fails is logged and the others still hear."""
        for listener in self.listeners:
            try:
                call(listener)
            except Exception:
                self.log.failure(
                    "session listener {listener} failed on {event}",
                    listener=type(listener).__name__,
                    event=event,
                )

    def session_opened(self, session: RelaySession) -> None:
        """The backend leg is open; the client is about to get its 101."""
        self.sessions[session.id] = session
        self._tell("session_opened", lambda listener: listener.session_opened(session))

    def backend_picked(self, session: RelaySession, backend: BackendState) -> None:
        """A backend was chosen for a session (first dial or failover)."""
        self.log.debug(
            "session {session} dials {backend} ({strategy}; loads with this dial: {loads})",
            session=session.id,
            backend=backend.id,
            strategy=session.lane.pool.strategy,
            loads=Lazy(
                lambda: {
                    b.id: round(session.lane.pool.load(b), 3)
                    for b in session.lane.pool.backends.values()
                }
            ),
        )
        if len(self.listeners) > 1:
            self._tell(
                "backend_picked", lambda listener: listener.backend_picked(session, backend.id)
            )

    def session_ended(self, session: RelaySession) -> None:
        """Both legs are closed: count the session's traffic and tell the listeners."""
        if self.sessions.pop(session.id, None) is None:
            return
        self.cluster.forget_drained()
        t = self._ended_traffic
        t[0] += session.msgs_in
        t[1] += session.msgs_out
        t[2] += session.bytes_in
        t[3] += session.bytes_out
        self._tell("session_closed", lambda listener: listener.session_closed(session))

    def failover_started(
        self, session: RelaySession, backend: BackendState | None, reason: str
    ) -> None:
        """A session's backend leg died under an open client; it is being re-dialled."""
        backend_id = backend.id if backend is not None else "-"
        session.failover_from = backend_id
        self.metrics.failovers.labels(backend_id).inc()
        self.event(f"session {session.id} lost {backend_id} ({reason}), failing over")
        self.log.warn(
            "session {session} lost backend {backend} ({reason}); failing over",
            session=session.id,
            backend=backend_id,
            reason=reason,
        )

    def failover_done(self, session: RelaySession, error: str | None) -> None:
        """A failover ended: on a new backend (error None) or given up."""
        new = session.backend_state.id if error is None and session.backend_state else None
        old, outcome = session.failover_from, error or "ok"
        self._tell("failed_over", lambda listener: listener.failed_over(session, old, new, outcome))

    def session_migrated(self, session: RelaySession, old: str | None, outcome: str) -> None:
        """Count a migration's outcome; one line and a dashboard event for each move."""
        kind = outcome.split(":", 1)[0]
        self.metrics.migrations.labels(kind).inc()
        if kind == "migrated":
            text = f"session {session.id} migrated from {old} to {session.backend_id}"
            self.event(text)
            self.log.info("{text}", text=text)
        else:
            self.log.info(
                "session {session} not migrated: {outcome}", session=session.id, outcome=outcome
            )

    def handshake_outcome(self, outcome: str) -> None:
        """Count a client handshake's outcome (bounded set of labels)."""
        self.metrics.child(self.metrics.handshakes, outcome).inc()

    def dial_failed(self, backend: BackendState, reason: str) -> None:
        """A backend leg could not be opened; the next backend will be tried."""
        self.metrics.dial_failures.labels(backend.id).inc()
        self.log.warn(
            "backend {backend} refused a session: {reason}", backend=backend.id, reason=reason
        )

    def no_backend(self, session: RelaySession, errors: list[str]) -> None:
        """No backend could take the session: the client gets 503."""
        peer = peer_host(session.client)
        self.log.warn(
            "no backend for {peer}: {detail}", peer=peer, detail="; ".join(errors) or "none usable"
        )

    def event(self, text: str) -> None:
        """Remember something an operator would want to see on the dashboard."""
        self.events.append((self.clock.seconds(), text))

    # --- figures --------------------------------------------------------------------

    def traffic_totals(self) -> tuple[int, int, int, int]:
        """Messages and bytes each way, ended and live sessions together."""
        t = list(self._ended_traffic)
        for s in self.sessions.values():
            t[0] += s.msgs_in
            t[1] += s.msgs_out
            t[2] += s.bytes_in
            t[3] += s.bytes_out
        return t[0], t[1], t[2], t[3]

    def ready(self) -> bool:
        """Whether a new session could be placed now."""
        return not self.draining and self.cluster.any_usable()

    def sweep_idle(self) -> None:
        """Close sessions that carried no message for a whole idle period (1001)."""
        for session in list(self.sessions.values()):
            # Bytes count too: a spliced session counts a message only when its last frame
            # has begun, so a long one in progress is not idle.
            mark = session.msgs_in + session.msgs_out + session.bytes_in + session.bytes_out
            if session.idle_mark == mark:
                session.terminate(1001, "idle timeout")
            session.idle_mark = mark
