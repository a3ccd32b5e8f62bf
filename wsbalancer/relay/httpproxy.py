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
"""

from __future__ import annotations

from http import HTTPStatus
from io import BytesIO
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from twisted.internet import defer
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.protocols.basic import LineReceiver
from twisted.web.client import (
    Agent,
    FileBodyProducer,
    HTTPConnectionPool,
    ResponseDone,
    ResponseNeverReceived,
    _HTTP11ClientFactory,
)
from twisted.web.http import (
    HTTPChannel,
    PotentialDataLoss,
    _ChunkedTransferDecoder,
    _MalformedChunkedDataError,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from wsbalancer.config import Config, PoolConfig
from wsbalancer.observe.logs import logger
from wsbalancer.upstream.affinity import new_nonce, strip_cookie
from wsbalancer.upstream.dialer import backend_resource, tls_options
from wsbalancer.wire.headers import backend_request_headers

if TYPE_CHECKING:
    from wsbalancer.relay.balancer import Balancer
    from wsbalancer.upstream.pool import BackendState
    from wsbalancer.upstream.routing import Lane

_log = logger("wsbalancer.http")

# Headers of one hop (RFC 9110 7.6.1): never forwarded in either direction.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Not passed to the backend: the agent writes them (Host, Content-Length) or we do (X-F-*).
_REQUEST_DROPPED = HOP_BY_HOP | {
    "host",
    "content-length",
    "expect",  # the body is here already (twisted.web answered any 100-continue)
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
}
# What a body is cannot be left out by a `headers.forward` list written for handshakes.
_REQUEST_ALWAYS = frozenset({"content-type", "content-encoding"})
_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH", b"DELETE"})


def proxy_site(balancer: Balancer) -> Site:
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


def _raw_response(code: int, text: str) -> bytes:
    body = (text + "\n").encode("utf-8", "replace")
    head = (
        f"HTTP/1.1 {code} {HTTPStatus(code).phrase}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


# What a client connection is waiting for, and so which deadline runs (`ProxyChannel`).
HEAD = "head"  # a request head: `timeouts.http_head` from its first byte
BODY = "body"  # its body: `timeouts.http_body`, a second more per `http_body_min_rate` bytes
BUSY = "busy"  # the response: the backend's `http.timeout` applies, not the client's
IDLE = "keepalive"  # the next request: `timeouts.http_keepalive`, then closed
# Chunk sizes are 64-bit at most anywhere; a larger one is an attack or garbage.
MAX_CHUNK_SIZE = 2**63 - 1


class ProxyChannel(HTTPChannel):
    """twisted.web's HTTP channel with the proxy's answers to bad and slow clients.

    A head over `limits.max_header_bytes` gets 431, a malformed one (an impossible chunk
    size too) 400; a request head that takes longer than `timeouts.http_head`, or a body
    that falls behind its deadline, gets 408; a keep-alive connection idle for
    `timeouts.http_keepalive` is closed; past `limits.max_http_connections` open ones, a
    new connection gets 503. Each is logged once and counted. Twisted's own idle timer
    (reset by every byte, so a client sending one byte a second is never timed out) is off.
    """

    site: Any  # the proxy site (Site.buildProtocol sets it)
    phase = HEAD
    deadline: Any = None  # the delayed call of the running deadline
    body_deadline = 0.0
    counted = False  # holds one of the site's `open_channels`
    refused = False  # answered 503 at once: nothing it sends is read
    closing = False  # answered (or timed out) and closing: no deadline runs again
    refusal: tuple[int, str, str] | None = None  # what a bad request is answered (not 400)

    def connectionMade(self) -> None:
        site = self.site
        config: Config = site.balancer.config
        self.head_timeout = config.http_head_timeout
        self.body_timeout = config.http_body_timeout
        self.body_min_rate = config.http_body_min_rate
        self.keepalive_timeout = config.http_keepalive_timeout
        cap = config.max_http_connections
        if cap and site.open_channels >= cap:
            self.refused = True
            _log.info(
                "HTTP connection from {peer} refused: 503 over {cap} HTTP connections",
                peer=_peer(self),
                cap=cap,
            )
            _count_refused(self, "connections")
            transport: Any = self.transport
            transport.write(_raw_response(503, "too many HTTP connections"))
            transport.loseConnection()
            return
        site.open_channels += 1
        self.counted = True
        super().connectionMade()
        self._wait(HEAD, self.head_timeout)

    def connectionLost(self, reason: Any = None) -> None:
        self._cancel_deadline()
        if self.counted:
            self.counted = False
            self.site.open_channels -= 1
        super().connectionLost(reason)

    def dataReceived(self, data: bytes) -> None:
        if self.refused:
            return
        if self.phase == IDLE:
            self._wait(HEAD, self.head_timeout)  # the first byte of the next request
        elif self.phase == BODY and self.body_min_rate:
            self.body_deadline += len(data) / self.body_min_rate
        # (not HTTPChannel.dataReceived: its timer would start again with every byte)
        LineReceiver.dataReceived(self, data)

    def allHeadersReceived(self) -> None:
        super().allHeadersReceived()
        if self.length != 0 and not self.closing:  # a body follows (None: chunked)
            self._wait(BODY, self.body_timeout)
            self.body_deadline = self.site.reactor.seconds() + self.body_timeout

    def allContentReceived(self) -> None:
        self._wait(BUSY, 0)
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        super().requestDone(request)
        if self.persistent and not self.closing and self.phase == BUSY:
            # What was pipelined behind the answered request has been parsed now: another
            # request being answered, or the body of one (its deadline runs), or part of a
            # head, or nothing yet.
            if self._handlingRequest:
                return
            if self.requests or self._buffer:
                self._wait(HEAD, self.head_timeout)
            else:
                self._wait(IDLE, self.keepalive_timeout)

    def _maybeChooseTransferDecoder(self, header: bytes, data: bytes) -> bool:
        ok = super()._maybeChooseTransferDecoder(header, data)
        decoder = self._transferDecoder
        if ok and type(decoder) is _ChunkedTransferDecoder:
            self._transferDecoder = BoundedChunkedDecoder(
                decoder.dataCallback,
                decoder.finishCallback,
                self.site.balancer.http_body_limit(),
                self,
            )
        return ok

    def _wait(self, phase: str, seconds: float) -> None:
        self.phase = phase
        self._cancel_deadline()
        if seconds > 0:
            self.deadline = self.callLater(seconds, self._deadline_passed)

    def _cancel_deadline(self) -> None:
        if self.deadline is not None and self.deadline.active():
            self.deadline.cancel()
        self.deadline = None

    def _deadline_passed(self) -> None:
        self.deadline = None
        phase = self.phase
        if phase == BODY:
            left = self.body_deadline - self.site.reactor.seconds()
            if left > 0:  # the body came at the minimum rate meanwhile
                self.deadline = self.callLater(left, self._deadline_passed)
                return
        self.site.balancer.metrics.http_timeouts.labels(phase).inc()
        request = self.requests[-1] if self.requests else None
        if phase == IDLE or getattr(request, "too_large", False):
            # Nothing is owed (idle), or the answer (413) is out already: just close.
            self._close()
            return
        text = (
            f"request head not received within {self.head_timeout:g}s"
            if phase == HEAD
            else "request body not received in time"
        )
        _log.info("HTTP request from {peer} timed out: 408 {text}", peer=_peer(self), text=text)
        transport: Any = self.transport
        transport.write(_raw_response(408, text))
        self._close()

    def _close(self) -> None:
        # A client that does not read cannot keep the connection by leaving the last
        # answer unsent: it is cut off after Twisted's abort timeout.
        self.closing = True
        self._wait(BUSY, 0)
        self.dataReceived = lambda data: None  # type: ignore[method-assign]
        if self._abortingCall is None and self.abortTimeout is not None:
            self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)
        self.loseConnection()

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Twisted answers every bad head with a bare 400; say what was wrong.
        too_large = getattr(self, "_receivedHeaderSize", 0) > self.totalHeadersSize
        if self.refusal is not None:
            code, text, reason = self.refusal
        elif too_large:
            code, text, reason = 431, "request header fields too large", "header_too_large"
        else:
            code, text, reason = 400, "malformed request", "malformed"
        _log.info(
            "HTTP request from {peer} refused: {code} {text}",
            peer=_peer(self),
            code=code,
            text=text,
        )
        _count_refused(self, reason)
        transport: Any = self.transport
        transport.write(_raw_response(code, text))
        self._close()


class BoundedChunkedDecoder(_ChunkedTransferDecoder):
    """Twisted's chunked-body decoder, refusing a chunk size at once when it is out of
    range (400) or would take the body past the largest `http.max_body` (413), instead of
    waiting for bytes that never come (RFC 9112 7.1: guard against overflow)."""

    def __init__(self, data: Any, finish: Any, limit: int, channel: ProxyChannel) -> None:
        super().__init__(data, finish)
        self.limit = limit
        self.channel = channel
        self.declared = 0

    def _dataReceived_CHUNK_LENGTH(self) -> bool:
        if not super()._dataReceived_CHUNK_LENGTH():
            return False
        self.declared += self.length
        if self.length > MAX_CHUNK_SIZE:
            self.channel.refusal = (400, "chunk size out of range", "malformed")
        elif self.declared > self.limit:
            self.channel.refusal = (413, "request body too large", "body_too_large")
        else:
            return True
        raise _MalformedChunkedDataError(self.channel.refusal[1])


def _count_refused(channel: Any, reason: str) -> None:
    channel.site.balancer.metrics.http_refused.labels(reason).inc()


class LimitedRequest(Request):
    """A request whose body is bounded: over the limit the client gets 413 at once, the
    rest of the body is read and dropped, and the connection closes."""

    too_large = False
    received = 0

    def _limit(self) -> int:
        channel: Any = self.channel
        return int(channel.site.balancer.http_body_limit())

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self._limit():
            self._refuse(length)
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.too_large:
            return
        self.received += len(data)
        if self.received > self._limit():
            self._refuse(self.received)
            return
        super().handleContentChunk(data)

    def _refuse(self, size: int) -> None:
        self.too_large = True
        self.content = BytesIO()
        _count_refused(self.channel, "body_too_large")
        _log.info(
            "HTTP request from {peer} refused: 413 body of {size} bytes is over {limit}",
            peer=_peer(self.channel),
            size=size,
            limit=self._limit(),
        )
        _transport(self.channel).write(_raw_response(413, "request body too large"))

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self.too_large:  # answered already; the body has been read, so close cleanly
            _transport(self.channel).loseConnection()
            return
        super().requestReceived(command, path, version)


class ProxyResource(Resource):
    """Routes each request to its pool and relays it there."""

    isLeaf = True

    def __init__(self, balancer: Balancer) -> None:
        super().__init__()
        self.balancer = balancer

    def render(self, request: Request) -> Any:
        target = request.uri.decode("latin-1")
        host = (request.getHeader(b"host") or b"").decode("latin-1")
        lane = self.balancer.route(target, host)
        peer = _peer(request.channel)
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

    def __init__(self, balancer: Balancer, lane: Lane, request: Request) -> None:
        self.balancer = balancer
        self.lane = lane
        self.request = request
        self.peer = _peer(request.channel)
        self.target = request.uri.decode("latin-1")
        self.backend: BackendState | None = None
        self.pending: defer.Deferred[Any] | None = None
        self.timer: Any = None
        self.body: _BodyRelay | None = None
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
        url = _http_url(backend.config.url, self.target)
        out = Headers()
        raw = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, values in request.requestHeaders.getAllRawHeaders()
            for value in values
        ]
        connection_named = {
            token.strip().lower() for token in headers.get("connection", "").split(",")
        }
        cookie_name = lane.affinity.cookie_name if lane.affinity.mode == "cookie" else None
        is_tls = ISSLTransport.providedBy(request.channel.transport)
        for name, value in backend_request_headers(
            raw,
            lane.config,
            self.peer,
            is_tls,
            dropped=_REQUEST_DROPPED | connection_named,
            always=_REQUEST_ALWAYS,
        ).items():
            if cookie_name and name.lower() == "cookie":
                value = strip_cookie(value, cookie_name)
                if not value:
                    continue
            out.addRawHeader(name.encode("latin-1"), value.encode("latin-1"))
        body = None
        content: Any = request.content
        if request.method in _BODY_METHODS or content.seek(0, 2):
            content.seek(0)
            body = FileBodyProducer(content)
        agent = _agent(self.balancer, lane)
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
            _transport(self.request.channel).loseConnection()

    def _got_response(self, response: Any) -> None:
        self.pending = None
        self._cancel_timer()
        if self.client_gone:
            response.deliverBody(_Discard())
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
            response.deliverBody(_Discard())
            self._end(failed=False)
            request.finish()
            return
        self.body = _BodyRelay(self)
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
        reason = _describe(failure)
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
                reason=_describe(reason),
            )
            _transport(self.request.channel).loseConnection()

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


class _BodyRelay(Protocol):
    """Streams a backend response body to the client, paced by the client's buffer."""

    def __init__(self, exchange: ProxiedRequest) -> None:
        self.exchange = exchange
        self.registered = False

    def connectionMade(self) -> None:
        request = self.exchange.request
        if self.transport is not None and not self.exchange.client_gone:
            try:
                request.registerProducer(self.transport, True)
                self.registered = True
            except RuntimeError:
                pass  # something else produces for this request already

    def dataReceived(self, data: bytes) -> None:
        exchange = self.exchange
        if not exchange.client_gone:
            exchange.body_progress()
            exchange.request.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        if self.registered and not self.exchange.client_gone:
            self.exchange.request.unregisterProducer()
            self.registered = False
        self.exchange.body_done(reason)

    def stop(self) -> None:
        """Stop reading the backend's body (the client went away or it stalled)."""
        transport: Any = self.transport
        if transport is not None:
            transport.stopProducing()


