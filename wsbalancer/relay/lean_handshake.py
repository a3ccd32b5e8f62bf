"""The opening handshakes of both legs, on a fast path for the heads every check passes on.

A new session costs the balancer two Autobahn handshakes, each a generic path with futures,
option copies and a line-by-line parser. Here the client's request is read once
(`wire/handshake.py`), checked exactly as Autobahn and the relay check it, and carried to
the session; the backend's request is written from bytes, and its 101 is checked directly
against the key, the offers and the subprotocols the leg sent.

Nothing is decided differently. A head the fast path has any doubt about (a bad or unusual
line, a check that fails, an option that changes Autobahn's checks) is left to Autobahn's own
`processHandshake`, which answers it as before: the fast path only ever accepts what
Autobahn would accept, with the same outcome (`tests/test_lean_handshake.py` holds the two
side by side over a corpus of hostile heads).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs

import txaio
from autobahn.twisted.util import create_transport_details, peer2str
from autobahn.wamp.types import TransportDetails
from autobahn.websocket.compress import PERMESSAGE_COMPRESSION_EXTENSION
from autobahn.websocket.protocol import _is_same_origin, _url_to_origin
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet import tcp
from twisted.python.failure import Failure

from wsbalancer.observe.logs import logger
from wsbalancer.wire.handshake import (
    Pairs,
    accept_value,
    encode_head,
    has_token,
    header_map,
    new_key,
    parse_head,
    valid_key,
)
from wsbalancer.wire.headers import valid_host
from wsbalancer.wire.states import CONNECTING, OPEN

_log = logger("wsbalancer.relay")

# An origin-form target of visible ASCII only: Autobahn splits the request line on any
# whitespace (NBSP and NEL too), reads ";params" and "#fragment" apart, and refuses a
# fragment; a target with any of those goes its way.
_REQUEST_LINE = re.compile(r"GET (/[\x21-\x22\x24-\x3a\x3c-\x7e]*) HTTP/1\.1")
_SWITCHING = re.compile(r"HTTP/1\.1 101(?: [^\x00-\x1f\x7f]*)?")


# Plain TCP transports: no TLS channel details to take when the leg opens.
_PLAIN = (tcp.Server, tcp.Client)


class LeanSetup:
    """A new connection set up with only what differs from the legs' class attributes.

    Autobahn's `connectionMade` copies forty options onto the instance, sets some forty
    flags to their starting values, and makes transport details, traffic statistics and a
    UTF-8 validator for every connection. The legs' options are class attributes
    (`bake_options`) and their starting values too (`IdleState`), so a baked leg only
    takes its per-connection options, its state and its handshake timer here; a leg of a
    class that was not baked, or with an option that needs Autobahn's set-up, gets it."""

    lean_setup = False  # set on the classes bake_options makes
    per_connection: tuple[str, ...] = ()  # options copied from the factory per connection

    def __init__(self) -> None:
        # Autobahn's makes two futures, an event registry and empty transport details for
        # every connection: the legs have them as class attributes (IdleState), or make
        # them when first asked (`_transport_details`, `is_closed`).
        if not self.lean_setup:
            super().__init__()

    def connectionMade(self) -> None:
        leg: Any = self
        factory = leg.factory
        if not self.lean_setup or leg.trackTimings or getattr(factory, "proxy", None):
            super().connectionMade()  # type: ignore[misc]
            return
        transport = leg.transport
        leg.peer = peer2str(transport)
        try:
            transport.setTcpNoDelay(leg.tcpNoDelay)
        except Exception:  # as Autobahn: not every transport has one (Unix sockets)
            pass
        for name in self.per_connection:
            setattr(leg, name, getattr(factory, name))
        leg.state = CONNECTING
        if leg.openHandshakeTimeout > 0:
            leg.openHandshakeTimeoutCall = factory._batched_timer.call_later(
                leg.openHandshakeTimeout, leg.onOpenHandshakeTimeout
            )
        if factory.isServer:
            factory.countConnections += 1
        else:
            leg.startHandshake()

    @property
    def _transport_details(self) -> Any:
        # Made only when something asks (a TLS leg opening, Autobahn's own paths).
        leg: Any = self
        details = leg.__dict__.get("_transport_details")
        if details is None:
            details = create_transport_details(leg.transport, leg.is_server)
            details.channel_framing = TransportDetails.CHANNEL_FRAMING_WEBSOCKET
            leg.__dict__["_transport_details"] = details
        return details

    @_transport_details.setter
    def _transport_details(self, value: Any) -> None:
        self.__dict__["_transport_details"] = value

    def _onOpen(self) -> None:
        leg: Any = self
        if type(leg.transport) in _PLAIN:
            leg.onOpen()  # no TLS channel binding or peer certificate to take
        else:
            super()._onOpen()  # type: ignore[misc]


