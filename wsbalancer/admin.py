"""The admin site: `/balancer-metrics` JSON, `/metrics` (Prometheus), `/healthz`, `/readyz`."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from prometheus_client.twisted import MetricsResource
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from .balancer import Balancer


def balancer_metrics(balancer: Balancer) -> dict[str, Any]:
    """The seed Traefik plugin's JSON shape, plus per-backend state."""
    pool = balancer.pool
    now = balancer.clock.seconds()
    services = []
    pod_metrics: dict[str, list[dict[str, Any]]] = {}
    backends = []
    total = 0
    agents = 0
    for b in pool.backends.values():
        estimate = b.estimate(now, pool.count_ttl)
        total += estimate
        agents += b.reported or 0
        services.append({"url": b.config.url, "connections": estimate})
        pod = b.pod
        if pod is not None:
            pod_metrics[b.config.url] = [
                {
                    "agentsConnections": pod.agents_connections,
                    "podName": pod.pod_name,
                    "podIP": pod.pod_ip,
                    "nodeName": pod.node_name,
                }
            ]
        backends.append(
            {
                "id": b.id,
                "url": b.config.url,
                "metricUrl": b.config.metric_url,
                "weight": b.config.weight,
                "connections": estimate,
                "reportedConnections": b.reported,
                "localSessions": b.local_sessions,
                "dialing": b.dialing,
                "healthy": b.health == "up",
                "health": b.health,
                "stale": b.stale,
                "breaker": b.breaker,
                "enabled": b.enabled,
                "draining": b.draining,
                "usable": pool.usable(b),
                "picks": b.picks,
                "lastPoll": _iso(b.last_poll_at, balancer),
                "lastPollError": b.last_poll_error,
                "pod": None
                if pod is None
                else {"podName": pod.pod_name, "podIP": pod.pod_ip, "nodeName": pod.node_name},
            }
        )
    return {
        "timestamp": datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "services": services,
        "podMetrics": pod_metrics,
        "totalConnections": total,
        "agentsConnections": agents,
        "strategy": pool.strategy,
        "sessions": len(balancer.sessions),
        "ready": balancer.ready(),
        "backends": backends,
    }


def _iso(seconds: float | None, balancer: Balancer) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


class JSONResource(Resource):
    """A read-only JSON document computed per request."""

    isLeaf = True

    def __init__(self, produce: Any) -> None:
        super().__init__()
        self.produce = produce

    def render_GET(self, request: Request) -> bytes:
        status, document = self.produce()
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(document, indent=1).encode("utf-8") + b"\n"


class IndexResource(Resource):
    """Plain-text list of the admin endpoints."""

    isLeaf = True

    def __init__(self, paths: list[str]) -> None:
        super().__init__()
        self.paths = paths

    def render_GET(self, request: Request) -> bytes:
        if request.postpath not in ([], [b""]):
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"not found\n"
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return ("wsbalancer admin\n" + "".join(f"  {p}\n" for p in self.paths)).encode()


def admin_site(balancer: Balancer) -> Site:
    """The twisted.web site of the admin endpoint."""
    root = Resource()
    metric_path = balancer.config.balancer_metric_path.strip("/").encode()
    paths = [f"/{metric_path.decode()}", "/metrics", "/healthz", "/readyz"]
    root.putChild(b"", IndexResource(paths))
    root.putChild(metric_path, JSONResource(lambda: (200, balancer_metrics(balancer))))
    root.putChild(b"metrics", MetricsResource(registry=balancer.metrics.registry))
    root.putChild(b"healthz", JSONResource(lambda: (200, {"status": "ok"})))

    def readiness() -> tuple[int, dict[str, Any]]:
        ready = balancer.ready()
        usable = [b.id for b in balancer.pool.backends.values() if balancer.pool.usable(b)]
        return (200 if ready else 503), {"ready": ready, "usableBackends": usable}

    root.putChild(b"readyz", JSONResource(readiness))
    site = Site(root)
    site.noisy = False
    site.displayTracebacks = False
    return site
