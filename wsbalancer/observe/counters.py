"""Prometheus metrics: event counters updated as things happen, and gauges read from the
balancer's state at scrape time (so the per-message path touches no metric object)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from wsbalancer import __version__
from wsbalancer.upstream.pool import CLOSED, HALF_OPEN, OPEN, UP

if TYPE_CHECKING:
    from wsbalancer.relay.balancer import Balancer

BREAKER_VALUES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


class BalancerMetrics:
    """The metric families of one balancer, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.build_info = Info("wsbalancer_build", "The running wsbalancer", registry=r)
        self.build_info.info({"version": __version__})
        self.sessions_opened = Counter(
            "wsbalancer_sessions_opened", "Sessions relayed to a backend", ["backend"], registry=r
        )
        self.sessions_closed = Counter(
            "wsbalancer_sessions_closed",
            "Sessions ended, by the close code the client saw",
            ["backend", "code"],
            registry=r,
        )
        self.handshakes = Counter(
            "wsbalancer_handshakes", "Client handshakes by outcome", ["outcome"], registry=r
        )
        self.handshake_seconds = Histogram(
            "wsbalancer_handshake_seconds",
            "Client handshake to 101, including the backend dial",
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.dial_failures = Counter(
            "wsbalancer_backend_dial_failures",
            "Backend legs that could not be opened",
            ["backend"],
            registry=r,
        )
        self.poll_errors = Counter(
            "wsbalancer_poll_errors", "Metric fetches that failed", ["backend"], registry=r
        )
        self.poll_seconds = Histogram(
            "wsbalancer_poll_seconds",
            "Metric fetch latency",
            ["backend"],
            registry=r,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.failovers = Counter(
            "wsbalancer_failovers",
            "Backend legs lost under an open client and re-dialled",
            ["backend"],
            registry=r,
        )
        self.failover_outcomes = Counter(
            "wsbalancer_failover_outcomes", "How failovers ended", ["outcome"], registry=r
        )
        self.state_changes = Counter(
            "wsbalancer_backend_state_changes",
            "Health and breaker transitions",
            ["backend", "kind", "state"],
            registry=r,
        )

        self.ejections = Counter(
            "wsbalancer_backend_ejections",
            "Backends ejected for failing handshakes in a row (outlier detection)",
            ["backend"],
            registry=r,
        )
        self.http_timeouts = Counter(
            "wsbalancer_http_timeouts",
            "Plain-HTTP client connections timed out: head or body too slow (408), idle "
            "keep-alive (closed)",
            ["kind"],
            registry=r,
        )
        self.http_refused = Counter(
            "wsbalancer_http_refused",
            "Plain-HTTP client requests or connections refused before reaching a backend",
            ["reason"],
            registry=r,
        )

    def attach(self, balancer: Balancer) -> None:
        """Add the scrape-time gauges read from `balancer`."""
        self.registry.register(_StateCollector(balancer))


class _StateCollector(Collector):
    def __init__(self, balancer: Balancer) -> None:
        self.balancer = balancer

    def collect(self) -> Iterator[Metric]:
        b = self.balancer
        now = b.clock.seconds()
        active = GaugeMetricFamily(
            "wsbalancer_sessions_active", "Open relayed sessions", labels=["backend"]
        )
        reported = GaugeMetricFamily(
            "wsbalancer_backend_reported_connections",
            "Connection count the backend last reported",
            labels=["backend"],
        )
        estimate = GaugeMetricFamily(
            "wsbalancer_backend_estimated_connections",
            "Reported count plus local changes since",
            labels=["backend"],
        )
        up = GaugeMetricFamily(
            "wsbalancer_backend_up", "1 when the backend's health is up", labels=["backend"]
        )
        stale = GaugeMetricFamily(
            "wsbalancer_backend_stale", "1 when the last metric fetch failed", labels=["backend"]
        )
        breaker = GaugeMetricFamily(
            "wsbalancer_backend_breaker",
            "Circuit breaker: 0 closed, 1 half-open, 2 open",
            labels=["backend"],
        )
        picks = CounterMetricFamily(
            "wsbalancer_picks", "Backends chosen for new sessions", labels=["backend"]
        )
        ejected = GaugeMetricFamily(
            "wsbalancer_backend_ejected",
            "1 while the backend is ejected for failing handshakes in a row",
            labels=["backend"],
        )
        pools = GaugeMetricFamily(
            "wsbalancer_backend_pool",
            "1 for the pool each backend belongs to",
            labels=["backend", "pool"],
        )
        for lane, backend in b.all_backends():
            pool = lane.pool
            label = [backend.id]
            pools.add_metric([backend.id, lane.name], 1)
            active.add_metric(label, backend.local_sessions)
            if backend.reported is not None:
                reported.add_metric(label, backend.reported)
            estimate.add_metric(label, backend.estimate(now, pool.count_ttl))
            up.add_metric(label, 1 if backend.health == UP else 0)
            stale.add_metric(label, 1 if backend.stale else 0)
            breaker.add_metric(label, BREAKER_VALUES[backend.breaker])
            picks.add_metric(label, backend.picks)
            outliers = pool.outliers
            ejected.add_metric(label, 1 if outliers and outliers.is_ejected(backend.id) else 0)
        messages = CounterMetricFamily(
            "wsbalancer_messages", "Messages relayed", labels=["direction"]
        )
        octets = CounterMetricFamily(
            "wsbalancer_message_bytes", "Message payload bytes relayed", labels=["direction"]
        )
        totals = b.traffic_totals()
        messages.add_metric(["client_to_backend"], totals[0])
        messages.add_metric(["backend_to_client"], totals[1])
        octets.add_metric(["client_to_backend"], totals[2])
        octets.add_metric(["backend_to_client"], totals[3])
        yield from (active, reported, estimate, up, stale, breaker, ejected, picks)
        yield from (messages, octets, pools)