class LeanRequest(ConnectionRequest):
    """Autobahn's ConnectionRequest, its query parameters parsed only if read."""

    __slots__ = ("query",)

    def __init__(
        self,
        peer: str,
        headers: dict[str, str],
        host: str,
        path: str,
        query: str,
        origin: str,
        protocols: list[str],
        extensions: list[Any],
    ) -> None:
        self.peer = peer
        self.headers = headers
        self.host = host
        self.path = path
        self.query = query
        self.version = 13
        self.origin = origin
        self.protocols = protocols
        self.extensions = extensions

    @property  # type: ignore[override]
    def params(self) -> dict[str, list[str]]:
        return parse_qs(self.query)


class ClientRequest:
    """A client's upgrade request that every check passed on (`read_request`)."""

    __slots__ = ("head", "start", "target", "pairs", "headers", "host", "key")

    def __init__(self, head: bytes, start: str, target: str, pairs: Pairs) -> None:
        self.head = head
        self.start = start
        self.target = target
        self.pairs = pairs
        self.headers: dict[str, str] = {}
        self.host = ""
        self.key = ""


def read_request(leg: Any, head: bytes) -> tuple[ClientRequest, dict[str, int]] | None:
    """The request in `head` when Autobahn's and the relay's checks all pass on it and no
    option changes them; None sends it the slow way (which answers any error)."""
    parsed = parse_head(head)
    if parsed is None:
        return None
    start, pairs = parsed
    line = _REQUEST_LINE.fullmatch(start)
    if line is None or leg.maxConnections > 0 or leg.trustXForwardedFor:
        return None
    if line.group(1).startswith("//"):
        return None  # Autobahn's urlparse reads a network location in it
    headers, counts = header_map(pairs)
    host = headers.get("host")
    if host is None or counts["host"] != 1 or not valid_host(host):
        return None
    if not has_token(headers.get("upgrade"), "websocket"):
        return None
    if not has_token(headers.get("connection"), "upgrade"):
        return None
    if headers.get("sec-websocket-version") != "13" or counts["sec-websocket-version"] != 1:
        return None
    key = headers.get("sec-websocket-key")
    if key is None or counts["sec-websocket-key"] != 1 or not valid_key(key):
        return None
    if counts.get("sec-websocket-extensions", 0) > 1 or counts.get("origin", 0) > 1:
        return None
    request = ClientRequest(head, start, line.group(1), pairs)
    request.headers = headers
    request.host = host
    request.key = key
    return request, counts


def _origin_allowed(leg: Any, origin: str) -> bool:
    factory = leg.factory
    try:
        origin_tuple = _url_to_origin(origin)
        if origin_tuple == "null" and factory.allowNullOrigin:
            return True
        return bool(
            _is_same_origin(
                origin_tuple,
                "https" if factory.isSecure else "http",
                factory.externalPort or factory.port,
                leg.allowedOriginsPatterns,
            )
        )
    except Exception:
        return False  # Autobahn refuses it with its own words


