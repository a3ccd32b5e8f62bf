"""The two legs of a session as Autobahn protocols: the client leg (a server protocol) and the
backend leg (a client protocol). They translate Autobahn's events into calls on the session
(`session.py`), which decides what happens.

The per-message path is the hot path: `onMessage` does a few counter updates and one
`sendMessage`, and Autobahn's per-read debug formatting is skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from autobahn.twisted.websocket import (
    WebSocketClientProtocol,
    WebSocketServerProtocol,
)
from autobahn.websocket.protocol import WebSocketProtocol

try:
    from twisted.internet.endpoints import _WrappingProtocol
except ImportError:  # a private class: without it, reads keep going through the wrapper
    _WrappingProtocol = None  # type: ignore[assignment,misc]

from wsbalancer.observe.logs import logger
from wsbalancer.relay.interfaces import IRelaySession
from wsbalancer.relay.lean_handshake import (
    LeanClientHandshake,
    LeanServerHandshake,
    LeanSetup,
    read_request,
)
from wsbalancer.relay.leg_traffic import answered, client_leg_closed, leg_close_code
from wsbalancer.upstream.dialer import BackendConnectError, BackendHandshakeError
from wsbalancer.wire.compression import (
    forward_compressed,
    tune_compression,
)
from wsbalancer.wire.frames import FastFrames, prepare, receive
from wsbalancer.wire.headers import parse_raw_headers, valid_host
from wsbalancer.wire.idle import IdleState
from wsbalancer.wire.lean import LeanReceive, LeanSend, shed_handshake
from wsbalancer.wire.peers import peer_host
from wsbalancer.wire.states import (
    ALLOWED_CLOSE_CODES,
    CLOSE_BAD_GATEWAY,
    CLOSED,
    NO_CLOSE_FRAME,
    OPEN,
)

if TYPE_CHECKING:
    from wsbalancer.upstream.routing import Lane

_log = logger("wsbalancer.relay")


WEBSOCKET_VERSION = "13"  # RFC 6455; the only Sec-WebSocket-Version a client is accepted with


class RelayLeg(LeanSetup, FastFrames, LeanReceive, LeanSend, IdleState):
    """What both legs share: where a read goes (splice, the fast frame path, Autobahn's
    parser), how a message is forwarded to the partner leg, and how a valid close frame
    reaches the session. Each leg says what its events mean to the session."""

    CLOSE_STATUS_CODES_ALLOWED = ALLOWED_CLOSE_CODES
    session: IRelaySession | None = None
    partner: Any = None  # the other leg, while both are open
    _isMessageCompressed = False  # Autobahn sets it per message
    # Nothing inspects or changes this leg's messages (False with hooks), so they may be
    # forwarded as they came: compressed bytes kept, frames relayed by frames.py directly.
    forwards_as_is = True
    # Autobahn's, declared for the type checker (WebSocketProtocol sets them)
    state: int
    current_frame: Any
    inside_message: bool
    remoteCloseCode: int | None
    _dataReceived: Callable[[bytes], None]

    def dataReceived(self, data: bytes) -> None:
        splice = self.splice_out
        if splice is not None:
            splice.feed(data)
            return
        if self.fast_in and self.state == OPEN and self.current_frame is None:
            if not self.inside_message:
                receive(self, data)
                return
        self.parse(data)

    def parse(self, data: bytes) -> None:
        """Bytes the fast paths do not take: Autobahn's parser, without its per-read debug
        formatting (its arguments are built even with debug off)."""
        self._dataReceived(data)

    def forward(self, partner: Any, payload: bytes, is_binary: bool) -> None:
        """Send a message on to the partner leg, still compressed when both legs allow."""
        if not (
            self._isMessageCompressed
            and self.forwards_as_is
            and forward_compressed(self, partner, is_binary)
        ):
            partner.sendMessage(payload, is_binary)

    def onCloseFrame(self, code: Any, reasonRaw: Any) -> Any:
        was_open = self.state == OPEN
        if code == CLOSE_BAD_GATEWAY:
            failed = self._close_frame_1014(code, reasonRaw)
        else:
            failed = super().onCloseFrame(code, reasonRaw)  # type: ignore[misc]
        if not failed and was_open and self.session is not None:
            self.closed_by_peer(self.session, self.remoteCloseCode, reasonRaw)
        return failed

    def closed_by_peer(self, session: IRelaySession, code: int | None, reason: bytes) -> None:
        """This leg's peer sent a valid close frame."""
        raise NotImplementedError

    def _close_frame_1014(self, code: int, reason: Any) -> Any:
        # Autobahn checks a close code against WebSocketProtocol's own list, which predates
        # 1014 (Bad Gateway, registered with IANA), not the class's: for this one frame its
        # check sees the list with 1014, so the code is taken, echoed and passed on as sent.
        saved = WebSocketProtocol.CLOSE_STATUS_CODES_ALLOWED
        WebSocketProtocol.CLOSE_STATUS_CODES_ALLOWED = ALLOWED_CLOSE_CODES
        try:
            return super().onCloseFrame(code, reason)  # type: ignore[misc]
        finally:
            WebSocketProtocol.CLOSE_STATUS_CODES_ALLOWED = saved


