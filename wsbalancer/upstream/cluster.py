"""The backend side as it runs (Envoy's "cluster"): every pool (a `Lane` each), the router
between them, the count pollers, and what adds, changes and removes backends at run time.

It is handed the backend leg class (`leg_class`) and how to move a removed backend's
sessions (`move_sessions`); it imports no protocol and knows no session.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from zope.interface import implementer

from wsbalancer.config import DEFAULT_POOL, BackendConfig, Config, PoolConfig
from wsbalancer.config.interfaces import IReconfigurable
from wsbalancer.observe.counters import BalancerMetrics
from wsbalancer.observe.logs import logger
from wsbalancer.upstream.affinity import Affinity, AffinityKeys
from wsbalancer.upstream.dialer import BackendDialer
from wsbalancer.upstream.outlier import OutlierDetector
from wsbalancer.upstream.pool import BackendPool, BackendState
from wsbalancer.upstream.reporting import FleetReporter
from wsbalancer.upstream.routing import Lane, Router


@implementer(IReconfigurable)
class Cluster:
    """The pools of backends and the router; picks, health, reloads and run-time changes."""

    log = logger("wsbalancer")

    def __init__(
        self,
        config: Config,
        reactor: Any,
        clock: Any,
        metrics: BalancerMetrics,
        leg_class: Callable[[], type],
        event: Callable[[str], None],
        move_sessions: Callable[[BackendState, str, str], int],
        rng: Any = None,
        secret_seed: bytes | None = None,
    ) -> None:
        self.reactor = reactor
        self.clock = clock
        self.metrics = metrics
        self.config = config  # the process's settings (a pool's own are its lane's)
        self.leg_class = leg_class  # the backend leg class (hooked or plain), asked per pool
        self.event = event  # remember something for the dashboard
        self.move_sessions = move_sessions  # move a backend's sessions elsewhere; how many
        self.rng = rng
        self.reporter = FleetReporter(metrics, clock, event)
        self.keys = AffinityKeys(secret_seed)
        # Builds a count poller for a pool (set by the service assembly; None in unit tests).
        self.make_poller: Callable[[BackendPool], Any] | None = None
        self.lanes: dict[str, Lane] = {}
        for pool_config in config.all_pools():
            self.lanes[pool_config.pool_name] = self._new_lane(pool_config)
        self.router = Router(config.routes, self.lanes, config.default_pool)

    @property
    def pool(self) -> BackendPool:
        """The top-level pool, as before pools existed."""
        return self.lanes[DEFAULT_POOL].pool  # type: ignore[no-any-return]

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
        pool.on_state_change = self.reporter.state_changed
        pool.outliers = OutlierDetector(
            self.clock,
            hosts=lambda: [b.id for b in pool.backends.values() if not b.removed],
            consecutive_failures=config.outlier_consecutive_failures,
            base_ejection=config.outlier_base_ejection,
            max_ejection_percent=config.outlier_max_ejection_percent,
            on_change=self.reporter.outlier_changed,
        )
        dialer = BackendDialer(
            self.reactor,
            config,
            self.leg_class(),
            clock=self.clock,
            process=self.config,
        )
        lane = Lane(config, pool, dialer, self._new_affinity(config), self.clock)
        make_poller = getattr(self, "make_poller", None)  # unset while __init__ runs
        if make_poller is not None:
            lane.poller = make_poller(pool)
        share = getattr(self, "process_share", 1.0)
        if lane.admission is not None and share != 1.0:
            lane.admission.set_share(share)
        return lane

    def set_process_share(self, share: float) -> None:
        """This process's part of the admission rates: 1 / the worker processes."""
        self.process_share = share
        for lane in self.lanes.values():
            if lane.admission is not None:
                lane.admission.set_share(share)

    def _new_affinity(self, config: PoolConfig) -> Affinity:
        return self.keys.affinity(config, self.clock.seconds)

    @property
    def secret_seed(self) -> bytes:
        """What worker processes derive the same affinity keys from."""
        return self.keys.seed

    def set_poller_factory(self, make_poller: Callable[[BackendPool], Any]) -> None:
        """How count pollers are built; every pool (now and after reloads) gets one."""
        self.make_poller = make_poller
        for lane in self.lanes.values():
            if lane.poller is None:
                lane.poller = make_poller(lane.pool)

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

    def reconfigure(self, new: Config) -> list[str]:
        """Apply a re-read configuration to the pools and routes; returns what changed.

        Backends are added, re-weighted or removed; a removed backend takes no new sessions
        and its sessions stay until they end (`reload.removed_sessions: drain`) or are moved
        to other backends at once (`failover`)."""
        self.config = new
        changes: list[str] = []
        old_routes = (self.router.routes, self.router.default)
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
        if old_routes != (self.router.routes, self.router.default):
            changes.append(f"routes now {len(new.routes)} (default pool {new.default_pool})")
        return changes

    def _apply_pool(self, lane: Lane, new: PoolConfig) -> list[str]:
        """Apply one pool's new settings and backend list."""
        old, lane.config = lane.config, new
        prefix = "" if new.pool_name == DEFAULT_POOL else f"pool {new.pool_name}: "
        changes: list[str] = []
        changes += lane.retune(old, self.config, self._new_affinity, prefix)
        pool = lane.pool
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
        its sessions move to other backends at once, with `migrate` paced and make-before-break.
        Returns the sessions moved (with `migrate`: being moved)."""
        state.removed = state.draining = True
        self.event(f"backend {state.id} removed ({mode})")
        # `failover` moves them at once; `migrate` paced, make-before-break (evacuation).
        moved = self.move_sessions(state, "backend removed", mode) if mode != "drain" else 0
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
                if lane.admission is not None:
                    lane.admission.forget(state.id)

    def backend_idle(self, state: BackendState) -> None:
        """A removed backend's last plain-HTTP request ended: forget it if nothing is left."""
        self._forget_if_drained(state)

    def http_body_limit(self) -> int:
        """The largest request body any pool that proxies HTTP accepts (each pool then
        checks its own)."""
        return max((lane.config.http_max_body for lane in self.lanes.values()), default=0)

    def forget_drained(self) -> None:
        """Forget removed backends that have nothing left (a session just ended)."""
        for _, state in self.all_backends():
            if state.removed:
                self._forget_if_drained(state)

    def any_usable(self) -> bool:
        """Whether some pool still taking sessions has a usable backend."""
        return any(lane.pool.any_usable() for lane in self.lanes.values() if not lane.retired)

    def stop_timers(self) -> None:
        """Cancel what is scheduled for later (ejected backends' returns): stopping."""
        for lane in self.lanes.values():
            if lane.pool.outliers is not None:
                lane.pool.outliers.stop()