class LeanServerHandshake:
    """The client leg's side: a checked request carried straight to `onConnect`."""

    request_pairs: Pairs | None = None  # the request's headers in order, for the session

    def open_request(self, request: ClientRequest, end: int) -> bool:
        """Finish Autobahn's checks that need the leg's options and hand the request to
        onConnect; False (nothing changed) when one of them would refuse it."""
        leg: Any = self
        headers = request.headers
        protocols: list[str] = []
        if "sec-websocket-protocol" in headers:
            protocols = [str(x.strip()) for x in headers["sec-websocket-protocol"].split(",")]
            if len(set(protocols)) != len(protocols):
                return False
        origin = headers.get("origin")
        if origin is not None:
            origin = origin.strip()
            if not _origin_allowed(leg, origin):
                return False
        extensions: list[Any] = []
        if "sec-websocket-extensions" in headers:
            try:
                extensions = leg._parseExtensionsHeader(headers["sec-websocket-extensions"])
            except Exception:
                return False
        if leg.factory.externalPort:
            return False  # Autobahn matches the Host port against it
        target = request.target
        path, _, query = target.partition("?")
        host = request.host.strip()
        if ":" in host and not host.endswith("]"):
            host = host.rsplit(":", 1)[0]
        leg.http_request_data = request.head
        leg.http_status_line = request.start
        leg.http_headers = headers
        leg.request_pairs = request.pairs
        leg.http_request_uri = target
        leg.http_request_path = path
        leg.http_request_host = host
        leg.websocket_version = 13
        leg.websocket_protocols = protocols
        leg.websocket_origin = origin or ""
        leg.websocket_extensions = extensions
        leg._wskey = request.key
        leg.data = leg.data[end + 4 :]
        connection = LeanRequest(
            leg.peer, headers, host, path, query, origin or "", protocols, extensions
        )
        try:
            answer = leg.onConnect(connection)
        except Exception:
            self._connect_failed(Failure())
            return True
        answer.addCallbacks(leg.succeedHandshake, self._connect_failed)
        return True

    def succeedHandshake(self, res: Any) -> None:
        """Autobahn's 101 to the client, in its words and order, written as one block."""
        leg: Any = self
        protocol, headers = (res + (None, None))[:2] if type(res) is tuple else (res, None)
        if protocol is not None and protocol not in leg.websocket_protocols:
            raise Exception("protocol accepted must be from the list client sent or None")
        leg.websocket_protocol_in_use = protocol
        offers = []
        for extension, params in leg.websocket_extensions:
            pmce: Any = PERMESSAGE_COMPRESSION_EXTENSION.get(extension)
            if pmce is not None:
                try:
                    offers.append(pmce["Offer"].parse(params))
                except Exception as e:
                    leg.failHandshake(str(e))
                    return
        agreed = None
        if offers:
            accept = leg.perMessageCompressionAccept(offers)
            if accept is not None:
                pmce = PERMESSAGE_COMPRESSION_EXTENSION[accept.EXTENSION_NAME]
                leg._perMessageCompress = pmce["PMCE"].create_from_offer_accept(True, accept)
                leg.websocket_extensions_in_use = [leg._perMessageCompress]
                agreed = accept.get_extension_string()
        factory = leg.factory
        lines = ["HTTP/1.1 101 Switching Protocols"]
        if factory.server:
            lines.append(f"Server: {factory.server}")
        lines.append("Upgrade: WebSocket\r\nConnection: Upgrade")
        for source in (factory.headers, headers or {}):
            for name, values in source.items():
                if isinstance(values, str):
                    lines.append(f"{name}: {values}")
                else:
                    try:
                        lines += [f"{name}: {value}" for value in values]
                    except TypeError:
                        lines.append(f"{name}: {values}")
        if protocol is not None:
            lines.append(f"Sec-WebSocket-Protocol: {protocol}")
        lines.append("Sec-WebSocket-Accept: " + accept_value(leg._wskey.encode("utf-8")))
        if agreed is not None:
            lines.append("Sec-WebSocket-Extensions: " + agreed)
        response = "\r\n".join(lines) + "\r\n\r\n"
        # As the backend sent them: its header values were read as latin-1 (Autobahn writes
        # UTF-8, which turned a byte such as 0xE9 into two).
        leg.sendData(encode_head(response))
        leg.http_response_data = response
        leg.state = OPEN
        timer = leg.openHandshakeTimeoutCall
        if timer is not None:
            timer.cancel()
            leg.openHandshakeTimeoutCall = None
        leg.inside_message = False
        leg.current_frame = None
        if leg.autoPingInterval:
            leg.autoPingPendingCall = factory._batched_timer.call_later(
                leg.autoPingInterval, leg._sendAutoPing
            )
        if leg.trackedTimings:
            leg.trackedTimings.track("onOpen")
        leg._onOpen()
        txaio.resolve(leg.is_open, None)  # type: ignore[attr-defined]
        if leg.data:
            leg.consumeData()

    def _connect_failed(self, failure: Failure) -> None:
        # As Autobahn's own onConnect errback: a ConnectionDeny is the answer, anything
        # else a bug answered 500.
        leg: Any = self
        if isinstance(failure.value, ConnectionDeny):
            leg.failHandshake(failure.value.reason, failure.value.code)
            return
        _log.failure("onConnect failed", failure)
        leg.failHandshake(
            f"Internal server error: {failure.value}", ConnectionDeny.INTERNAL_SERVER_ERROR
        )


