"""The balancer: the pool, the dialer, the live sessions and what is counted about them.

`Balancer` is the object the protocols call into; it owns no sockets itself, so it can be
built from a `Config` in tests and in programs that embed the balancer.
"""

from __future__ import annotations

import hmac
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from twisted.internet.defer import Deferred, gatherResults

from wsbalancer.config import DEFAULT_POOL, BackendConfig, Config, PoolConfig
from wsbalancer.observe.counters import BalancerMetrics
from wsbalancer.observe.logs import Lazy, logger
from wsbalancer.relay import hooks as extensions
from wsbalancer.relay.hooks import SessionRecorder
from wsbalancer.relay.protocols import (
    BackendProtocol,
    FrontendProtocol,
    HookedBackendProtocol,
    HookedFrontendProtocol,
    RelayFactory,
)
from wsbalancer.relay.session import RelaySession, peer_host
from wsbalancer.upstream.affinity import Affinity, new_secret
from wsbalancer.upstream.dialer import BackendDialer
from wsbalancer.upstream.outlier import OutlierDetector, OutlierState
from wsbalancer.upstream.pool import CLOSED, UP, BackendPool, BackendState
from wsbalancer.upstream.routing import Lane, Router
from wsbalancer.wire.compression import accept_deflate_offer, refuse_compression
from wsbalancer.wire.lean import bake_options


def _affinity_settings(config: PoolConfig) -> tuple[Any, ...]:
    return (
        config.affinity,
        config.affinity_cookie,
        config.affinity_secret,
        config.affinity_samesite,
        config.affinity_max_age,
        config.affinity_key,
        config.affinity_load_factor,
        config.affinity_pin_idle,
    )


