"""Backend state and the least-loaded pick: plain Python, no I/O, time passed in.

A backend's load is this instance's own sessions on it (known exactly, dials in flight
included, so a burst spreads) plus the sessions of everyone else: the count the backend last
reported on its metric endpoint (the fleet-wide truth) less this instance's sessions when that
report arrived. Reading only "everyone else" from the report keeps a report that raced with
our own opens and closes from counting them twice (a session we closed while the count was
being fetched may still be in it, so it is not taken for someone else's).
A failed report is never read as zero: the backend is flagged stale and keeps its last
estimate, or falls back to this instance's own count once the report is older than the
count TTL.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from wsbalancer.config import BackendConfig
from wsbalancer.observe.traffic import BackendTraffic
from wsbalancer.upstream.outlier import OutlierDetector

UP, DOWN = "up", "down"
# How long before a count request a session's end may still be missing from the count.
CLOSE_GRACE = 0.5
MAX_RECENT_CLOSES = 100_000
CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"
# Power-of-two: a backend lagging the sampled pick by more than this many sessions (or this
# share of the pick's load, if more) is taken first. Pure sampling offers an empty newcomer
# among four backends only half the time, so half the new sessions kept going to the full
# ones (measured: 48 of 100 reached it); within the slack the random pair still breaks herds.
CATCH_UP_SESSIONS = 2.0
CATCH_UP_SHARE = 0.05


@dataclass
class PodInfo:
    """What a backend said about itself on its metric endpoint."""

    agents_connections: int
    pod_name: str | None = None
    pod_ip: str | None = None
    node_name: str | None = None


@dataclass
class BackendState:
    """One backend as this instance sees it."""

    config: BackendConfig
    reported: int | None = None
    reported_at: float | None = None
    others: int = 0  # sessions of other balancer instances, as of the last report
    # When our recent sessions on it ended: the backend may still count those that ended
    # just before or while its count was fetched.
    recent_closes: deque[float] = field(default_factory=deque)
    dialing: int = 0
    local_sessions: int = 0
    leaving: int = 0  # of those, old legs of migrated sessions being drained (going soon)
    pinned: int = 0  # sessions pinned over plain HTTP whose WebSocket is not open (yet)
    requests: int = 0  # plain-HTTP requests in flight
    stale: bool = False
    pod: PodInfo | None = None
    last_poll_at: float | None = None
    last_poll_error: str | None = None
    health: str = UP
    health_confirmed: bool = False
    poll_failures: int = 0
    poll_successes: int = 0
    breaker: str = CLOSED
    connect_failures: int = 0
    breaker_opens: int = 0
    breaker_until: float = 0.0
    enabled: bool = True
    draining: bool = False
    removed: bool = False  # dropped from the configuration; forgotten once drained
    picks: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    # What this instance's sessions carried over it (the relay adds to it, the admin reads)
    traffic: BackendTraffic = field(default_factory=BackendTraffic)

    @property
    def id(self) -> str:
        """The backend's id."""
        return self.config.id

    def estimate(self, now: float, count_ttl: float) -> int:
        """Connections on this backend as best known now."""
        fresh = self.reported_at is not None and now - self.reported_at <= count_ttl
        own = self.local_sessions + self.dialing + self.pinned + self.requests
        return own + (self.others if fresh else 0)


