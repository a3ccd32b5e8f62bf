"""The scrape-time gauges: backend state and traffic, read from the fleet when Prometheus
scrapes (so the per-message path touches no metric object)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from wsbalancer.relay.interfaces import IFleetView
from wsbalancer.upstream.pool import CLOSED, HALF_OPEN, OPEN, UP

BREAKER_VALUES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


class FleetGauges(Collector):
    """A Prometheus collector reading `fleet` (anything that provides IFleetView)."""

    def __init__(self, fleet: IFleetView) -> None:
        self.fleet = fleet

    def collect(self) -> Iterator[Metric]:
        b = self.fleet
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
