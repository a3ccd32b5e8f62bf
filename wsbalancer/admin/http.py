"""The admin site's HTTP layer: what is checked on a request's head, before its body is read.

twisted.web reads a whole request body (into a temporary file past 100 kB) before a resource
sees the request. Here `AdminRequest.gotLength`, called once the headers are in, answers at
once, without reading the body, when:

- the Host is not one the admin site answers to: 400 (`admin.allowed_hosts`; DNS rebinding);
- a body is announced and the caller has no valid bearer token: 401 (403 with no
  `admin.token` configured; the API takes no change then anyway);
- the declared Content-Length is over 64 KiB: 413;
- a body is announced that is not `application/json`: 415.

A chunked body is counted as it comes and cut at 64 KiB (413). After such an answer the
connection is closed: the response is sent, then the sending side is shut, and what the
client still sends is read and dropped for a little while (so its TCP stack does not throw
our answer away on a reset), then the connection is aborted.

Hosts: rebinding points a name the attacker controls at a loopback or private address, so the
defence is the name in the Host header. Any IP literal is allowed (Kubernetes probes and
Prometheus scrapes send the pod IP), as are `localhost` (and `*.localhost`), this machine's
host name and the names in `admin.allowed_hosts` (`*` allows every Host). Over a Unix socket
(the worker processes' admin sockets) no browser can be the caller, and the Host is not
checked.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from collections.abc import Sequence
from io import BytesIO
from typing import Any

from twisted.internet.address import UNIXAddress
from twisted.internet.interfaces import ISSLTransport, ITCPTransport
from twisted.web import http
from twisted.web.http import RESPONSES, HTTPChannel
from twisted.web.http_headers import Headers
from twisted.web.server import Request, Site

from wsbalancer.admin.api_requests import JSON_ONLY, MAX_BODY, bearer_token_ok, is_json_type
from wsbalancer.config import Config
from wsbalancer.observe.logs import logger

_log = logger("wsbalancer.admin")
access_log = logger("wsbalancer.admin.access")

# After a refusal, what the client goes on sending is dropped for this long or this much,
# then the connection is aborted.
LINGER_SECONDS = 2.0
LINGER_BYTES = 1024 * 1024

_HOST_HEADER = re.compile(r"(?:\[(?P<v6>[0-9a-f:.]+)\]|(?P<name>[^:\[\]]*))(?::[0-9]{1,5})?")


def host_name(value: bytes) -> str | None:
    """The host of a Host header value, lower-cased, without port or trailing dot; None when
    the value is not a host[:port]."""
    match = _HOST_HEADER.fullmatch(value.decode("latin-1").strip().lower())
    if match is None:
        return None
    if match["v6"] is not None:
        return match["v6"]
    name = match["name"].removesuffix(".")
    return name or None


def host_allowed(host: str, patterns: tuple[str, ...], own_names: frozenset[str]) -> bool:
    """Whether the admin site answers a request for `host` (see the module's docstring)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    if host == "localhost" or host.endswith(".localhost") or host in own_names:
        return True
    for pattern in patterns:
        if pattern == "*" or host == pattern:
            return True
        if pattern.startswith(".") and (host == pattern[1:] or host.endswith(pattern)):
            return True
    return False


def head_refusal(
    config: Config,
    headers: Headers,
    length: int | None,
    own_names: frozenset[str],
    check_host: bool = True,
) -> tuple[int, str, str] | None:
    """What a request head is answered without reading on, as (status, error, reason), or
    None to go on. `length` is the declared Content-Length, None for a chunked body."""
    if check_host:
        hosts = headers.getRawHeaders(b"host") or []
        if len(hosts) > 1:
            return 400, "bad_host", "more than one Host header"
        if hosts:
            host = host_name(hosts[0])
            if host is None:
                return 400, "bad_host", "the Host header is not a host[:port]"
            if not host_allowed(host, config.admin_allowed_hosts, own_names):
                return (
                    400,
                    "host_not_allowed",
                    f"Host {host[:100]!r} is not one this admin site answers "
                    "(add it to admin.allowed_hosts)",
                )
    if length == 0:
        return None
    token = config.admin_token
    if not token:
        return 403, "forbidden", "the admin site reads no request body until admin.token is set"
    if not bearer_token_ok(headers.getRawHeaders(b"authorization", [None])[0], token):
        return 401, "unauthorized", "a valid bearer token is required to send a request body"
    if length is not None and length > MAX_BODY:
        return 413, "body_too_large", f"request body over {MAX_BODY} bytes"
    if not is_json_type(headers.getRawHeaders(b"content-type", [None])[0]):
        return 415, "unsupported_media_type", JSON_ONLY
    return None


def _peer(channel: Any) -> str:
    peer = channel.transport.getPeer() if channel.transport is not None else None
    return str(getattr(peer, "host", None) or "unix")


class AdminChannel(HTTPChannel):
    """An HTTP channel that can answer a request early and close: after `refuse`, nothing
    the client sends is parsed again."""

    site: AdminSite  # (Site.buildProtocol sets it)
    closing = False
    dropped = 0
    linger: Any = None

    def refuse(self, status: int, error: str, reason: str) -> None:
        """Answer `status` with a JSON error, then close (see the module's docstring)."""
        if self.closing:
            return
        self.closing = True
        body = json.dumps({"error": error, "reason": reason}).encode() + b"\n"
        headers = Headers(
            {
                b"content-type": [b"application/json"],
                b"cache-control": [b"no-store"],
                b"content-length": [b"%d" % len(body)],
                b"connection": [b"close"],
            }
        )
        if status == 401:
            headers.setRawHeaders(b"www-authenticate", [b'Bearer realm="wsbalancer"'])
        self.writeHeaders(b"HTTP/1.1", b"%d" % status, RESPONSES.get(status, b"Error"), headers)
        self.write(body)
        transport: Any = self.transport
        if ITCPTransport.providedBy(transport) and not ISSLTransport.providedBy(transport):
            transport.loseWriteConnection()  # FIN after the answer; reading goes on
            self.linger = self.callLater(LINGER_SECONDS, transport.abortConnection)
        else:
            self.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            self.dropped += len(data)
            if self.dropped > LINGER_BYTES:
                self.transport.abortConnection()  # type: ignore[union-attr]
            return
        super().dataReceived(data)

    def _respondToBadRequestAndDisconnect(self) -> None:
        # A malformed chunk in what arrived with a refused head: answered already.
        if not self.closing:
            super()._respondToBadRequestAndDisconnect()

    def connectionLost(self, reason: Any = None) -> None:
        if self.linger is not None and self.linger.active():
            self.linger.cancel()
        super().connectionLost(reason)


class AdminRequest(Request):
    """A request of the admin site: its head is checked before any of its body is read, and
    the body is held in memory, at most `MAX_BODY` bytes of it."""

    channel: AdminChannel
    refused = False
    received = 0

    def gotLength(self, length: int | None) -> None:
        self.content = BytesIO()  # never more than MAX_BODY: no temporary file
        channel = self.channel
        site = channel.site
        transport: Any = channel.transport
        refusal = head_refusal(
            site.balancer.config,
            self.requestHeaders,
            length,
            site.own_names,
            check_host=not isinstance(transport.getHost(), UNIXAddress),
        )
        if refusal is not None:
            self._refuse(*refusal)

    def handleContentChunk(self, data: bytes) -> None:
        if self.refused:
            return
        self.received += len(data)
        if self.received > MAX_BODY:
            self._refuse(413, "body_too_large", f"request body over {MAX_BODY} bytes")
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self.refused:  # answered from its head: no resource sees it
            return
        super().requestReceived(command, path, version)

    def _refuse(self, status: int, error: str, reason: str) -> None:
        self.refused = True
        # (Twisted would send "100 Continue" after our answer otherwise.)
        self.requestHeaders.removeHeader(b"expect")
        _log.info(
            "admin request from {peer} refused: {status} {reason}",
            peer=_peer(self.channel),
            status=status,
            reason=reason,
        )
        self.channel.refuse(status, error, reason)


class AdminSite(Site):
    """The admin site: `AdminChannel`s and `AdminRequest`s, with the balancer whose config
    (token, allowed hosts) they check against."""

    protocol = AdminChannel  # type: ignore[assignment]

    def __init__(self, resource: Any, balancer: Any, quiet_paths: Sequence[str] = ()) -> None:
        super().__init__(resource, requestFactory=AdminRequest)
        self.balancer = balancer
        self.quiet_paths = {p.encode() for p in quiet_paths}
        self.own_names = frozenset({socket.gethostname().lower().rstrip(".")})

    def log(self, request: http.Request) -> None:
        """One access line per request through wsbalancer's log, as `log.admin_access`
        asks (`quiet`: not for probes and scrapes, `all`, `off`)."""
        mode = self.balancer.config.log_admin_access
        if mode == "off" or (mode == "quiet" and request.path in self.quiet_paths):
            return
        peer = request.getClientAddress()
        access_log.info(
            '{peer} "{method} {uri}" {status} {bytes} "{agent}"',
            peer=getattr(peer, "host", None) or "unix",
            method=request.method.decode("latin-1"),
            uri=request.uri.decode("latin-1"),
            status=request.code,
            bytes=request.sentLength,
            agent=(request.getHeader(b"user-agent") or b"-").decode("latin-1"),
        )
