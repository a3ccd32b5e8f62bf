"""Plain-HTTP proxying for pools with `http.enabled`: requests that are not WebSocket upgrades
(Socket.IO's and SockJS's long-polling, a page, an API) relayed to the pool's backends.

The client-facing side is twisted.web (`HTTPChannel`, `Request`, a leaf `Resource`): the
front door hands a connection to it when its first request is not an upgrade
(`relay.FrontendProtocol`). The backend side is Twisted's `Agent` with a persistent
connection pool. Responses stream: each chunk the backend writes is written to the client
as it arrives (a long-poll answer is not held back), with the client's write buffer pausing
the backend's reads. Request bodies are bounded (`http.max_body`, 413), a backend that does
not answer within `http.timeout` gets the client a 504, hop-by-hop headers are dropped and
X-Forwarded-For/-Proto/-Host added, and the pool's affinity is applied (the cookie is set on
the HTTP response, so the WebSocket that follows lands on the same backend).

This module routes a request and carries it through (`ProxyResource`, `ProxiedRequest`);
the client connection's deadlines and limits are `relay.http_channel`'s, and what a backend
is sent and how its answer is read are `relay.http_backend`'s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import ISSLTransport
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from wsbalancer.observe.logs import logger
from wsbalancer.relay.http_backend import (
    HOP_BY_HOP,
    BodyRelay,
    Discard,
    backend_agent,
    backend_headers,
    backend_http_url,
    describe_failure,
    request_body,
)
from wsbalancer.relay.http_channel import (
    LimitedRequest,
    ProxyChannel,
    channel_peer,
    channel_transport,
)
from wsbalancer.relay.interfaces import IProxyHost
from wsbalancer.upstream.affinity import new_nonce

if TYPE_CHECKING:
    from wsbalancer.upstream.pool import BackendState
    from wsbalancer.upstream.routing import Lane

_log = logger("wsbalancer.http")


def proxy_site(balancer: IProxyHost) -> Site:
    """The twisted.web site that proxies a connection's plain-HTTP requests."""
    # No Twisted idle timer: `ProxyChannel` times each phase of a connection itself.
    site = Site(ProxyResource(balancer), timeout=None, reactor=balancer.reactor)  # type: ignore[arg-type]
    site.protocol = ProxyChannel  # type: ignore[assignment,method-assign]
    site.open_channels = 0  # type: ignore[attr-defined]
    site.requestFactory = LimitedRequest
    site.noisy = False
    site.balancer = balancer  # type: ignore[attr-defined]
    return site


