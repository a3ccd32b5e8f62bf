"""The admin REST API under `/api/`: backends, sessions, frontends. JSON in and out.

Every mutating call needs `Authorization: Bearer <admin.token>`; reads need it too unless
`admin.open_reads` is on. With no token configured, mutating calls are refused (403): the
API cannot be left open by accident. Errors are JSON `{"error": ..., "reason": ...}` with
400 (bad body or parameter), 401 (token missing or wrong), 403, 404 (unknown id),
405 (method), 409 (conflict), 413 (body over 64 KiB), 415 (body not application/json).
A request body is read only from a caller with the token (see admin/http.py). Changes made
here last until the next reload or restart.

This module routes the calls and holds the backend and frontend handlers. The request rules
(token, JSON body, error answers) are in `admin.api_requests`, the session handlers in
`admin.api_sessions`, and what worker processes change about an answer in `admin.api_workers`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import replace
from importlib import resources
from typing import TYPE_CHECKING, Any

from twisted.web.resource import Resource
from twisted.web.server import Request

from wsbalancer import __version__
from wsbalancer.admin.api_requests import (
    DIGITS,
    JSON_ONLY,
    MAX_BODY,
    ApiError,
    bearer_token_ok,
    finish_later,
    is_json_type,
    json_body,
    query_arg,
    request_uri,
)
from wsbalancer.admin.api_sessions import SessionRoutes, session_view
from wsbalancer.admin.api_workers import all_backend_figures, all_sessions, broadcast, from_worker
from wsbalancer.config import DEFAULT_POOL, BackendSpec, ConfigError, build_backend
from wsbalancer.observe.logs import logger
from wsbalancer.observe.traffic import BackendTraffic, traffic_view
from wsbalancer.relay.ids import session_owner
from wsbalancer.relay.leg_traffic import traffic_by_backend, traffic_of

if TYPE_CHECKING:
    from wsbalancer.relay.balancer import Balancer
    from wsbalancer.upstream.pool import BackendState

DECIMAL = re.compile(r"[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?")
_log = logger("wsbalancer.admin")

# What other modules take from here (admin.site: AdminApi, finish_later), wherever it lives.
__all__ = [
    "JSON_ONLY",
    "MAX_BODY",
    "AdminApi",
    "ApiError",
    "backend_view",
    "bearer_token_ok",
    "finish_later",
    "is_json_type",
    "openapi_document",
    "session_view",
]


def backend_view(
    balancer: Balancer, b: BackendState, traffic: BackendTraffic | None = None
) -> dict[str, Any]:
    """One backend as the API shows it (`traffic`: its figures, when already gathered)."""
    if traffic is None:
        traffic = traffic_of(b, balancer.sessions.values())
    lane = balancer.lane_of(b) or balancer.lanes[DEFAULT_POOL]
    pool = lane.pool
    pod = b.pod
    evacuation = balancer.evacuations.get(b.id)
    return {
        "id": b.id,
        "pool": lane.name,
        "url": b.config.url,
        "metricUrl": b.config.metric_url,
        "weight": b.config.weight,
        "enabled": b.enabled,
        "draining": b.draining,
        "removed": b.removed,
        "usable": pool.usable(b),
        "health": b.health,
        "stale": b.stale,
        "breaker": pool.breaker_state(b),
        "connections": b.estimate(balancer.clock.seconds(), pool.count_ttl),
        "reportedConnections": b.reported,
        "localSessions": b.local_sessions,
        "evacuation": evacuation.view() if evacuation is not None else None,
        "dialing": b.dialing,
        "picks": b.picks,
        "lastPollError": b.last_poll_error,
        "pod": None
        if pod is None
        else {"podName": pod.pod_name, "podIP": pod.pod_ip, "nodeName": pod.node_name},
        "traffic": traffic_view(traffic),
    }


class AdminApi(Resource):
    """Routes `/api/...` requests to handlers; authentication and errors in one place."""

    isLeaf = True

    def __init__(self, balancer: Balancer, frontends: Any = None, workers: Any = None) -> None:
        super().__init__()
        self.balancer = balancer
        self.frontends = frontends  # pause()/resume()/paused, from the service
        self.workers = workers  # the other worker processes (workers.py), if any
        self.session_routes = SessionRoutes(balancer)

    def render(self, request: Request) -> Any:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        method = request.method.decode("ascii", "replace")
        parts = [p.decode("utf-8", "replace") for p in request.postpath or [] if p]
        try:
            if parts == ["openapi.json"] and method == "GET":
                return openapi_document()
            self._authorize(request, mutating=method != "GET")
            if self.workers is not None and parts[:1] == ["sessions"]:
                if len(parts) >= 2 and DIGITS.fullmatch(parts[1]):
                    owner = session_owner(int(parts[1]))
                    if owner:  # another worker's session: its answer is the answer
                        return from_worker(self.workers, request, owner, method)
                elif len(parts) == 1 and method == "GET":
                    _, own = self.session_routes.list_sessions(request)
                    return all_sessions(self.workers, request, own)
            status, document = self._route(method, parts, request)
            if method != "GET" and status < 300:  # what operators changed, on the dashboard
                self.balancer.event(f"API {method} {request_uri(request)}: {status}")
            if self.workers is not None and method == "GET" and parts[:1] == ["backends"]:
                return all_backend_figures(self.workers, request, status, document)
        except ApiError as e:
            status, document = e.status, {"error": e.error, "reason": e.reason}
            if e.status == 401:
                request.setHeader(b"www-authenticate", b'Bearer realm="wsbalancer"')
            if e.allow:
                request.setHeader(b"allow", ", ".join(e.allow).encode())
        except Exception:
            _log.failure("admin API call {method} {path} failed", method=method, path=request.path)
            status, document = 500, {"error": "internal", "reason": "see the balancer's log"}
        request.setResponseCode(status)
        body = json.dumps(document, indent=1).encode() + b"\n"
        if (
            self.workers is not None
            and method != "GET"
            and status < 300
            and parts[:1] in (["backends"], ["frontends"])
        ):
            # The same change on every worker before the caller hears it is done.
            return broadcast(self.workers, request, method, body)
        return body

    def _authorize(self, request: Request, mutating: bool) -> None:
        config = self.balancer.config
        if not mutating and config.admin_open_reads:
            return
        token = config.admin_token
        if not token:
            if mutating:
                raise ApiError(
                    403, "forbidden", "the admin API is read-only until admin.token is set"
                )
            return
        if not bearer_token_ok(request.getHeader(b"authorization"), token):
            raise ApiError(401, "unauthorized", "a valid bearer token is required")

    # --- routing ------------------------------------------------------------------------

    def _route(self, method: str, parts: list[str], request: Request) -> tuple[int, Any]:
        routes: dict[tuple[str, ...], dict[str, Callable[..., tuple[int, Any]]]] = {
            ("backends",): {"GET": self.list_backends, "POST": self.add_backend},
            ("backends", "*"): {
                "GET": self.get_backend,
                "PATCH": self.change_backend,
                "DELETE": self.remove_backend,
            },
            ("backends", "*", "enable"): {"POST": self.enable_backend},
            ("backends", "*", "disable"): {"POST": self.disable_backend},
            ("backends", "*", "drain"): {"POST": self.drain_backend},
            ("backends", "*", "evacuate"): {"POST": self.evacuate_backend},
            ("backends", "*", "reset-breaker"): {"POST": self.reset_breaker},
            ("sessions",): {"GET": self.session_routes.list_sessions},
            ("sessions", "*"): {
                "GET": self.session_routes.get_session,
                "DELETE": self.session_routes.terminate_session,
            },
            ("sessions", "*", "failover"): {"POST": self.session_routes.fail_over_session},
            ("sessions", "*", "migrate"): {"POST": self.session_routes.migrate_session},
            ("rebalance",): {"GET": self.session_routes.rebalancing},
            ("frontends",): {"GET": self.frontend_state},
            ("frontends", "pause"): {"POST": self.pause_frontends},
            ("frontends", "resume"): {"POST": self.resume_frontends},
            ("version",): {"GET": self.version},
        }
        for pattern, methods in routes.items():
            if len(pattern) == len(parts) and all(
                p in ("*", x) for p, x in zip(pattern, parts, strict=True)
            ):
                handler = methods.get(method)
                if handler is None:
                    raise ApiError(
                        405,
                        "method_not_allowed",
                        f"{method} is not allowed here; use {', '.join(methods)}",
                        allow=list(methods),
                    )
                args = [x for p, x in zip(pattern, parts, strict=True) if p == "*"]
                return handler(request, *args)
        raise ApiError(404, "not_found", "no such API endpoint")

    # --- helpers --------------------------------------------------------------------------

    def _backend(self, backend_id: str) -> BackendState:
        state = next((b for _, b in self.balancer.all_backends() if b.id == backend_id), None)
        if state is None:
            raise ApiError(404, "unknown_backend", f"no backend {backend_id!r}")
        return state

    # --- backends -------------------------------------------------------------------------

    def list_backends(self, request: Request) -> tuple[int, Any]:
        states = [b for _, b in self.balancer.all_backends()]
        traffic = traffic_by_backend(states, self.balancer.sessions.values())
        return 200, {"backends": [backend_view(self.balancer, b, traffic[b.id]) for b in states]}

    def get_backend(self, request: Request, backend_id: str) -> tuple[int, Any]:
        return 200, backend_view(self.balancer, self._backend(backend_id))

    def add_backend(self, request: Request) -> tuple[int, Any]:
        body = json_body(request)
        unknown = set(body) - {"id", "url", "metric", "weight", "pool"}
        if unknown or "url" not in body:
            raise ApiError(
                400,
                "bad_body",
                "expected {url, id?, metric?, weight?, pool?}"
                + (f"; unknown {sorted(unknown)[0]!r}" if unknown else ""),
            )
        for key in ("url", "id", "metric", "pool"):
            if key in body and (not isinstance(body[key], str) or not body[key]):
                raise ApiError(400, "bad_body", f"{key} must be a non-empty string")
        weight = body.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise ApiError(400, "bad_body", "weight must be a number")
        spec = BackendSpec(
            url=body["url"],
            source="request",
            id=body.get("id"),
            metric=body.get("metric"),
            weight=body.get("weight", 1),
        )
        name = body.get("pool", DEFAULT_POOL)
        lane = self.balancer.lanes.get(name)
        config_now = self.balancer.config
        unrouted = (
            name == DEFAULT_POOL
            and config_now.default_pool != DEFAULT_POOL
            and all(route.pool != DEFAULT_POOL for route in config_now.routes)
        )
        if lane is None or lane.retired or unrouted:
            # (With only named pools the default one takes no request: nothing to add to.)
            raise ApiError(404, "unknown_pool", f"no pool named {name!r}")
        try:
            config = build_backend(spec, lane.config.metric_path)
        except ConfigError as e:
            raise ApiError(400, "bad_backend", str(e).removeprefix("request: "))
        if any(
            b.id == config.id and (not b.removed or other is not lane)
            for other, b in self.balancer.all_backends()
        ):  # (a removed one of this pool is brought back; ids are unique across pools)
            raise ApiError(409, "conflict", f"backend {config.id!r} exists")
        state = self.balancer.add_backend(config, lane)
        return 201, backend_view(self.balancer, state)

    def change_backend(self, request: Request, backend_id: str) -> tuple[int, Any]:
        state = self._backend(backend_id)
        body = json_body(request)
        if set(body) != {"weight"}:
            raise ApiError(400, "bad_body", "expected {weight}")
        weight = body["weight"]
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight > 0:
            raise ApiError(400, "bad_body", "weight must be a number above zero")
        state.config = replace(state.config, weight=float(weight))
        return 200, backend_view(self.balancer, state)

    def remove_backend(self, request: Request, backend_id: str) -> tuple[int, Any]:
        state = self._backend(backend_id)
        mode = query_arg(request, "sessions", "drain")
        if mode not in ("drain", "failover", "migrate"):
            raise ApiError(400, "bad_parameter", "sessions must be drain, failover or migrate")
        if state.removed:
            raise ApiError(409, "conflict", f"backend {backend_id!r} is already being removed")
        moved = self.balancer.remove_backend(state, mode)
        return 200, {
            "removed": backend_id,
            "sessions": mode,
            "moved": moved,
            "draining": state.local_sessions,
        }

    def enable_backend(self, request: Request, backend_id: str) -> tuple[int, Any]:
        state = self._backend(backend_id)
        if state.removed:
            raise ApiError(409, "conflict", f"backend {backend_id!r} is being removed")
        state.enabled, state.draining = True, False
        return 200, backend_view(self.balancer, state)

    def disable_backend(self, request: Request, backend_id: str) -> tuple[int, Any]:
        state = self._backend(backend_id)
        state.enabled = False
        return 200, backend_view(self.balancer, state)

    def drain_backend(self, request: Request, backend_id: str) -> tuple[int, Any]:
        state = self._backend(backend_id)
        state.draining = True
        return 200, backend_view(self.balancer, state)

    def evacuate_backend(self, request: Request, backend_id: str) -> tuple[int, Any]:
        state = self._backend(backend_id)
        pace_text = query_arg(request, "pace", "20") or ""
        # A plain decimal only (float() would also take "inf", "1_0" or " 5").
        pace = float(pace_text) if DECIMAL.fullmatch(pace_text) else 0.0
        if not 0.001 <= pace <= 10_000:
            raise ApiError(
                400, "bad_parameter", "pace must be migrations a second, from 0.001 to 10000"
            )
        self.balancer.evacuate(state, pace)
        return 202, backend_view(self.balancer, state)

    def reset_breaker(self, request: Request, backend_id: str) -> tuple[int, Any]:
        state = self._backend(backend_id)
        lane = self.balancer.lane_of(state)
        (lane.pool if lane is not None else self.balancer.pool).reset_breaker(state)
        return 200, backend_view(self.balancer, state)

    # --- frontends ------------------------------------------------------------------------

    def frontend_state(self, request: Request) -> tuple[int, Any]:
        return 200, {"paused": bool(self.frontends and self.frontends.paused)}

    def pause_frontends(self, request: Request) -> tuple[int, Any]:
        if self.frontends is None:
            raise ApiError(409, "conflict", "no frontends to pause")
        self.frontends.pause()
        return 200, {"paused": True}

    def resume_frontends(self, request: Request) -> tuple[int, Any]:
        if self.frontends is None:
            raise ApiError(409, "conflict", "no frontends to resume")
        self.frontends.resume()
        return 200, {"paused": False}

    def version(self, request: Request) -> tuple[int, Any]:
        return 200, {"version": __version__}


def openapi_document() -> bytes:
    """The OpenAPI description of this API (kept in the package as openapi.json)."""
    return resources.files("wsbalancer.admin").joinpath("openapi.json").read_bytes()