class LeanClientHandshake:
    """The backend leg's side: its request written from bytes, the 101 checked directly."""

    response_pairs: Pairs | None = None  # the 101's headers in order, for the session
    websocket_key: bytes

    def startHandshake(self) -> None:
        # The request's options are the dial's factory copy's: no onConnecting future.
        leg: Any = self
        leg._actuallyStartHandshake(None)

    def write_request(self) -> None:
        """Write the upgrade request, in the order and words Autobahn writes it."""
        leg: Any = self
        factory = leg.factory
        key = leg.websocket_key = new_key()
        lines = [f"GET {factory.resource} HTTP/1.1"]
        if factory.useragent:
            lines.append(f"User-Agent: {factory.useragent}")
        lines.append(f"Host: {factory.host}:{factory.port}")
        lines.append(_FIXED_REQUEST_LINES)
        lines += [f"{name}: {value}" for name, value in factory.headers.items()]
        lines.append("Sec-WebSocket-Key: " + key.decode("ascii"))
        if factory.origin:
            lines.append(f"Origin: {factory.origin}")
        if factory.protocols:
            lines.append("Sec-WebSocket-Protocol: " + ",".join(factory.protocols))
        offers = leg.perMessageCompressionOffers
        if offers:
            extensions = ",".join(offer.get_extension_string() for offer in offers)
            lines.append("Sec-WebSocket-Extensions: " + extensions)
        lines.append("Sec-WebSocket-Version: 13\r\n\r\n")
        data = encode_head("\r\n".join(lines))
        leg.http_request_data = data
        leg.sendData(data)

    def processHandshake(self) -> None:
        leg: Any = self
        end = leg.data.find(b"\r\n\r\n")
        if end < 0:
            return  # the head is not all here yet
        if self._take_response(leg.data[: end + 4], end):
            return
        try:
            super().processHandshake()  # type: ignore[misc]  # refuses it in its own words
        except UnicodeDecodeError:
            # Autobahn decodes the head as UTF-8 for a debug line before any check, and a
            # header byte beyond ASCII that is not UTF-8 (latin-1 obs-text) raises there.
            leg.failHandshake("handshake response with bytes that are not UTF-8")

    def _take_response(self, head: bytes, end: int) -> bool:
        leg: Any = self
        parsed = parse_head(head)
        if parsed is None:
            return False
        start, pairs = parsed
        if _SWITCHING.fullmatch(start) is None:
            return False
        headers, counts = header_map(pairs)
        upgrade = headers.get("upgrade")
        if upgrade is None or upgrade.strip().lower() != "websocket":
            return False
        if not has_token(headers.get("connection"), "upgrade"):
            return False
        accept = headers.get("sec-websocket-accept")
        if accept is None or counts["sec-websocket-accept"] != 1:
            return False
        if accept.strip() != accept_value(leg.websocket_key):
            return False
        compress = None
        extensions = headers.get("sec-websocket-extensions")
        if extensions is not None:
            if counts["sec-websocket-extensions"] != 1:
                return False
            try:
                agreed = leg._parseExtensionsHeader(extensions)
            except Exception:
                return False
            for name, params in agreed:
                pmce: Any = PERMESSAGE_COMPRESSION_EXTENSION.get(name)
                if pmce is None or compress is not None:
                    return False
                try:
                    answer = pmce["Response"].parse(params)
                except Exception:
                    return False
                taken = leg.perMessageCompressionAccept(answer)
                if taken is None:
                    return False
                compress = pmce["PMCE"].create_from_response_accept(False, taken)
        subprotocol = None
        chosen = headers.get("sec-websocket-protocol")
        if chosen is not None:
            if counts["sec-websocket-protocol"] != 1:
                return False
            chosen = str(chosen.strip())
            if chosen:
                if chosen not in leg.factory.protocols:
                    return False
                subprotocol = chosen
        leg.http_response_data = head
        leg.http_status_line = start
        leg.http_headers = headers
        leg.response_pairs = pairs
        if compress is not None:
            leg._perMessageCompress = compress
            leg.websocket_extensions_in_use = [compress]
        else:
            leg.websocket_extensions_in_use = []
        leg.websocket_protocol_in_use = subprotocol
        leg.data = leg.data[end + 4 :]
        leg.state = OPEN
        timer = leg.openHandshakeTimeoutCall
        if timer is not None:
            timer.cancel()
            leg.openHandshakeTimeoutCall = None
        leg.inside_message = False
        leg.current_frame = None
        leg.websocket_version = leg.version
        if leg.autoPingInterval:
            leg.autoPingPendingCall = leg.factory._batched_timer.call_later(
                leg.autoPingInterval, leg._sendAutoPing
            )
        leg._onOpen()
        txaio.resolve(leg.is_open, None)  # type: ignore[attr-defined]
        if leg.data:
            leg.consumeData()
        return True


# What every upgrade request carries after its Host line (Autobahn's words and order).
_FIXED_REQUEST_LINES = "\r\n".join(
    (
        "Upgrade: WebSocket",
        "Connection: Upgrade",
        "Pragma: no-cache",
        "Cache-Control: no-cache",
    )
)
