"""The client side of a plain-HTTP connection (`relay.httpproxy`): how long a client may
take, and how much it may send, before the proxy answers it itself.

`ProxyChannel` is twisted.web's HTTP channel with a deadline per phase of the connection
(request head, body at a minimum rate, keep-alive idle; the slowloris defence), the cap on
open HTTP connections, and answers that say what was wrong with a bad head (431, 400).
`BoundedChunkedDecoder` and `LimitedRequest` bound a request's body, chunked or not (413,
an impossible chunk size 400). Nothing here knows pools or backends: what it needs of the
balancer (its config, its body limit, its counters) it reads through the site.
"""

from __future__ import annotations

from http import HTTPStatus
from io import BytesIO
from typing import Any

from twisted.protocols.basic import LineReceiver
from twisted.web.http import HTTPChannel, _ChunkedTransferDecoder, _MalformedChunkedDataError
from twisted.web.server import Request

from wsbalancer.observe.logs import logger

_log = logger("wsbalancer.http")


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
        # The balancer's Config: read through the site (typed Any), so that this module
        # imports nothing of the config and relay modules above it.
        config = site.balancer.config
        self.head_timeout = config.http_head_timeout
        self.body_timeout = config.http_body_timeout
        self.body_min_rate = config.http_body_min_rate
        self.keepalive_timeout = config.http_keepalive_timeout
        cap = config.max_http_connections
        if cap and site.open_channels >= cap:
            self.refused = True
            _log.info(
                "HTTP connection from {peer} refused: 503 over {cap} HTTP connections",
                peer=channel_peer(self),
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
        _log.info(
            "HTTP request from {peer} timed out: 408 {text}", peer=channel_peer(self), text=text
        )
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
            peer=channel_peer(self),
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
            peer=channel_peer(self.channel),
            size=size,
            limit=self._limit(),
        )
        channel_transport(self.channel).write(_raw_response(413, "request body too large"))

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self.too_large:  # answered already; the body has been read, so close cleanly
            channel_transport(self.channel).loseConnection()
            return
        super().requestReceived(command, path, version)


def channel_transport(channel: Any) -> Any:
    """A channel's transport, untyped (twisted.web's stubs give it no write/loseConnection)."""
    return channel.transport


def channel_peer(channel: Any) -> str:
    """The client's host as logs name it ("unix" over a Unix socket)."""
    transport = getattr(channel, "transport", None)
    peer = transport.getPeer() if transport is not None else None
    return getattr(peer, "host", None) or "unix"
