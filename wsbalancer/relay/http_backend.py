"""The backend side of a proxied plain-HTTP request (`relay.httpproxy`): what a backend is
sent, over which client, and how its response body is read.

Hop-by-hop headers never cross (RFC 9110 7.6.1), nor the client's affinity cookie;
X-Forwarded-For/-Proto/-Host are written anew. Each pool gets one Twisted `Agent` with a
persistent connection pool and the pool's TLS verification rules, and no automatic retry.
A response body streams to the client chunk by chunk, the client's write buffer pausing
the backend's reads. Nothing here picks a backend or answers the client: that is
`ProxiedRequest`'s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from typing import Protocol as TypingProtocol
from urllib.parse import urlsplit, urlunsplit

from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.web.client import (
    Agent,
    FileBodyProducer,
    HTTPConnectionPool,
    ResponseNeverReceived,
    _HTTP11ClientFactory,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS
from twisted.web.server import Request
from zope.interface import implementer

from wsbalancer.upstream.affinity import strip_cookie
from wsbalancer.upstream.dialer import backend_resource, tls_options
from wsbalancer.wire.headers import backend_request_headers

if TYPE_CHECKING:
    from wsbalancer.config import PoolConfig
    from wsbalancer.upstream.routing import Lane

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


def backend_headers(request: Request, lane: Lane, peer: str, headers: dict[str, str]) -> Headers:
    """The headers `request` is sent to a backend of `lane` with (`headers`: the client's,
    by lower-case name, for the names its Connection header lists)."""
    out = Headers()
    raw = [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, values in request.requestHeaders.getAllRawHeaders()
        for value in values
    ]
    connection_named = {token.strip().lower() for token in headers.get("connection", "").split(",")}
    cookie_name = lane.affinity.cookie_name if lane.affinity.mode == "cookie" else None
    is_tls = ISSLTransport.providedBy(request.channel.transport)
    for name, value in backend_request_headers(
        raw,
        lane.config,
        peer,
        is_tls,
        dropped=_REQUEST_DROPPED | connection_named,
        always=_REQUEST_ALWAYS,
    ).items():
        if cookie_name and name.lower() == "cookie":
            value = strip_cookie(value, cookie_name)
            if not value:
                continue
        out.addRawHeader(name.encode("latin-1"), value.encode("latin-1"))
    return out


def request_body(request: Request) -> FileBodyProducer | None:
    """The request's body for the agent, or None when it has none to send."""
    content: Any = request.content
    if request.method in _BODY_METHODS or content.seek(0, 2):
        content.seek(0)
        return FileBodyProducer(content)
    return None


class BodySink(TypingProtocol):
    """What `BodyRelay` streams to: the client's exchange (`ProxiedRequest`)."""

    request: Request
    client_gone: bool

    def body_progress(self) -> None: ...

    def body_done(self, reason: Any) -> None: ...


class BodyRelay(Protocol):
    """Streams a backend response body to the client, paced by the client's buffer."""

    def __init__(self, exchange: BodySink) -> None:
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


class Discard(Protocol):
    """Reads a response body nobody wants (the client left, or HEAD, 204, 304)."""

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


def backend_agent(reactor: Any, lane: Lane) -> Agent:
    """The pool's agent, built on first use (a reload drops it, for the new timeouts)."""
    if lane.http_agent is None:
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool._factory = _QuietHTTPFactory
        pool.maxPersistentPerHost = 16
        pool.retryAutomatically = False  # a request is not sent twice behind the client's back
        lane.http_agent = Agent(
            reactor,
            contextFactory=_BackendTLSPolicy(lane.config),
            pool=pool,
            connectTimeout=lane.config.backend_connect_timeout,
        )
    return lane.http_agent  # type: ignore[no-any-return]


def backend_http_url(backend_url: str, target: str) -> str:
    """The http(s):// URL of `target` on a backend known by its ws(s):// URL."""
    parts = urlsplit(backend_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    resource = backend_resource(backend_url, target)
    path, _, query = resource.partition("?")
    return urlunsplit((scheme, parts.netloc, path, query, ""))


def describe_failure(failure: Any) -> str:
    """A failure as a log line names it (the first reason of a response never received)."""
    error = failure.value
    if isinstance(error, ResponseNeverReceived) and error.reasons:
        error = error.reasons[0].value
    return str(error).strip() or type(error).__name__