class Balancer:
    """Everything one balancer process knows, independent of its listening sockets."""

    log = logger("wsbalancer")

    def __init__(
        self,
        config: Config,
        reactor: Any,
        clock: Any = None,
        rng: Any = None,
        secret_seed: bytes | None = None,
    ) -> None:
        self.config = config
        self.reactor = reactor
        self.clock = clock or reactor
        self.metrics = BalancerMetrics()
        self.rng = rng
        # Pools with cookie affinity and no affinity.secret get a key derived from this seed,
        # which worker processes share with their master (a cookie one issued, all honour).
        self.secret_seed = secret_seed or new_secret()
        self._secrets: dict[str, bytes] = {}  # generated affinity keys, kept across reloads
        self.lanes: dict[str, Lane] = {}
        for pool_config in config.all_pools():
            self.lanes[pool_config.pool_name] = self._new_lane(pool_config)
        default = self.lanes[DEFAULT_POOL]
        self.pool = default.pool  # the top-level pool, as before pools existed
        self.dialer = default.dialer
        self.router = Router(config.routes, self.lanes, config.default_pool)
        # Builds a count poller for a pool (set by the service assembly; None in unit tests).
        self.make_poller: Callable[[BackendPool], Any] | None = None
        self.sessions: dict[int, RelaySession] = {}
        self.factories: list[RelayFactory] = []
        self.events: deque[tuple[float, str]] = deque(maxlen=50)  # for the dashboard
        self.listeners: list[Any] = [SessionRecorder(self)]
        self.listeners += [extensions.load(name) for name in config.listeners]
        self.hooks: list[Any] = [extensions.load(name) for name in config.hooks]
        self.draining = False
        # Traffic of sessions already ended: msgs in, msgs out, bytes in, bytes out.
        self._ended_traffic = [0, 0, 0, 0]
        self.metrics.attach(self)

    # --- pools ----------------------------------------------------------------------

    def _new_lane(self, config: PoolConfig) -> Lane:
        pool = BackendPool(
            config.backends,
            seconds=self.clock.seconds,
            strategy=config.strategy,
            count_ttl=self.config.count_ttl,  # count polling is the process's
            fall=config.health_fall,
            rise=config.health_rise,
            breaker_threshold=config.breaker_threshold,
            breaker_cooldown=config.breaker_cooldown,
            rng=self.rng,
        )
        pool.on_state_change = self._state_changed
        pool.outliers = OutlierDetector(
            self.clock,
            hosts=lambda: [b.id for b in pool.backends.values() if not b.removed],
            consecutive_failures=config.outlier_consecutive_failures,
            base_ejection=config.outlier_base_ejection,
            max_ejection_percent=config.outlier_max_ejection_percent,
            on_change=self._outlier_changed,
        )
        dialer = BackendDialer(
            self.reactor,
            config,
            HookedBackendProtocol if self.config.hooks else BackendProtocol,
            clock=self.clock,
            process=self.config,
        )
        lane = Lane(config, pool, dialer, self._new_affinity(config))
        make_poller = getattr(self, "make_poller", None)  # unset while __init__ runs
        if make_poller is not None:
            lane.poller = make_poller(pool)
        return lane

    def _new_affinity(self, config: PoolConfig) -> Affinity:
        secret = config.affinity_secret.encode()
        if config.affinity == "cookie" and not secret:
            secret = self._secrets.get(config.pool_name, b"")
            if not secret:
                secret = hmac.new(self.secret_seed, config.pool_name.encode(), "sha256").digest()
                self._secrets[config.pool_name] = secret
                self.log.warn(
                    "affinity.secret is not set for pool {pool}: using a random one, so its "
                    "affinity cookies will not survive a restart or be honoured by another "
                    "instance",
                    pool=config.pool_name,
                )
        return Affinity(config, secret, self.clock.seconds)

    def set_poller_factory(self, make_poller: Callable[[BackendPool], Any]) -> None:
        """How count pollers are built; every pool (now and after reloads) gets one."""
        self.make_poller = make_poller
        for lane in self.lanes.values():
            if lane.poller is None:
                lane.poller = make_poller(lane.pool)

    def route(self, target: str, host: str | None) -> Lane | None:
        """The pool a request goes to, or None when no route takes it (404)."""
        return self.router.route(target, host)

    def lane_of(self, backend: BackendState) -> Lane | None:
        """The pool a backend belongs to."""
        for lane in self.lanes.values():
            if lane.pool.backends.get(backend.id) is backend:
                return lane
        return None

    def _other_pool_with(self, backend_id: str, lane: Lane) -> Lane | None:
        """Another pool whose DNS discovery serves a backend with this id."""
        for other in self.lanes.values():
            state = other.pool.backends.get(backend_id)
            if (
                other is not lane
                and state is not None
                and not state.removed
                and state.extra.get("discovered_by")
            ):
                return other
        return None

    def all_backends(self) -> list[tuple[Lane, BackendState]]:
        """Every backend of every pool, with its pool."""
        return [(lane, b) for lane in self.lanes.values() for b in lane.pool.backends.values()]

    def poll_all(self) -> Deferred[Any]:
        """Poll every pool's backends once (what the poll timer calls)."""
        polls = [lane.poller.poll_once() for lane in self.lanes.values() if lane.poller]
        return gatherResults(polls, consumeErrors=True)

    # --- the client-facing factory ------------------------------------------------

    def server_factory(self) -> RelayFactory:
        """An Autobahn server factory relaying to this balancer's backends."""
        factory = RelayFactory(self)
        self._configure_factory(factory)
        factory.server = "wsbalancer"
        self.factories.append(factory)
        return factory

    def _configure_factory(self, factory: RelayFactory) -> None:
        config = self.config
        keepalive = config.client_keepalive
        factory.setProtocolOptions(
            openHandshakeTimeout=config.client_handshake_timeout,
            closeHandshakeTimeout=config.close_timeout,
            autoPingInterval=keepalive.ping_interval,
            autoPingTimeout=keepalive.pong_timeout,
            maxMessagePayloadSize=config.max_message_size,
            maxFramePayloadSize=config.max_frame_size,
            maxConnections=0,  # relay.py admits up to limits.max_connections (RelayFactory.admit)
            failByDrop=False,
            echoCloseCodeReason=True,
            webStatus=False,
            tcpNoDelay=True,
            perMessageCompressionAccept=(
                accept_deflate_offer if config.compression else refuse_compression
            ),
        )
        base = HookedFrontendProtocol if self.hooks else FrontendProtocol
        factory.protocol = bake_options(base, factory)  # type: ignore[assignment]

    # --- reload and drain -------------------------------------------------------------

    def apply_config(self, new: Config) -> list[str]:
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
        wanted = {p.pool_name: p for p in new.all_pools()}
        for name, pool_config in wanted.items():
            lane = self.lanes.get(name)
            if lane is None:
                self.lanes[name] = self._new_lane(pool_config)
                changes.append(f"added pool {name}")
                continue
            lane.retired = False
            changes += self._apply_pool(lane, pool_config)
        for name, lane in list(self.lanes.items()):
            if name in wanted or lane.retired:
                continue
            # A dropped pool takes no new sessions; its backends drain like removed ones.
            lane.retired = True
            changes += self._apply_pool(lane, replace(lane.config, backends=()))
            changes.append(f"removed pool {name}")
        self.router = Router(new.routes, self.lanes, new.default_pool)
        if (old.routes, old.default_pool) != (new.routes, new.default_pool):
            changes.append(f"routes now {len(new.routes)} (default pool {new.default_pool})")
        return changes

    def _apply_pool(self, lane: Lane, new: PoolConfig) -> list[str]:
        """Apply one pool's new settings and backend list."""
        old, lane.config = lane.config, new
        prefix = "" if new.pool_name == DEFAULT_POOL else f"pool {new.pool_name}: "
        changes: list[str] = []
        lane.dialer.reconfigure(new, self.config)
        if _affinity_settings(old) != _affinity_settings(new):
            lane.affinity.release_all()
            lane.affinity = self._new_affinity(new)
            changes.append(f"{prefix}affinity {new.affinity}")
        if (old.http_timeout, old.backend_connect_timeout) != (
            new.http_timeout,
            new.backend_connect_timeout,
        ):
            lane.http_agent = None  # rebuilt with the new timeouts on next use
        pool = lane.pool
        pool.strategy, pool.count_ttl = new.strategy, self.config.count_ttl
        pool.fall, pool.rise = new.health_fall, new.health_rise
        pool.breaker_threshold, pool.breaker_cooldown = new.breaker_threshold, new.breaker_cooldown
        if pool.outliers is not None:
            pool.outliers.configure(
                new.outlier_consecutive_failures,
                new.outlier_base_ejection,
                new.outlier_max_ejection_percent,
            )
        wanted = {b.id: b for b in new.backends}
        for backend_id, config in list(wanted.items()):
            elsewhere = self._other_pool_with(backend_id, lane)
            if elsewhere is not None:
                # Ids are unique across pools (the views, metrics and API go by id): the one
                # another pool's discovery found and serves keeps it.
                del wanted[backend_id]
                changes.append(
                    f"{prefix}not adding {backend_id}: a backend of pool {elsewhere.name}"
                )
                continue
            state = pool.backends.get(backend_id)
            if state is not None:
                state.extra.pop("discovered_by", None)  # listed now: the file's to remove
            if state is None or state.removed:
                pool.add(config).removed = False
                if state is not None:
                    state.draining = False
                changes.append(f"{prefix}added {backend_id}")
            elif state.config != config:
                pool.add(config)
                changes.append(f"{prefix}changed {backend_id} (weight {config.weight:g})")
        for backend_id, state in list(pool.backends.items()):
            # Backends found by DNS discovery are its to remove, not the file's.
            if backend_id in wanted or state.removed or state.extra.get("discovered_by"):
                continue
            moved = self.remove_backend(state, new.removed_sessions)
            changes.append(
                f"{prefix}removed {backend_id}"
                + (
                    f" ({moved} sessions moved)"
                    if moved
                    else f" (draining {state.local_sessions} sessions)"
                )
            )
        return changes

    def add_backend(self, config: BackendConfig, lane: Lane | None = None) -> BackendState:
        """Add a backend at run time (admin API, DNS discovery) to a pool (the default)."""
        state = (lane.pool if lane is not None else self.pool).add(config)
        self.event(f"backend {config.id} added")
        state.removed = state.draining = False
        state.enabled = True
        self.log.info("backend {backend} added ({url})", backend=config.id, url=config.url)
        return state

    def remove_backend(self, state: BackendState, mode: str) -> int:
        """Stop sending sessions to a backend and forget it once drained; with `failover`
        its sessions move to other backends at once. Returns the sessions moved."""
        state.removed = state.draining = True
        self.event(f"backend {state.id} removed ({mode})")
        moved = 0
        if mode == "failover":
            for session in list(self.sessions.values()):
                if session.backend_state is state:
                    session.move("backend removed")
                    moved += 1
        self.log.info(
            "backend {backend} removed ({mode}, {n} sessions moved)",
            backend=state.id,
            mode=mode,
            n=moved,
        )
        self._forget_if_drained(state)
        return moved

    def _forget_if_drained(self, state: BackendState) -> None:
        if state.removed and state.local_sessions == 0 and state.dialing == 0:
            lane = self.lane_of(state)
            if lane is not None and state.requests == 0:
                lane.pool.remove(state.id)

    def backend_idle(self, state: BackendState) -> None:
        """A removed backend's last plain-HTTP request ended: forget it if nothing is left."""
        self._forget_if_drained(state)

    def http_body_limit(self) -> int:
        """The largest request body any pool that proxies HTTP accepts (each pool then
        checks its own)."""
        return max((lane.config.http_max_body for lane in self.lanes.values()), default=0)

    def drain(self) -> None:
        """Take no new sessions (readiness goes false); existing ones continue."""
        self.draining = True

    def stop_timers(self) -> None:
        """Cancel what is scheduled for later (ejected backends' returns): stopping."""
        for lane in self.lanes.values():
            if lane.pool.outliers is not None:
                lane.pool.outliers.stop()

    # --- events from sessions -------------------------------------------------------

    def _notify(self, event: str, *args: Any) -> None:
        for listener in self.listeners:
            try:
                getattr(listener, event)(*args)
            except Exception:
                self.log.failure(
                    "session listener {listener} failed on {event}",
                    listener=type(listener).__name__,
                    event=event,
                )

    def session_opened(self, session: RelaySession) -> None:
        """The backend leg is open; the client is about to get its 101."""
        self.sessions[session.id] = session
        self._notify("session_opened", session)

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
            self._notify("backend_picked", session, backend.id)

    def session_ended(self, session: RelaySession) -> None:
        """Both legs are closed: count the session's traffic and tell the listeners."""
        if self.sessions.pop(session.id, None) is None:
            return
        for _, state in self.all_backends():
            if state.removed:
                self._forget_if_drained(state)
        t = self._ended_traffic
        t[0] += session.msgs_in
        t[1] += session.msgs_out
        t[2] += session.bytes_in
        t[3] += session.bytes_out
        self._notify("session_closed", session)

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
        self._notify("failed_over", session, session.failover_from, new, error or "ok")

    def handshake_outcome(self, outcome: str) -> None:
        """Count a client handshake's outcome (bounded set of labels)."""
        self.metrics.handshakes.labels(outcome).inc()

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

    def poll_result(self, backend: BackendState, seconds: float, error: str | None) -> None:
        """The poller read (or failed to read) a backend's count."""
        self.log.debug(
            "poll {backend}: {result} in {ms:.1f} ms",
            backend=backend.id,
            result=error or f"{backend.reported} connections",
            ms=seconds * 1000,
            error=error,
            reported=backend.reported,
        )
        self.metrics.poll_seconds.labels(backend.id).observe(seconds)
        if error is not None:
            self.metrics.poll_errors.labels(backend.id).inc()

    def event(self, text: str) -> None:
        """Remember something an operator would want to see on the dashboard."""
        self.events.append((self.clock.seconds(), text))

    def _state_changed(self, backend: BackendState, kind: str, state: str) -> None:
        self.event(f"backend {backend.id} {kind} {state}")
        self.metrics.state_changes.labels(backend.id, kind, state).inc()
        (self.log.info if state in (UP, CLOSED) else self.log.warn)(
            "backend {backend} {kind} is now {state}", backend=backend.id, kind=kind, state=state
        )

    def _outlier_changed(self, backend_id: str, ejected: bool, state: OutlierState) -> None:
        if ejected:
            seconds = (state.ejected_until or 0.0) - self.clock.seconds()
            self.metrics.ejections.labels(backend_id).inc()
            self.event(f"backend {backend_id} ejected for {seconds:g}s")
            self.log.warn(
                "backend {backend} ejected for {seconds:g}s after {failures} failed "
                "handshakes in a row",
                backend=backend_id,
                seconds=seconds,
                failures=state.failures,
            )
        else:
            self.event(f"backend {backend_id} back from ejection")
            self.log.info("backend {backend} is back from ejection", backend=backend_id)

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
        return not self.draining and any(
            lane.pool.any_usable() for lane in self.lanes.values() if not lane.retired
        )

    def sweep_idle(self) -> None:
        """Close sessions that carried no message for a whole idle period (1001)."""
        for session in list(self.sessions.values()):
            # Bytes count too: a spliced session counts a message only when its last frame
            # has begun, so a long one in progress is not idle.
            mark = session.msgs_in + session.msgs_out + session.bytes_in + session.bytes_out
            if session.idle_mark == mark:
                session.terminate(1001, "idle timeout")
            session.idle_mark = mark
