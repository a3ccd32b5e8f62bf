"""The admin REST API under `/api/`: backends, sessions, frontends. JSON in and out.

Every mutating call needs `Authorization: Bearer <admin.token>`; reads need it too unless
`admin.open_reads` is on. With no token configured, mutating calls are refused (403): the
API cannot be left open by accident. Errors are JSON `{"error": ..., "reason": ...}` with
400 (bad body or parameter), 401 (token missing or wrong), 403, 404 (unknown id),
405 (method), 409 (conflict), 413 (body over 64 KiB), 415 (body not application/json).
A request body is read only from a caller with the token (see admin_http.py). Changes made
here last until the next reload or restart.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Callable
from dataclasses import replace
from importlib import resources
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from wsbalancer import __version__
from wsbalancer.config import DEFAULT_POOL, BackendSpec, ConfigError, build_backend
from wsbalancer.observe.logs import logger
from wsbalancer.observe.worker_metrics import add_backend_figures
from wsbalancer.service.workers import session_owner

if TYPE_CHECKING:
    from wsbalancer.relay.balancer import Balancer
    from wsbalancer.relay.session import RelaySession
    from wsbalancer.upstream.pool import BackendState

_log = logger("wsbalancer.admin")
MAX_BODY = 64 * 1024
_DIGITS = re.compile(r"[0-9]{1,15}")  # str.isdigit() also takes "²", which int() refuses


JSON_ONLY = "request bodies must be Content-Type: application/json"


def bearer_token_ok(authorization: bytes | None, token: str) -> bool:
    """Whether an Authorization header value is `Bearer <token>` (compared in constant time)."""
    scheme, _, value = (authorization or b"").decode("latin-1").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        value.strip().encode("latin-1"), token.encode()
    )


def is_json_type(content_type: bytes | None) -> bool:
    """Whether a Content-Type header says application/json (parameters such as charset aside)."""
    media = (content_type or b"").split(b";", 1)[0].strip().lower()
    return media == b"application/json"


class ApiError(Exception):
    """An error answer: HTTP status, a short code, and a sentence."""

    def __init__(self, status: int, error: str, reason: str, allow: list[str] = ()) -> None:  # type: ignore[assignment]
        super().__init__(reason)
        self.status, self.error, self.reason = status, error, reason
        self.allow = list(allow)


def backend_view(balancer: Balancer, b: BackendState) -> dict[str, Any]:
    """One backend as the API shows it."""
    lane = balancer.lane_of(b) or balancer.lanes[DEFAULT_POOL]
    pool = lane.pool
    pod = b.pod
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
        "dialing": b.dialing,
        "picks": b.picks,
        "lastPollError": b.last_poll_error,
        "pod": None
        if pod is None
        else {"podName": pod.pod_name, "podIP": pod.pod_ip, "nodeName": pod.node_name},
    }


def session_view(balancer: Balancer, s: RelaySession) -> dict[str, Any]:
    """One session as the API shows it."""
    from wsbalancer.relay.session import peer_host

    return {
        "id": s.id,
        "client": peer_host(s.client),
        "path": s.client.http_request_uri,
        "backend": s.backend_state.id if s.backend_state else None,
        "ageSeconds": round(balancer.clock.seconds() - s.started, 3),
        "subprotocol": s.subprotocol,
        "reconnecting": s.reconnecting,
        "reconnects": s.reconnects,
        "possiblyLost": s.lost,
        "messagesIn": s.msgs_in,
        "bytesIn": s.bytes_in,
        "messagesOut": s.msgs_out,
        "bytesOut": s.bytes_out,
    }


class AdminApi(Resource):
    """Routes `/api/...` requests to handlers; authentication and errors in one place."""

    isLeaf = True

    def __init__(self, balancer: Balancer, frontends: Any = None, workers: Any = None) -> None:
        super().__init__()
        self.balancer = balancer
        self.frontends = frontends  # pause()/resume()/paused, from the service
        self.workers = workers  # the other worker processes (workers.py), if any

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
                if len(parts) >= 2 and _DIGITS.fullmatch(parts[1]):
                    owner = session_owner(int(parts[1]))
                    if owner:  # another worker's session: its answer is the answer
                        return self._from_worker(request, owner, method)
                elif len(parts) == 1 and method == "GET":
                    return self._all_sessions(request)
            status, document = self._route(method, parts, request)
            if method != "GET" and status < 300:  # what operators changed, on the dashboard
                self.balancer.event(f"API {method} {_uri(request)}: {status}")
            if self.workers is not None and method == "GET" and parts[:1] == ["backends"]:
                return self._all_backend_figures(request, status, document)
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
            changed = ensureDeferred(
                self.workers.broadcast(method, _uri(request), _body_of(request), _auth(request))
            )
            return finish_later(request, changed.addCallback(lambda _: body))
        return body

    def _from_worker(self, request: Request, owner: int, method: str) -> Any:
        async def answer() -> bytes:
            if owner not in self.workers.ready_workers():
                request.setResponseCode(404)
                return b'{"error": "not_found", "reason": "no such session"}\n'
            status, body = await self.workers.call(
                owner, method, _uri(request), _body_of(request), _auth(request)
            )
            request.setResponseCode(status)
            return body

        return finish_later(request, ensureDeferred(answer()))

    def _all_sessions(self, request: Request) -> Any:
        _, own = self.list_sessions(request)

        async def answer() -> bytes:
            for _, body in await self.workers.gather(_uri(request), _auth(request)):
                own["sessions"] += json.loads(body).get("sessions", [])
            return json.dumps(own, indent=1).encode() + b"\n"

        return finish_later(request, ensureDeferred(answer()))

    def _all_backend_figures(self, request: Request, status: int, document: Any) -> Any:
        """A backend view with every process's own figures (its sessions, dials, picks)
        summed; the fleet-wide ones (health, reported count, state) are the master's."""
        own = document["backends"] if "backends" in document else [document]

        async def answer() -> bytes:
            for _, body in await self.workers.gather(_uri(request), _auth(request)):
                doc = json.loads(body)
                add_backend_figures(own, doc["backends"] if "backends" in doc else [doc])
            request.setResponseCode(status)
            return json.dumps(document, indent=1).encode() + b"\n"

        return finish_later(request, ensureDeferred(answer()))

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
            ("backends", "*", "reset-breaker"): {"POST": self.reset_breaker},
            ("sessions",): {"GET": self.list_sessions},
            ("sessions", "*"): {"GET": self.get_session, "DELETE": self.terminate_session},
            ("sessions", "*", "failover"): {"POST": self.fail_over_session},
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

    def _session(self, session_id: str) -> RelaySession:
        session = (
            self.balancer.sessions.get(int(session_id)) if _DIGITS.fullmatch(session_id) else None
        )
        if session is None:
            raise ApiError(404, "unknown_session", f"no open session {session_id!r}")
        return session

    @staticmethod
    def _body(request: Request) -> dict[str, Any]:
        raw = request.content.read(MAX_BODY + 1) if request.content else b""
        if len(raw) > MAX_BODY:
            raise ApiError(413, "body_too_large", f"request body over {MAX_BODY} bytes")
        if not raw.strip():
            return {}
        if not is_json_type(request.getHeader(b"content-type")):
            raise ApiError(415, "unsupported_media_type", JSON_ONLY)
        try:
            body = json.loads(raw)
        except ValueError:
            raise ApiError(400, "bad_body", "body is not JSON")
        except RecursionError:  # json recurses per nesting level: [[[[... is not an answer 500
            raise ApiError(400, "bad_body", "body is nested too deeply")
        if not isinstance(body, dict):
            raise ApiError(400, "bad_body", "body must be a JSON object")
        return body

    @staticmethod
    def _arg(request: Request, name: str) -> str | None:
        values = request.args.get(name.encode())
        return values[0].decode("utf-8", "replace") if values else None

    # --- backends -------------------------------------------------------------------------

    def list_backends(self, request: Request) -> tuple[int, Any]:
        backends = [backend_view(self.balancer, b) for _, b in self.balancer.all_backends()]
        return 200, {"backends": backends}

    def get_backend(self, request: Request, backend_id: str) -> tuple[int, Any]:
        return 200, backend_view(self.balancer, self._backend(backend_id))

    def add_backend(self, request: Request) -> tuple[int, Any]:
        body = self._body(request)
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
        body = self._body(request)
        if set(body) != {"weight"}:
            raise ApiError(400, "bad_body", "expected {weight}")
        weight = body["weight"]
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight > 0:
            raise ApiError(400, "bad_body", "weight must be a number above zero")
        state.config = replace(state.config, weight=float(weight))
        return 200, backend_view(self.balancer, state)

    def remove_backend(self, request: Request, backend_id: str) -> tuple[int, Any]:
        state = self._backend(backend_id)
        mode = self._arg(request, "sessions") or "drain"
        if mode not in ("drain", "failover"):
            raise ApiError(400, "bad_parameter", "sessions must be drain or failover")
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

    def reset_breaker(self, request: Request, backend_id: str) -> tuple[int, Any]:
        state = self._backend(backend_id)
        lane = self.balancer.lane_of(state)
        (lane.pool if lane is not None else self.balancer.pool).reset_breaker(state)
        return 200, backend_view(self.balancer, state)

    # --- sessions -------------------------------------------------------------------------

    def list_sessions(self, request: Request) -> tuple[int, Any]:
        backend = self._arg(request, "backend")
        sessions = [
            s
            for s in self.balancer.sessions.values()
            if backend is None or (s.backend_state and s.backend_state.id == backend)
        ]
        return 200, {"sessions": [session_view(self.balancer, s) for s in sessions]}

    def get_session(self, request: Request, session_id: str) -> tuple[int, Any]:
        return 200, session_view(self.balancer, self._session(session_id))

    def terminate_session(self, request: Request, session_id: str) -> tuple[int, Any]:
        session = self._session(session_id)
        code_text = self._arg(request, "code") or "1000"
        reason = self._arg(request, "reason") or "terminated by the operator"
        if not _DIGITS.fullmatch(code_text) or not (
            int(code_text) == 1000
            or 1001 <= int(code_text) <= 1003
            or 1007 <= int(code_text) <= 1014
            or 3000 <= int(code_text) <= 4999
        ):
            raise ApiError(
                400,
                "bad_parameter",
                "code must be a close code that may be sent (1000-1003, 1007-1014, 3000-4999)",
            )
        if len(reason.encode()) > 123:
            raise ApiError(400, "bad_parameter", "reason must be at most 123 bytes")
        session.terminate(int(code_text), reason)
        return 200, {"terminated": session.id, "code": int(code_text), "reason": reason}

    def fail_over_session(self, request: Request, session_id: str) -> tuple[int, Any]:
        session = self._session(session_id)
        if session.reconnecting or session.backend is None:
            raise ApiError(409, "conflict", "the session is already failing over")
        before = session.backend_state.id if session.backend_state else None
        session.move("moved by the operator")
        return 202, {"session": session.id, "from": before, "reconnecting": True}

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


def finish_later(request: Request, answer: Deferred[Any]) -> Any:
    """Write what `answer` fires with (bytes) and finish, unless the client has left."""
    gone: list[bool] = []
    request.notifyFinish().addErrback(lambda _: gone.append(True))

    def write(body: bytes) -> None:
        if not gone:
            request.write(body)
            request.finish()

    def failed(failure: Any) -> None:
        _log.failure("admin request {path} failed", failure, path=request.path)
        if not gone:
            request.setResponseCode(500)
            write(b'{"error": "internal", "reason": "see the balancer\'s log"}\n')

    answer.addCallback(write).addErrback(failed)
    return NOT_DONE_YET


def _uri(request: Request) -> str:
    return request.uri.decode("utf-8", "replace")


def _body_of(request: Request) -> bytes:
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    return content.read(MAX_BODY + 1)


def _auth(request: Request) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    token = request.getHeader(b"authorization")
    if token:
        headers["Authorization"] = token.decode("latin-1")
    return headers


def openapi_document() -> bytes:
    """The OpenAPI description of this API (kept in the package as openapi.json)."""
    return resources.files("wsbalancer.admin").joinpath("openapi.json").read_bytes()
