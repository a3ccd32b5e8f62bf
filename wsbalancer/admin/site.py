"""The admin site: `/balancer-metrics` JSON, `/metrics` (Prometheus), `/healthz`, `/readyz`."""

from __future__ import annotations

import base64
import hashlib
import html
import json
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet.defer import ensureDeferred
from twisted.web.pages import notFound
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from wsbalancer.admin.api import AdminApi, finish_later
from wsbalancer.admin.gauges import FleetGauges
from wsbalancer.admin.http import AdminSite
from wsbalancer.admin.traffic_gauges import BackendTrafficGauges
from wsbalancer.observe.traffic import traffic_view
from wsbalancer.observe.worker_metrics import merge_balancer_metrics, merge_prometheus
from wsbalancer.relay.balancer import Balancer
from wsbalancer.relay.leg_traffic import traffic_by_backend

MIGRATION_OUTCOMES = ("migrated", "skipped", "failed")


def balancer_metrics(balancer: Balancer) -> dict[str, Any]:
    """The seed Traefik plugin's JSON shape, plus per-backend state."""
    now = balancer.clock.seconds()
    services = []
    pod_metrics: dict[str, list[dict[str, Any]]] = {}
    backends = []
    total = 0
    agents = 0
    pools: dict[str, dict[str, Any]] = {}
    for lane in balancer.lanes.values():
        pools[lane.name] = {
            "strategy": lane.pool.strategy,
            "affinity": lane.config.affinity,
            "http": lane.config.http,
            "backends": list(lane.pool.backends),
            # sessions pinned over plain HTTP and HTTP requests in flight, per backend
            # (both are in each backend's `connections` too)
            "pinned": {b.id: b.pinned for b in lane.pool.backends.values()},
            "httpRequests": {b.id: b.requests for b in lane.pool.backends.values()},
            "routes": [
                {"path": r.path, "host": r.host}
                for r in balancer.config.routes
                if r.pool == lane.name
            ],
        }
    traffic = traffic_by_backend(
        [b for _, b in balancer.all_backends()], list(balancer.sessions.values())
    )
    for lane, b in balancer.all_backends():
        pool = lane.pool
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
                "pool": lane.name,
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
                # set while outlier detection keeps new sessions off it
                "ejectedUntil": _iso(pool.outliers.ejected_until(b.id), balancer)
                if pool.outliers is not None
                else None,
                "enabled": b.enabled,
                "draining": b.draining,
                "usable": pool.usable(b),
                "picks": b.picks,
                "lastPoll": _iso(b.last_poll_at, balancer),
                "lastPollError": b.last_poll_error,
                "pod": None
                if pod is None
                else {"podName": pod.pod_name, "podIP": pod.pod_ip, "nodeName": pod.node_name},
                "traffic": traffic_view(traffic[b.id]),
            }
        )
    registry = balancer.metrics.registry
    migrations = {
        outcome: int(
            registry.get_sample_value("wsbalancer_migrations_total", {"outcome": outcome}) or 0
        )
        for outcome in MIGRATION_OUTCOMES
    }
    return {
        "timestamp": datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "services": services,
        "podMetrics": pod_metrics,
        "totalConnections": total,
        "agentsConnections": agents,
        "strategy": balancer.pool.strategy,
        "defaultPool": balancer.config.default_pool,
        "pools": pools,
        "sessions": len(balancer.sessions),
        "ready": balancer.ready(),
        "backends": backends,
        "migrations": migrations,
        "events": [{"time": _iso(t, balancer), "text": text} for t, text in balancer.events],
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


class MergedMetricsResource(Resource):
    """The JSON metrics of the master merged with its workers'."""

    isLeaf = True

    def __init__(self, balancer: Balancer, workers: Any, path: str) -> None:
        super().__init__()
        self.balancer = balancer
        self.workers = workers
        self.path = path

    def render_GET(self, request: Request) -> Any:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")

        async def answer() -> bytes:
            answers = await self.workers.gather(self.path)
            others = [(i, json.loads(body)) for i, body in answers]
            merged = merge_balancer_metrics(balancer_metrics(self.balancer), others)
            return json.dumps(merged, indent=1).encode("utf-8") + b"\n"

        return finish_later(request, ensureDeferred(answer()))


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


class DashboardResource(Resource):
    """The live HTML dashboard: no external assets; it reads the JSON distribution. Its
    script is a file of its own (`dashboard.js`, also served below this path, so the
    relative reference works with and without a trailing slash); the policy allows no
    inline script, and no inline style but the page's own style block (by its hash)."""

    isLeaf = True

    def __init__(self, source_path: str) -> None:
        super().__init__()
        page = resources.files("wsbalancer.admin").joinpath("dashboard.html").read_text("utf-8")
        attribute = html.escape(source_path, quote=True)
        self.page = page.replace("<body>", f'<body data-source="{attribute}">', 1).encode()
        style = page[page.index("<style>") + len("<style>") : page.index("</style>")]
        digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
        self.policy = (
            "default-src 'self'; script-src 'self'; "
            f"style-src 'sha256-{digest}'; img-src 'none'; object-src 'none'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        ).encode()
        self.script = DashboardScript()

    def render_GET(self, request: Request) -> bytes:
        if request.postpath == [b"dashboard.js"]:
            return self.script.render_GET(request)
        if request.postpath not in ([], [b""]):
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"not found\n"
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"content-security-policy", self.policy)
        request.setHeader(b"x-content-type-options", b"nosniff")
        return self.page


class DashboardScript(Resource):
    """`dashboard.js`, the dashboard's script."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        script = resources.files("wsbalancer.admin").joinpath("dashboard.js").read_text("utf-8")
        self.body = script.encode()

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/javascript; charset=utf-8")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"cache-control", b"no-cache")
        return self.body


class PrometheusResource(Resource):
    """`/metrics` in Prometheus' text format, collected in the reactor thread (the state it
    reads is the reactor's; prometheus_client's own twisted resource uses a thread pool)."""

    isLeaf = True

    def __init__(self, registry: Any, workers: Any = None) -> None:
        super().__init__()
        self.registry = registry
        self.workers = workers  # with worker processes, their series are summed in

    def render_GET(self, request: Request) -> Any:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        own = generate_latest(self.registry)
        if self.workers is None:
            return own

        async def answer() -> bytes:
            answers = await self.workers.gather("/metrics")
            return merge_prometheus([own, *(body for _, body in answers)])

        return finish_later(request, ensureDeferred(answer()))


class _Folder(Resource):
    """A path segment; unknown children get a plain 404."""

    def getChild(self, path: bytes, request: Request) -> Any:
        return notFound("Not found", "No such admin endpoint.")


def _put(root: Resource, path: str, resource: Any) -> None:
    """Mount `resource` at a path of one or more segments."""
    *parents, leaf = [segment.encode() for segment in path.strip("/").split("/")]
    node = root
    for segment in parents:
        child = node.children.get(segment)
        if child is None:
            child = _Folder()
            node.putChild(segment, child)
        node = child
    node.putChild(leaf, resource)


def admin_site(balancer: Balancer, frontends: Any = None, workers: Any = None) -> Site:
    """The twisted.web site of the admin endpoint."""
    root = _Folder()
    metric_path = "/" + balancer.config.balancer_metric_path.strip("/")
    paths = [
        "/dashboard",
        metric_path,
        "/metrics",
        "/healthz",
        "/readyz",
        "/api/ (REST, see /api/openapi.json)",
    ]
    root.putChild(b"", IndexResource(paths))
    if workers is None:
        _put(root, metric_path, JSONResource(lambda: (200, balancer_metrics(balancer))))
    else:
        _put(root, metric_path, MergedMetricsResource(balancer, workers, metric_path))
    # The scrape-time gauges join the balancer's counters in the registry /metrics serves.
    balancer.metrics.registry.register(FleetGauges(balancer))
    balancer.metrics.registry.register(BackendTrafficGauges(balancer))
    root.putChild(b"metrics", PrometheusResource(balancer.metrics.registry, workers))
    root.putChild(b"api", AdminApi(balancer, frontends, workers))
    dashboard = DashboardResource(metric_path)
    root.putChild(b"dashboard", dashboard)
    root.putChild(b"dashboard.js", dashboard.script)
    root.putChild(b"healthz", JSONResource(lambda: (200, {"status": "ok"})))

    def readiness() -> tuple[int, dict[str, Any]]:
        ready = balancer.ready()
        usable = [  # of every pool that takes requests
            b.id
            for lane in balancer.lanes.values()
            if not lane.retired
            for b in lane.pool.backends.values()
            if lane.pool.usable(b)
        ]
        return (200 if ready else 503), {"ready": ready, "usableBackends": usable}

    root.putChild(b"readyz", JSONResource(readiness))
    site = AdminSite(root, balancer, ["/healthz", "/readyz", "/metrics", metric_path])
    site.noisy = False
    site.displayTracebacks = False
    return site