class BackendPool:
    """The backends of one pool, their health, breakers and counts, and the pick."""

    def __init__(
        self,
        backends: Iterable[BackendConfig],
        seconds: Callable[[], float],
        strategy: str = "least-loaded",
        count_ttl: float = 30.0,
        fall: int = 3,
        rise: int = 2,
        breaker_threshold: int = 5,
        breaker_cooldown: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        self.seconds = seconds
        self.strategy = strategy
        self.count_ttl = count_ttl
        self.fall = fall
        self.rise = rise
        self.breaker_threshold = breaker_threshold
        self.breaker_cooldown = breaker_cooldown
        self.rng = rng or random.Random()
        self.backends: dict[str, BackendState] = {}
        self._rr_weights: dict[str, float] = {}
        self.on_state_change: Callable[[BackendState, str, str], None] | None = None
        self.outliers: OutlierDetector | None = None  # ejects backends that keep failing
        for config in backends:
            self.add(config)

    # --- membership -------------------------------------------------------------------

    def add(self, config: BackendConfig) -> BackendState:
        """Add a backend (or replace the config of one with the same id, keeping its counts)."""
        existing = self.backends.get(config.id)
        if existing is not None:
            existing.config = config
            return existing
        state = BackendState(config=config)
        self.backends[config.id] = state
        return state

    def remove(self, backend_id: str) -> BackendState:
        """Forget a backend; its open sessions keep their own reference."""
        self._rr_weights.pop(backend_id, None)
        if self.outliers is not None:
            self.outliers.forget(backend_id)
        return self.backends.pop(backend_id)

    # --- the pick ---------------------------------------------------------------------

    def breaker_state(self, backend: BackendState) -> str:
        """The breaker as it stands now: an open one whose cool-down is over is half-open."""
        if backend.breaker == OPEN and self.seconds() >= backend.breaker_until:
            return HALF_OPEN
        return backend.breaker

    def usable(self, backend: BackendState) -> bool:
        """Whether a new session may go to this backend now (no side effects)."""
        if not backend.enabled or backend.draining or backend.health != UP:
            return False
        if self.outliers is not None and self.outliers.is_ejected(backend.id):
            return False
        breaker = self.breaker_state(backend)
        if breaker == OPEN:
            return False
        if breaker == HALF_OPEN:
            return backend.dialing == 0  # one trial dial at a time
        return True

    def candidates(self, exclude: Iterable[str] = ()) -> list[BackendState]:
        """Usable backends, less the excluded ids."""
        skip = set(exclude)
        return [b for b in self.backends.values() if b.id not in skip and self.usable(b)]

    def load(self, backend: BackendState) -> float:
        """Weighted load: the estimate divided by the weight."""
        return backend.estimate(self.seconds(), self.count_ttl) / backend.config.weight

    def pick(self, exclude: Iterable[str] = ()) -> BackendState | None:
        """The backend for a new session by the pool's strategy, or None if none is usable."""
        choices = self.candidates(exclude)
        if not choices:
            return None
        if self.strategy == "round-robin":
            chosen = self._pick_round_robin(choices)
        elif self.strategy == "power-of-two" and len(choices) > 2:
            chosen = self._catch_up(choices, self._least_loaded(self.rng.sample(choices, 2)))
        else:
            chosen = self._least_loaded(choices)
        chosen.picks += 1
        if chosen.breaker == OPEN:  # its cool-down is over: this dial is the trial
            self._set_breaker(chosen, HALF_OPEN)
        return chosen

    def last_resort(self, exclude: Iterable[str] = ()) -> BackendState | None:
        """When no backend is usable: the least loaded of those only marked down (by the
        health checks or an open breaker), not taken out by an operator. A session failing
        over tries them before its client is closed: a backend just restarted is up before
        its health checks have seen it rise."""
        skip = set(exclude)
        choices = [
            b
            for b in self.backends.values()
            if b.id not in skip and b.enabled and not b.draining and not b.removed
        ]
        return self._least_loaded(choices) if choices else None

    def _least_loaded(self, choices: Sequence[BackendState]) -> BackendState:
        loads = [(self.load(b), b) for b in choices]
        lowest = min(load for load, _ in loads)
        tied = [b for load, b in loads if load == lowest]
        return tied[0] if len(tied) == 1 else self.rng.choice(tied)

    def _catch_up(self, choices: Sequence[BackendState], chosen: BackendState) -> BackendState:
        picked = self.load(chosen)
        lowest = min(self.load(b) for b in choices)
        if picked - lowest > max(CATCH_UP_SESSIONS, CATCH_UP_SHARE * picked):
            return self._least_loaded(choices)
        return chosen

    def _pick_round_robin(self, choices: Sequence[BackendState]) -> BackendState:
        # Smooth weighted round robin: every candidate gains its weight, the leader pays the total.
        total = 0.0
        best = None
        for b in choices:
            current = self._rr_weights.get(b.id, 0.0) + b.config.weight
            self._rr_weights[b.id] = current
            total += b.config.weight
            if best is None or current > self._rr_weights[best.id]:
                best = b
        assert best is not None
        self._rr_weights[best.id] -= total
        return best

    # --- session accounting -----------------------------------------------------------

    def dial_started(self, backend: BackendState) -> None:
        """A session is being dialled to this backend: count it now so a burst spreads."""
        backend.dialing += 1

    def dial_succeeded(self, backend: BackendState) -> None:
        """The backend accepted the session."""
        backend.dialing -= 1
        backend.local_sessions += 1
        backend.connect_failures = 0
        if backend.breaker != CLOSED:
            backend.breaker_opens = 0
            self._set_breaker(backend, CLOSED)

    def dial_failed(self, backend: BackendState, counts_against_breaker: bool) -> None:
        """The dial failed; connect errors, timeouts and 5xx count towards the breaker."""
        backend.dialing -= 1
        if counts_against_breaker:
            self._failed(backend)

    def request_started(self, backend: BackendState, counted: bool = True) -> None:
        """A plain-HTTP request went to this backend; it counts while in flight (unless its
        session is counted already, as a pin)."""
        if counted:
            backend.requests += 1

    def request_ended(self, backend: BackendState, failed: bool, counted: bool = True) -> None:
        """A plain-HTTP request ended; a connect failure or timeout counts towards the breaker,
        an answer closes it again."""
        if counted:
            backend.requests -= 1
        if failed:
            self._failed(backend)
        else:
            backend.connect_failures = 0
            if backend.breaker != CLOSED:
                backend.breaker_opens = 0
                self._set_breaker(backend, CLOSED)

    def _failed(self, backend: BackendState) -> None:
        backend.connect_failures += 1
        if backend.breaker == HALF_OPEN or (
            backend.breaker == CLOSED and backend.connect_failures >= self.breaker_threshold
        ):
            backend.breaker_opens += 1
            # Back off: each consecutive reopening doubles the wait, up to 16 cool-downs.
            factor = 2 ** min(backend.breaker_opens - 1, 4)
            backend.breaker_until = self.seconds() + self.breaker_cooldown * factor
            self._set_breaker(backend, OPEN)

    def session_closed(self, backend: BackendState) -> None:
        """A session that was open on this backend ended."""
        backend.local_sessions -= 1
        if backend.config.metric_url is not None:  # only reports need them
            closes = backend.recent_closes
            closes.append(self.seconds())
            if len(closes) > MAX_RECENT_CLOSES:
                closes.popleft()

    # --- count reports ----------------------------------------------------------------

    def poll_started(self, backend: BackendState) -> None:
        """A count request is going out: closes from a moment before it on may be in its
        answer (the backend may not have seen them end yet)."""
        horizon = self.seconds() - CLOSE_GRACE
        closes = backend.recent_closes
        while closes and closes[0] < horizon:
            closes.popleft()

    def poll_succeeded(self, backend: BackendState, pod: PodInfo) -> None:
        """The backend reported its count: what is not ours belongs to everyone else."""
        now = self.seconds()
        backend.reported = pod.agents_connections
        backend.reported_at = now
        ours = backend.local_sessions + len(backend.recent_closes)
        backend.others = max(0, pod.agents_connections - ours)
        backend.recent_closes.clear()
        backend.pod = pod
        backend.stale = False
        backend.last_poll_at = now
        backend.last_poll_error = None
        backend.poll_failures = 0
        backend.poll_successes += 1
        if backend.health == DOWN and backend.poll_successes >= self.rise:
            self._set_health(backend, UP)
        backend.health_confirmed = backend.health == UP

    def poll_failed(self, backend: BackendState, error: str) -> None:
        """The count could not be read: stale, and after `fall` failures (or a first one
        before any success) the backend is down."""
        backend.stale = True
        backend.last_poll_at = self.seconds()
        backend.last_poll_error = error
        backend.poll_successes = 0
        backend.poll_failures += 1
        if backend.health == UP and (
            backend.poll_failures >= self.fall or not backend.health_confirmed
        ):
            self._set_health(backend, DOWN)

    def poll_no_count(self, backend: BackendState, reason: str) -> None:
        """The backend answered, but has no count endpoint (a plain WebSocket server): it is
        alive, as for a success, and stale: its last report (if any) fades after the count
        TTL and this instance's own sessions are what is known of it."""
        now = self.seconds()
        backend.stale = True
        backend.last_poll_at = now
        backend.last_poll_error = reason
        backend.poll_failures = 0
        backend.poll_successes += 1
        if backend.health == DOWN and backend.poll_successes >= self.rise:
            self._set_health(backend, UP)
        backend.health_confirmed = backend.health == UP

    def reset_breaker(self, backend: BackendState) -> None:
        """Close a backend's breaker by hand (an operator knows it is back)."""
        backend.connect_failures = 0
        backend.breaker_opens = 0
        backend.breaker_until = 0.0
        self._set_breaker(backend, CLOSED)

    # --- state changes ----------------------------------------------------------------

    def _set_health(self, backend: BackendState, health: str) -> None:
        old, backend.health = backend.health, health
        if self.on_state_change is not None and old != health:
            self.on_state_change(backend, "health", health)

    def _set_breaker(self, backend: BackendState, breaker: str) -> None:
        old, backend.breaker = backend.breaker, breaker
        if self.on_state_change is not None and old != breaker:
            self.on_state_change(backend, "breaker", breaker)

    def any_usable(self) -> bool:
        """Whether a new session could be placed now (readiness)."""
        return any(
            b.enabled and not b.draining and b.health == UP and self.breaker_state(b) != OPEN
            for b in self.backends.values()
        )