class FrontendProtocol(RelayLeg, LeanServerHandshake, WebSocketServerProtocol):  # type: ignore[misc,override]
    """The client leg."""

    partner: BackendProtocol | None = None
    _handshake_pending = False
    retry_after: int | None = None  # seconds, sent with a 503 when admission refused
    holds_slot = False  # counted under limits.max_connections(_per_ip) until the connection ends
    lane: Lane | None = None  # the pool the request was routed to
    http_channel: Any = None  # set when the connection is handed to the HTTP proxy

    def parse(self, data: bytes) -> None:
        if self.http_channel is not None:
            self.http_channel.dataReceived(data)
            return
        self._dataReceived(data)

    def connectionLost(self, reason: Any = None) -> None:
        if self.holds_slot:
            self.holds_slot = False
            self.factory.release(self)
        if self.http_channel is not None:
            self.http_channel.connectionLost(reason)
        super().connectionLost(reason)

    def processHandshake(self) -> None:
        if self._handshake_pending:
            return  # bytes after the request wait until the backend has answered
        limit = self.factory.max_header_bytes
        end = self.data.find(b"\r\n\r\n")
        if limit and ((end < 0 and len(self.data) > limit) or end + 4 > limit):
            self.failHandshake("request header fields too large", 431)
            return
        if end >= 0 and self.lane is None:
            head = self.data[: end + 4]
            lean = read_request(self, head)
            if lean is not None:
                # Every check passes on it: routed, admitted and opened on the fast path
                # (lean_handshake.py), unless an option-bound check says otherwise.
                request = lean[0]
                lane = self._routed(request.target, request.host)
                if lane is None or not self._admit_to(lane) or self.open_request(request, end):
                    return
            elif not self._check(head):
                return
        super().processHandshake()

    def _check(self, head: bytes) -> bool:
        """Check the request head and pick its pool; False when the request was answered
        here (400 Host, 404, 426 version) or handed to the plain-HTTP proxy."""
        first, _, _ = head.partition(b"\r\n")
        parts = first.decode("latin-1").split()
        if len(parts) != 3:
            return True  # malformed: Autobahn's 400 says so
        pairs = parse_raw_headers(head)
        # Checked here, not by Autobahn: the Host is routed on and sent on in
        # X-Forwarded-Host, so one with spaces or stray bytes goes no further.
        hosts = [value for name, value in pairs if name.lower() == "host"]
        if not all(valid_host(host) for host in hosts):
            self.failHandshake("malformed Host header", 400)
            return False
        headers = {name.lower(): value for name, value in pairs}
        lane = self._routed(parts[1], headers.get("host"))
        if lane is None:
            return False
        # Every Upgrade line counts, as Autobahn reads them (joined), not just the last.
        offered = ", ".join(value for name, value in pairs if name.lower() == "upgrade")
        upgrade = "websocket" in offered.lower()
        if not upgrade and lane.config.http:
            if self._admit():
                self._become_http()
            return False
        versions = [value for name, value in pairs if name.lower() == "sec-websocket-version"]
        if upgrade and versions != [WEBSOCKET_VERSION]:
            # RFC 6455 4.2.2 / 4.4: name the version spoken here (Autobahn would also take
            # the hybi drafts, and answer an unparsable one without the header).
            offered = ", ".join(versions)[:32] or "none"
            self.failHandshake(
                f"WebSocket version {offered} not supported; this server speaks 13",
                426,
                [("Sec-WebSocket-Version", WEBSOCKET_VERSION)],
            )
            return False
        return self._admit_to(lane)

    def _routed(self, target: str, host: str | None) -> Lane | None:
        """The pool the request goes to; None when there is none (answered 404)."""
        lane = self.factory.route(target, host)
        if lane is None:
            path = target.split("?", 1)[0]
            self.failHandshake(f"no route for {path}", 404)
        return lane

    def _admit_to(self, lane: Lane) -> bool:
        """Admit the request to `lane` under the connection limits (False: refused)."""
        if not self._admit():
            return False
        self.lane = lane
        return True

    def _admit(self) -> bool:
        """Take this client's slot under the connection limits; False when refused."""
        refusal = self.factory.admit(self)
        if refusal is not None:
            self.failHandshake(refusal[1], refusal[0])
            return False
        self.holds_slot = True
        return True

    def _become_http(self) -> None:
        # From here on, this connection's bytes go to a twisted.web channel, which reads the
        # request again and proxies it (and any keep-alive requests after it).
        if self.openHandshakeTimeoutCall is not None:
            self.openHandshakeTimeoutCall.cancel()
            self.openHandshakeTimeoutCall = None
        self.wasClean = True  # no WebSocket close is owed to this client
        channel = self.factory.http_site().buildProtocol(self.transport.getPeer())
        channel.totalHeadersSize = self.factory.max_header_bytes or 16384
        self.http_channel = channel
        channel.makeConnection(self.transport)
        data, self.data = self.data, b""
        channel.dataReceived(data)

    def onConnect(self, request: Any) -> Any:
        self._handshake_pending = True
        self.session = self.factory.open_session(self)
        return self.session.start(request)

    def onOpen(self) -> None:
        self._handshake_pending = False
        shed_handshake(self)  # the session took what it needs of the request
        tune_compression(self, self.factory.compression_level)
        prepare(self)
        if self.session is not None:
            self.session.client_opened()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        session: Any = self.session
        session.msgs_in += 1
        session.bytes_in += len(payload)
        partner = self.partner
        if partner is None:
            session.hold(payload, isBinary)  # failing over: delivered once re-dialled
        elif partner.state == OPEN:  # a closing leg takes no more messages
            session.unanswered += 1
            if session.asked_at is None:  # the oldest unanswered one: its answer is timed
                session.asked_at = session.balancer.seconds()
            self.forward(partner, payload, isBinary)

    def relayed(self, size: int) -> None:
        """Count a message of `size` bytes that frames.py relayed to the open partner (what
        onMessage counts for one it relays)."""
        session: Any = self.session
        session.msgs_in += 1
        session.bytes_in += size
        session.unanswered += 1
        if session.asked_at is None:
            session.asked_at = session.balancer.seconds()

    def closed_by_peer(self, session: IRelaySession, code: int | None, reason: bytes) -> None:
        session.client_close_frame(code, reason)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        session: Any = self.session
        if session is not None:
            if session.opened:
                client_leg_closed(session, leg_close_code(self, wasClean))
            session.client_lost(self.remoteCloseCode if wasClean else NO_CLOSE_FRAME)

    def failHandshake(self, reason: str, code: int = 400, responseHeaders: Any = None) -> None:
        if self.state == CLOSED:
            return
        self.wasNotCleanReason = reason
        peer = peer_host(self)
        uri = getattr(self, "http_request_uri", "")
        if code in (499,):
            self.dropConnection(abort=True)
            return
        _log.info(
            "handshake from {peer} {uri} refused: {code} {reason}",
            peer=peer,
            uri=uri,
            code=code,
            reason=reason,
        )
        headers = list(responseHeaders or [])
        if code == 426:
            headers.append(("Upgrade", "websocket"))
        if self.retry_after is not None:
            headers.append(("Retry-After", str(self.retry_after)))
        self.factory.handshake_outcome(f"refused_{code}")
        self.sendHttpErrorResponse(code, reason, headers)
        self.wasClean = True  # answered and logged above; spare Autobahn's second warning
        self.dropConnection(abort=False)

    def sendHttpErrorResponse(self, code: int, reason: str, responseHeaders: Any = None) -> None:
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "Error"
        body = (" ".join(str(reason).split()) + "\n").encode("utf-8", "replace")
        head = [
            f"HTTP/1.1 {code} {phrase}",
            "Content-Type: text/plain; charset=utf-8",
            f"Content-Length: {len(body)}",
            "Connection: close",
        ]
        head += [f"{name}: {value}" for name, value in responseHeaders or []]
        self.sendData(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)