def error_body(request: Request, code: int, text: str) -> bytes:
    """A short plain-text error answer (also for requests a browser shows)."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    body = (" ".join(text.split()) + "\n").encode("utf-8", "replace")
    request.setHeader(b"content-length", str(len(body)).encode())
    return body


class ProxyResource(Resource):
    """Routes each request to its pool and relays it there."""

    isLeaf = True

    def __init__(self, balancer: IProxyHost) -> None:
        super().__init__()
        self.balancer = balancer

    def render(self, request: Request) -> Any:
        target = request.uri.decode("latin-1")
        host = (request.getHeader(b"host") or b"").decode("latin-1")
        lane = self.balancer.route(target, host)
        peer = channel_peer(request.channel)
        if lane is None:
            _log.info("HTTP {target} from {peer}: 404 no route", target=target, peer=peer)
            return error_body(request, 404, f"no route for {urlsplit(target).path}")
        if not lane.config.http:
            _log.info("HTTP {target} from {peer}: 426 WebSocket only", target=target, peer=peer)
            request.setHeader(b"upgrade", b"websocket")
            return error_body(request, 426, "this path takes WebSocket connections only")
        if request.requestHeaders.hasHeader(b"upgrade"):
            # An upgrade needs a fresh connection: this one is already plain HTTP.
            return error_body(request, 400, "a WebSocket upgrade must open its own connection")
        content: Any = request.content
        if content.seek(0, 2) > lane.config.http_max_body:
            _log.info("HTTP {target} from {peer}: 413 body too large", target=target, peer=peer)
            return error_body(request, 413, "request body too large")
        content.seek(0)
        ProxiedRequest(self.balancer, lane, request).start()
        return NOT_DONE_YET


class ProxiedRequest:
    """One client request relayed to one backend, and its response streamed back."""

    def __init__(self, balancer: IProxyHost, lane: Lane, request: Request) -> None:
        self.balancer = balancer
        self.lane = lane
        self.request = request
        self.peer = channel_peer(request.channel)
        self.target = request.uri.decode("latin-1")
        self.backend: BackendState | None = None
        self.pending: defer.Deferred[Any] | None = None
        self.timer: Any = None
        self.body: BodyRelay | None = None
        self.done = False
        self.client_gone = False
        self.timed_out = False
        self.new_pin: str | None = None  # the nonce of a cookie this response sets
        # With cookie affinity the session counts once, as its pin; its requests (a
        # long-poll is in flight most of the time) would count it twice, unevenly.
        self.counted = lane.affinity.mode != "cookie"
        self.tried: list[str] = []

    def start(self) -> None:
        """Place the request (affinity, else least-loaded) and send it."""
        request, lane = self.request, self.lane
        request.notifyFinish().addErrback(self._client_lost)
        headers = {
            name.decode("latin-1").lower(): b", ".join(values).decode("latin-1")
            for name, values in request.requestHeaders.getAllRawHeaders()
        }
        if "cookie" in headers:
            cookies = request.requestHeaders.getRawHeaders(b"cookie", [])
            headers["cookie"] = b"; ".join(cookies).decode("latin-1")  # any byte, no 500
        affinity = lane.affinity
        placement = affinity.place(lane.pool, headers, self.target, self.peer)
        if placement.forged:
            _log.info("affinity cookie from {peer} does not verify; placed anew", peer=self.peer)
        backend = placement.backend or lane.pool.pick()
        if backend is None:
            self._answer(503, "no backend available", f"no usable backend in pool {lane.name}")
            return
        if affinity.mode == "cookie":
            nonce = placement.nonce
            if placement.backend is not backend or nonce is None:
                nonce = self.new_pin = new_nonce()
                is_tls = ISSLTransport.providedBy(request.channel.transport)
                cookie = affinity.set_cookie(backend.id, nonce, is_tls)
                request.responseHeaders.addRawHeader(b"set-cookie", cookie.encode("latin-1"))
            affinity.touch(nonce, backend)
        self._send(backend, headers)

    def _send(self, backend: BackendState, headers: dict[str, str]) -> None:
        lane, request = self.lane, self.request
        self.backend = backend
        self.tried.append(backend.id)
        lane.pool.request_started(backend, self.counted)
        url = backend_http_url(backend.config.url, self.target)
        out = backend_headers(request, lane, self.peer, headers)
        body = request_body(request)
        agent = backend_agent(self.balancer.reactor, lane)
        self.pending = agent.request(request.method, url.encode("latin-1"), out, body)
        self.timer = self.balancer.clock.callLater(lane.config.http_timeout, self._timed_out)
        self.pending.addCallbacks(self._got_response, self._failed)

    def _timed_out(self) -> None:
        self.timer = None
        if self.pending is not None:
            self.timed_out = True
            self.pending.cancel()
        elif self.body is not None:  # the backend stopped writing in the middle of a body
            _log.warn(
                "HTTP {target} from {peer}: backend {backend} stalled mid-response; closed",
                target=self.target,
                peer=self.peer,
                backend=self.backend.id if self.backend else "-",
            )
            self.body.stop()
            channel_transport(self.request.channel).loseConnection()

    def _got_response(self, response: Any) -> None:
        self.pending = None
        self._cancel_timer()
        if self.client_gone:
            response.deliverBody(Discard())
            self._end(failed=False)
            return
        request = self.request
        request.setResponseCode(response.code, response.phrase)
        # Twisted's client keeps Connection and the other connection-control headers out of
        # `response.headers`; the rest of the hop-by-hop set is dropped here. (Headers a
        # backend names in its Connection header cannot be seen, so they pass.)
        for name, values in response.headers.getAllRawHeaders():
            if name.lower().decode("latin-1") in HOP_BY_HOP:
                continue
            # set, not add: the backend's Server and Date replace twisted.web's defaults
            request.responseHeaders.setRawHeaders(name, values)
        if request.method == b"HEAD" or response.code in (204, 304):
            response.deliverBody(Discard())
            self._end(failed=False)
            request.finish()
            return
        self.body = BodyRelay(self)
        self.timer = self.balancer.clock.callLater(self.lane.config.http_timeout, self._timed_out)
        response.deliverBody(self.body)

    def _failed(self, failure: Any) -> None:
        self.pending = None
        self._cancel_timer()
        backend = self.backend
        backend_id = backend.id if backend else "-"
        if self.client_gone:
            self._end(failed=False)
            return
        if self.timed_out:
            self._end(failed=True)
            seconds = f"{self.lane.config.http_timeout:g}"
            self._answer(
                504,
                f"backend did not answer within {seconds}s",
                f"backend {backend_id} did not answer within {seconds}s",
            )
            return
        reason = describe_failure(failure)
        self._end(failed=True)
        if failure.check(ConnectError, DNSLookupError):
            # Nothing was sent: another backend may take it (a pinned one is re-pinned
            # by the next request's cookie check, since this one now counts a failure).
            nxt = self.lane.pool.pick(exclude=self.tried)
            if nxt is not None:
                _log.warn(
                    "HTTP {target}: backend {backend} unreachable ({reason}); trying {next}",
                    target=self.target,
                    backend=backend_id,
                    reason=reason,
                    next=nxt.id,
                )
                self.done = False
                self._repin(nxt)
                headers = {
                    n.decode("latin-1").lower(): b", ".join(v).decode("latin-1")
                    for n, v in self.request.requestHeaders.getAllRawHeaders()
                }
                self._send(nxt, headers)
                return
        self._answer(502, "backend failed", f"backend {backend_id} failed: {reason}")

    def _repin(self, backend: BackendState) -> None:
        affinity = self.lane.affinity
        if affinity.mode != "cookie":
            return
        affinity.release(self.new_pin)
        nonce = self.new_pin = new_nonce()
        is_tls = ISSLTransport.providedBy(self.request.channel.transport)
        cookie = affinity.set_cookie(backend.id, nonce, is_tls)
        self.request.responseHeaders.setRawHeaders(b"set-cookie", [cookie.encode("latin-1")])
        affinity.touch(nonce, backend)

    def _answer(self, code: int, text: str, detail: str) -> None:
        _log.warn(
            "HTTP {method} {target} from {peer}: {code} {detail}",
            method=self.request.method.decode("latin-1"),
            target=self.target,
            peer=self.peer,
            code=code,
            detail=detail,
        )
        request = self.request
        # No pin to a failed backend: the cookie is not sent, so its count goes too.
        request.responseHeaders.removeHeader(b"set-cookie")
        self.lane.affinity.release(self.new_pin)
        request.write(error_body(request, code, text))
        request.finish()

    def body_done(self, reason: Any) -> None:
        """The backend's body ended (completely, or cut off)."""
        self._cancel_timer()
        self.body = None
        complete = reason.check(ResponseDone, PotentialDataLoss)
        self._end(failed=False)
        if self.client_gone:
            return
        if complete:
            self.request.finish()
        else:
            # The status line is out: cutting the connection is the only way to say so.
            _log.warn(
                "HTTP {target} from {peer}: backend {backend} cut the response: {reason}",
                target=self.target,
                peer=self.peer,
                backend=self.backend.id if self.backend else "-",
                reason=describe_failure(reason),
            )
            channel_transport(self.request.channel).loseConnection()

    def body_progress(self) -> None:
        """A chunk of the body arrived: the stall timer starts again."""
        if self.timer is not None:
            self.timer.reset(self.lane.config.http_timeout)

    def _client_lost(self, failure: Any) -> None:
        self.client_gone = True
        self._cancel_timer()
        if self.pending is not None:
            self.pending.cancel()
        if self.body is not None:
            self.body.stop()

    def _cancel_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def _end(self, failed: bool) -> None:
        # Exactly once per backend tried: the in-flight count goes back down.
        if self.done or self.backend is None:
            return
        self.done = True
        self.lane.pool.request_ended(self.backend, failed, self.counted)
        if self.backend.removed:
            self.balancer.backend_idle(self.backend)