class _Discard(Protocol):
    def connectionLost(self, reason: Any = None) -> None:
        pass


class _QuietHTTPFactory(_HTTP11ClientFactory):
    noisy = False  # a "starting factory" line per backend connection would flood the log


@implementer(IPolicyForHTTPS)
class _BackendTLSPolicy:
    """TLS for https:// backends with the pool's verification rules."""

    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        self._by_host: dict[str, Any] = {}

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        host = hostname.decode("ascii")
        if host not in self._by_host:
            self._by_host[host] = tls_options(host, self.config)
        return self._by_host[host]


def _agent(balancer: Balancer, lane: Lane) -> Agent:
    if lane.http_agent is None:
        pool = HTTPConnectionPool(balancer.reactor, persistent=True)
        pool._factory = _QuietHTTPFactory
        pool.maxPersistentPerHost = 16
        pool.retryAutomatically = False  # a request is not sent twice behind the client's back
        lane.http_agent = Agent(
            balancer.reactor,
            contextFactory=_BackendTLSPolicy(lane.config),
            pool=pool,
            connectTimeout=lane.config.backend_connect_timeout,
        )
    return lane.http_agent  # type: ignore[no-any-return]


def _http_url(backend_url: str, target: str) -> str:
    parts = urlsplit(backend_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    resource = backend_resource(backend_url, target)
    path, _, query = resource.partition("?")
    return urlunsplit((scheme, parts.netloc, path, query, ""))


def _transport(channel: Any) -> Any:
    return channel.transport


def _peer(channel: Any) -> str:
    transport = getattr(channel, "transport", None)
    peer = transport.getPeer() if transport is not None else None
    return getattr(peer, "host", None) or "unix"


def _describe(failure: Any) -> str:
    error = failure.value
    if isinstance(error, ResponseNeverReceived) and error.reasons:
        error = error.reasons[0].value
    return str(error).strip() or type(error).__name__
