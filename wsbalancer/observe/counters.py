"""Prometheus counters and histograms, updated as things happen. The gauges read at scrape
time (backend state, traffic) are a collector the assembly adds to the same registry
(`wsbalancer.admin.gauges`)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, Info

from wsbalancer import __version__


class BalancerMetrics:
    """The metric families of one balancer, in a registry of its own."""

    def __init__(self) -> None:
        # Children of labelled metrics by their label values (`child`)
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
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
        self.migrations = Counter(
            "wsbalancer_migrations",
            "Make-before-break migrations by outcome (migrated, skipped, failed)",
            ["outcome"],
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

    def child(self, metric: Any, *values: str) -> Any:
        """`metric.labels(*values)`, looked up once: labels() checks its arguments and
        takes a lock on every call, several times in every session's life."""
        key = (metric, values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found