class BackendProtocol(RelayLeg, LeanClientHandshake, WebSocketClientProtocol):  # type: ignore[misc,override]
    """The backend leg."""

    dial: Any = None
    partner: FrontendProtocol | None = None
    backend_state: Any = None  # the BackendState it was opened to (set by the dial)
    heard = 0  # messages from its backend while a migration drains it (migration.py)
    handshake_status: int | None = None
    handshake_reason = ""

    def onOpen(self) -> None:
        self.factory = self.dial.shared_factory  # the dial's copy served the handshake only
        tune_compression(self, self.dial.session.compression_level)
        prepare(self)
        unwrap(self)
        self.dial.opened(self)

    def _actuallyStartHandshake(self, request_options: Any) -> None:
        if self.state != self.STATE_CONNECTING:
            return  # the connection went while the request waited (below)
        admission = self.dial.session.lane.admission
        if admission is not None and admission.enabled:
            # admission.*: at most rate + burst upgrade requests reach a backend in a second
            delay = admission.write_delay(self.dial.backend_id)
            if delay:
                clock = self.dial.session.balancer.clock
                clock.callLater(delay, self._actuallyStartHandshake, request_options)
                return
        self.write_request()

    def failHandshake(self, reason: str) -> None:
        status_line = getattr(self, "http_status_line", "") or ""
        parts = status_line.split(None, 2)
        if len(parts) >= 2 and parts[1].isdigit():
            self.handshake_status = int(parts[1])
            self.handshake_reason = parts[2] if len(parts) > 2 else ""
            if self.handshake_status == 101:  # a 101 that broke the rules: a bad gateway
                self.handshake_status = None
                self.handshake_reason = reason
        else:
            self.handshake_reason = reason
        super().failHandshake(reason)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        session: Any = self.session
        partner = self.partner
        if partner is None or partner.state != OPEN:
            return  # a leg being dropped (failover mismatch), or a client already closing
        session.msgs_out += 1
        session.bytes_out += len(payload)
        session.unanswered = 0
        asked = session.asked_at
        if asked is not None:
            session.asked_at = None
            answered(session, asked)
        self.forward(partner, payload, isBinary)

    def relayed(self, size: int) -> None:
        """Count a message of `size` bytes that frames.py relayed to the client."""
        session: Any = self.session
        session.msgs_out += 1
        session.bytes_out += size
        session.unanswered = 0
        asked = session.asked_at
        if asked is not None:
            session.asked_at = None
            answered(session, asked)

    def closed_by_peer(self, session: IRelaySession, code: int | None, reason: bytes) -> None:
        session.backend_close_frame(self, code, reason)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        dial = self.dial
        if dial is not None and dial.pending:
            if self.handshake_status is not None or self.handshake_reason:
                dial.failed(
                    BackendHandshakeError(self.handshake_status, self.handshake_reason or "")
                )
            else:
                dial.failed(BackendConnectError(reason or "connection lost in handshake"))
            return
        state = self.backend_state
        if state is not None:
            state.traffic.leg_closed("backend", leg_close_code(self, wasClean))
        session = self.session
        if session is not None:
            failure = self.localCloseCode if self.failedByMe else None
            session.backend_lost(self, failure, wasClean)


