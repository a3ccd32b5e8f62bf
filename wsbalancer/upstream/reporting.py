"""What the backend side reports as it changes: poll results, health and breaker state,
ejections, each as a metric, a log line and (for the operator) a dashboard event."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wsbalancer.observe.counters import BalancerMetrics
from wsbalancer.observe.logs import logger
from wsbalancer.upstream.outlier import OutlierState
from wsbalancer.upstream.pool import CLOSED, UP, BackendState


class FleetReporter:
    """Turns backend-side changes into metrics, log lines and dashboard events."""

    log = logger("wsbalancer")

    def __init__(self, metrics: BalancerMetrics, clock: Any, event: Callable[[str], None]):
        self.metrics = metrics
        self.clock = clock
        self.event = event

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

    def state_changed(self, backend: BackendState, kind: str, state: str) -> None:
        self.event(f"backend {backend.id} {kind} {state}")
        self.metrics.state_changes.labels(backend.id, kind, state).inc()
        (self.log.info if state in (UP, CLOSED) else self.log.warn)(
            "backend {backend} {kind} is now {state}", backend=backend.id, kind=kind, state=state
        )

    def outlier_changed(self, backend_id: str, ejected: bool, state: OutlierState) -> None:
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
