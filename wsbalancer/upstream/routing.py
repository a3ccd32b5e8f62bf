"""Routes and pools as the balancer runs them.

A `Lane` is one pool at run time: its validated settings, its `BackendPool`, the dialer for
its backends, its affinity and (when the pool proxies plain HTTP) its HTTP agent. The
`Router` maps a request's path and Host to a lane: the longest matching path prefix wins, a
route naming a Host beats one that does not, and what no route takes goes to the default
pool (or gets 404 when there is none). Plain Python, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from wsbalancer.config import Config, PoolConfig, Route
from wsbalancer.upstream.admission import Admission
from wsbalancer.upstream.affinity import affinity_settings


class Lane:
    """One pool as it runs: settings, backends, dialer, affinity, HTTP client."""

    def __init__(
        self, config: PoolConfig, pool: Any, dialer: Any, affinity: Any, clock: Any = None
    ) -> None:
        self.config = config
        self.pool = pool
        self.dialer = dialer
        self.affinity = affinity
        self.http_agent: Any = None  # built on first use by the HTTP proxy
        self.poller: Any = None
        self.retired = False  # dropped by a reload: takes no new sessions
        # Backend upgrades per second (admission.*), asked before every dial of this pool.
        self.admission = Admission(config, clock) if clock is not None else None

    @property
    def name(self) -> str:
        """The pool's name (`default` for the top-level one)."""
        return self.config.pool_name

    def retune(
        self,
        old: PoolConfig,
        process: Config,
        make_affinity: Callable[[PoolConfig], Any],
        prefix: str,
    ) -> list[str]:
        """Apply this pool's new settings (`self.config`, `old` before the reload) to its
        dialer, affinity, HTTP agent, picking, health and outlier detection."""
        new = self.config
        changes: list[str] = []
        self.dialer.reconfigure(new, process)
        if self.admission is not None:
            self.admission.configure(new)
        if affinity_settings(old) != affinity_settings(new):
            self.affinity.release_all()
            self.affinity = make_affinity(new)
            changes.append(f"{prefix}affinity {new.affinity}")
        if (old.http_timeout, old.backend_connect_timeout) != (
            new.http_timeout,
            new.backend_connect_timeout,
        ):
            self.http_agent = None  # rebuilt with the new timeouts on next use
        pool = self.pool
        pool.strategy, pool.count_ttl = new.strategy, process.count_ttl
        pool.fall, pool.rise = new.health_fall, new.health_rise
        pool.breaker_threshold, pool.breaker_cooldown = new.breaker_threshold, new.breaker_cooldown
        if pool.outliers is not None:
            pool.outliers.configure(
                new.outlier_consecutive_failures,
                new.outlier_base_ejection,
                new.outlier_max_ejection_percent,
            )
        return changes

    # --- what a session's dial asks of its pool ---------------------------------------

    def next_candidate(
        self, tried: list[str], prefer: Any = None, last_resort: bool = False
    ) -> Any:
        """The next backend to dial, in pick order: `prefer` (a pinned backend) first, then
        the pool's pick among those not yet `tried`; with `last_resort`, backends only
        marked down once none is usable. None when none is left."""
        if prefer is not None and prefer.id not in tried:
            prefer.picks += 1
            return prefer
        backend = self.pool.pick(exclude=tried)
        if backend is None and last_resort:
            backend = self.pool.last_resort(tried)
        return backend

    def dial_started(self, backend: Any) -> None:
        """A dial to `backend` begins (it counts in the load until it ends)."""
        self.pool.dial_started(backend)

    def dial_succeeded(self, backend: Any) -> None:
        """The backend's 101 arrived: health, breaker and outlier detection hear of it."""
        self.pool.dial_succeeded(backend)
        if self.pool.outliers is not None:
            self.pool.outliers.success(backend.id)

    def dial_failed(self, backend: Any, breaker: bool, outlier: bool | None) -> None:
        """The dial ended without a session. `breaker`: it counts against the circuit
        breaker; `outlier`: a gateway failure (True), an answer the backend's application
        meant (False), or no verdict on the backend at all (None: we gave up first)."""
        self.pool.dial_failed(backend, counts_against_breaker=breaker)
        outliers = self.pool.outliers
        if outliers is not None and outlier is not None:
            (outliers.failure if outlier else outliers.success)(backend.id)


class Router:
    """Path (and Host) to lane."""

    def __init__(self, routes: Iterable[Route], lanes: Mapping[str, Lane], default: str | None):
        # Longest prefix first; among equal prefixes, host-specific routes first.
        self.routes = sorted(routes, key=lambda r: (-len(r.path), r.host is None))
        self.lanes = lanes
        self.default = default

    def route(self, target: str, host: str | None) -> Lane | None:
        """The lane for a request target (path and query) and Host header, or None (404)."""
        path = urlsplit(target).path or "/"
        host_name = _host_name(host)
        for route in self.routes:
            if route.matches(path, host_name):
                return self.lanes.get(route.pool)
        return self.lanes.get(self.default) if self.default is not None else None


def _host_name(host: str | None) -> str | None:
    # `Example.com:8080` and `[::1]:80` match routes written without the port.
    if not host:
        return None
    host = host.strip().lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