class HookedFrontendProtocol(FrontendProtocol):  # type: ignore[misc]
    """The client leg when message hooks are configured (the plain one stays lean)."""

    forwards_as_is = False  # a hook may change or drop what the peer's stream holds

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        message = run_hooks(self, "client_to_backend", payload, isBinary)
        if message is not None:
            super().onMessage(*message)


class HookedBackendProtocol(BackendProtocol):  # type: ignore[misc]
    """The backend leg when message hooks are configured."""

    forwards_as_is = False

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        message = run_hooks(self, "backend_to_client", payload, isBinary)
        if message is not None:
            super().onMessage(*message)


def unwrap(leg: Any) -> None:
    """Let a plain TCP connection hand its reads to the leg itself: the endpoint's wrapper
    protocol only passes them on once connected (one call less per read)."""
    transport = leg.transport
    wrapper = getattr(transport, "protocol", None)
    if type(wrapper) is _WrappingProtocol and wrapper._wrappedProtocol is leg:
        transport.protocol = leg


def run_hooks(leg: Any, direction: str, payload: bytes, is_binary: bool) -> Any:
    """The message after every hook, or None when one dropped it (or failed)."""
    session = leg.session
    message: Any = (payload, is_binary)
    for hook in session.hooks:
        try:
            message = getattr(hook, direction)(session, *message)
        except Exception:
            _log.failure(
                "message hook {hook} failed; the message is dropped", hook=type(hook).__name__
            )
            return None
        if message is None:
            return None
    return message
