"""The relay: each client leg (an Autobahn server protocol) paired with one backend leg
(an Autobahn client protocol), messages re-framed both ways, closes carried across.

The per-message path is the hot path: `onMessage` does two counter updates and one
`sendMessage`, and the per-read Autobahn debug formatting is skipped.
"""

from __future__ import annotations

import itertools
import zlib
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from autobahn.twisted.websocket import (
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.compress_deflate import PerMessageDeflate
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import defer
from twisted.internet.interfaces import ISSLTransport

from .dialer import (
    BackendConnectError,
    BackendHandshakeError,
    backend_resource,
)
from .headers import backend_request_headers, parse_raw_headers, pass_back_headers
from .logs import logger

if TYPE_CHECKING:
    from .balancer import Balancer
    from .pool import BackendState

_log = logger("wsbalancer.relay")

OPEN = WebSocketProtocol.STATE_OPEN
CLOSED = WebSocketProtocol.STATE_CLOSED
# 1014 (Bad Gateway) is registered with IANA; a backend or a balancer in front may send it.
ALLOWED_CLOSE_CODES = [*WebSocketProtocol.CLOSE_STATUS_CODES_ALLOWED, 1014]
# Codes that can never appear on the wire; each is translated when carried across.
NOT_ON_WIRE = (1005, 1006, 1015)

CLOSE_BAD_GATEWAY = 1014
CLOSE_TRY_AGAIN = 1013
CLOSE_GOING_AWAY = 1001

_session_ids = itertools.count(1)


class RelaySession:
    """One client's session: its two legs, the backend it sits on, its counters."""

    __slots__ = (
        "balancer",
        "id",
        "client",
        "backend",
        "backend_state",
        "started",
        "opened",
        "msgs_in",
        "msgs_out",
        "bytes_in",
        "bytes_out",
        "dial",
        "ended",
        "client_gone",
        "close_code",
        "close_reason",
        "closed_by",
        "idle_mark",
    )

    def __init__(self, balancer: Balancer, client: FrontendProtocol) -> None:
        self.balancer = balancer
        self.id = next(_session_ids)
        self.client = client
        self.backend: BackendProtocol | None = None
        self.backend_state: BackendState | None = None
        self.started = balancer.clock.seconds()
        self.opened = False
        self.msgs_in = self.msgs_out = self.bytes_in = self.bytes_out = 0
        self.dial: defer.Deferred[Any] | None = None
        self.ended = False
        self.client_gone = False
        self.close_code: int | None = None
        self.close_reason = ""
        self.closed_by = ""
        self.idle_mark = -1

    # --- opening ------------------------------------------------------------------

    def start(self, request: Any) -> defer.Deferred[Any]:
        """Route, pick and dial; fires with (subprotocol, headers) for the client's 101."""
        return defer.ensureDeferred(self._open(request))

    async def _open(self, request: Any) -> tuple[str | None, dict[str, list[str]]]:
        balancer = self.balancer
        config = balancer.config
        client = self.client
        raw = parse_raw_headers(client.http_request_data)
        is_tls = ISSLTransport.providedBy(client.transport)
        headers = backend_request_headers(raw, config, peer_host(client), is_tls)
        # The backend leg is offered compression only when asked to mirror the client's:
        # on a data-centre link it mostly costs CPU on both ends.
        offers_deflate = (
            config.compression
            and config.backend_compression == "mirror"
            and any(name == "permessage-deflate" for name, _ in request.extensions)
        )
        tried: list[str] = []
        errors: list[str] = []
        while True:
            backend = balancer.pool.pick(exclude=tried)
            if backend is None:
                break
            tried.append(backend.id)
            balancer.pool.dial_started(backend)
            self.dial = balancer.dialer.dial(
                backend.config,
                backend_resource(backend.config.url, client.http_request_uri),
                headers,
                request.origin,
                list(request.protocols),
                offers_deflate,
                self,
            )
            try:
                leg = await self.dial
            except BackendHandshakeError as e:
                server_error = e.status is None or e.status >= 500
                balancer.pool.dial_failed(backend, counts_against_breaker=server_error)
                balancer.dial_failed(backend, f"handshake {e}")
                if e.status is not None and 400 <= e.status < 500:
                    balancer.handshake_outcome("backend_refused")
                    raise ConnectionDeny(e.status, e.reason or HTTPStatus(e.status).phrase)
                errors.append(f"{backend.id}: {e}")
                continue
            except defer.CancelledError:
                balancer.pool.dial_failed(backend, counts_against_breaker=False)
                raise ConnectionDeny(499, "client went away")
            except (BackendConnectError, defer.TimeoutError) as e:
                balancer.pool.dial_failed(backend, counts_against_breaker=True)
                reason = str(e) if isinstance(e, BackendConnectError) else "timed out"
                balancer.dial_failed(backend, reason)
                errors.append(f"{backend.id}: {reason}")
                continue
            finally:
                self.dial = None
            balancer.pool.dial_succeeded(backend)
            self.backend_state = backend
            self.backend = leg
            leg.session = self
            if self.client_gone:
                self._end_backend(CLOSE_GOING_AWAY, "client went away")
                raise ConnectionDeny(499, "client went away")
            client.partner = leg
            leg.partner = client
            balancer.session_opened(self)
            back = pass_back_headers(parse_raw_headers(leg.http_response_data), config)
            return leg.websocket_protocol_in_use, back
        balancer.handshake_outcome("no_backend")
        balancer.no_backend(self, errors)
        raise ConnectionDeny(503, "no backend available")

    def client_opened(self) -> None:
        """The client got its 101: start flow control both ways."""
        self.opened = True
        self.balancer.handshake_outcome("ok")
        client, backend = self.client, self.backend
        if backend is None:
            return
        # A full write buffer on one side pauses reads on the other (bounded memory).
        _pair_flow(client, backend)
        _pair_flow(backend, client)

    # --- closing ------------------------------------------------------------------

    def client_close_frame(self, code: int | None, reason: bytes | None) -> None:
        """The client sent a valid close: pass it on to the backend as it is."""
        self._record(code, reason, "client")
        self._end_backend(code, reason)

    def backend_close_frame(self, code: int | None, reason: bytes | None) -> None:
        """The backend sent a valid close: pass it on to the client as it is."""
        self._record(code, reason, "backend")
        self._close_client(code, reason)

    def client_lost(self, code: int | None) -> None:
        """The client leg ended (after a close, an error or a drop)."""
        self.client_gone = True
        if self.dial is not None:
            self.dial.cancel()
            return
        self._record(code, None, "client")
        self._end_backend(CLOSE_GOING_AWAY, b"client went away")
        self._finish_when_closed()

    def backend_lost(self, failure_code: int | None) -> None:
        """The backend leg ended; if the client was not told yet, tell it why.

        `failure_code` is the code this leg failed the backend with, if it did."""
        if failure_code == 1009:
            code, reason = 1009, b"backend message too big"
        elif failure_code is not None:
            code, reason = CLOSE_BAD_GATEWAY, b"backend protocol error"
        else:
            code, reason = CLOSE_BAD_GATEWAY, b"backend connection lost"
        self._record(code, reason, "backend")
        self._close_client(code, reason)
        self._finish_when_closed()

    def terminate(self, code: int, reason: str) -> None:
        """Close both legs with `code` (idle timeout, admin action, shutdown)."""
        data = reason.encode("utf-8")[:123]
        self._record(code, data, "balancer")
        self._close_client(code, data)
        self._end_backend(code, data)

    def _finish_when_closed(self) -> None:
        if self.client.state == CLOSED and (self.backend is None or self.backend.state == CLOSED):
            self.finish()

    def finish(self) -> None:
        """Both legs are gone: account once."""
        if self.ended:
            return
        self.ended = True
        if self.backend_state is not None:
            self.balancer.pool.session_closed(self.backend_state)
        self.balancer.session_ended(self)

    def _record(self, code: int | None, reason: bytes | None, by: str) -> None:
        if not self.closed_by:
            self.close_code = code
            self.close_reason = (reason or b"").decode("utf-8", "replace")
            self.closed_by = by

    def _close_client(self, code: int | None, reason: bytes | str | None) -> None:
        client = self.client
        if client.state == OPEN:
            client.sendCloseFrame(code=_wire_code(code), reasonUtf8=_reason_bytes(code, reason))

    def _end_backend(self, code: int | None, reason: bytes | str | None) -> None:
        backend = self.backend
        if backend is None:
            return
        _resume(backend)
        if backend.state == OPEN:
            code = _wire_code(code)
            if code == CLOSE_BAD_GATEWAY:
                code = CLOSE_GOING_AWAY
            backend.sendCloseFrame(code=code, reasonUtf8=_reason_bytes(code, reason))


class TunedDeflate(PerMessageDeflate):
    """permessage-deflate compressing at the configured zlib level (Autobahn's is fixed at
    the default, 6): the balancer compresses every message it relays, so level 1 keeps the
    CPU cost per message several times lower for a modestly larger output."""

    level = 1

    def start_compress_message(self) -> None:
        if self._is_server:
            takeover_off, bits = self.server_no_context_takeover, self.server_max_window_bits
        else:
            takeover_off, bits = self.client_no_context_takeover, self.client_max_window_bits
        if self._compressor is None or takeover_off:
            self._compressor = zlib.compressobj(self.level, zlib.DEFLATED, -bits, self.mem_level)


def tune_compression(protocol: Any, level: int) -> None:
    """Switch a leg's negotiated permessage-deflate to the configured level."""
    pmce = protocol._perMessageCompress
    if type(pmce) is PerMessageDeflate and level != 6:
        tuned: Any = pmce
        tuned.__class__ = TunedDeflate
        tuned.level = level


def peer_host(protocol: Any) -> str:
    """The client's address as it goes into X-Forwarded-For and the logs."""
    transport = protocol.transport
    peer = transport.getPeer() if transport is not None else None
    return getattr(peer, "host", None) or "unix"


def _wire_code(code: int | None) -> int | None:
    return CLOSE_BAD_GATEWAY if code in NOT_ON_WIRE else code


def _reason_bytes(code: int | None, reason: bytes | str | None) -> bytes | None:
    if code is None or not reason:
        return None
    data = reason.encode("utf-8") if isinstance(reason, str) else reason
    return data[:123]


def _pair_flow(consumer_side: Any, producer_side: Any) -> None:
    consumer, producer = consumer_side.transport, producer_side.transport
    if consumer is None or producer is None:
        return
    try:
        consumer.registerProducer(producer, True)
    except RuntimeError:
        pass  # already disconnecting: nothing left to pace


def _resume(protocol: Any) -> None:
    # A leg paused because its partner could not keep up must read again to see its close.
    transport = protocol.transport
    if transport is not None:
        try:
            transport.resumeProducing()
        except Exception:
            pass


class FrontendProtocol(WebSocketServerProtocol):
    """The client leg."""

    CLOSE_STATUS_CODES_ALLOWED = ALLOWED_CLOSE_CODES
    session: RelaySession | None = None
    partner: BackendProtocol | None = None
    _handshake_pending = False

    def dataReceived(self, data: bytes) -> None:
        # Skip Autobahn's per-read debug formatting (its arguments are built even with debug off).
        self._dataReceived(data)

    def processHandshake(self) -> None:
        if self._handshake_pending:
            return  # bytes after the request wait until the backend has answered
        limit = self.factory.balancer.config.max_header_bytes
        end = self.data.find(b"\r\n\r\n")
        if limit and ((end < 0 and len(self.data) > limit) or end + 4 > limit):
            self.failHandshake("request header fields too large", 431)
            return
        super().processHandshake()

    def onConnect(self, request: Any) -> Any:
        self._handshake_pending = True
        self.session = RelaySession(self.factory.balancer, self)
        return self.session.start(request)

    def onOpen(self) -> None:
        self._handshake_pending = False
        tune_compression(self, self.factory.balancer.config.compression_level)
        if self.session is not None:
            self.session.client_opened()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        session = self.session
        session.msgs_in += 1  # type: ignore[union-attr]
        session.bytes_in += len(payload)  # type: ignore[union-attr]
        self.partner.sendMessage(payload, isBinary)  # type: ignore[union-attr]

    def onCloseFrame(self, code: Any, reasonRaw: Any) -> Any:
        was_open = self.state == OPEN
        failed = super().onCloseFrame(code, reasonRaw)
        if not failed and was_open and self.session is not None:
            self.session.client_close_frame(self.remoteCloseCode, reasonRaw)
        return failed

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.session is not None:
            self.session.client_lost(self.remoteCloseCode if wasClean else 1006)

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
        self.factory.balancer.handshake_outcome(f"refused_{code}")
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


class BackendProtocol(WebSocketClientProtocol):
    """The backend leg."""

    CLOSE_STATUS_CODES_ALLOWED = ALLOWED_CLOSE_CODES
    dial: Any = None
    session: RelaySession | None = None
    partner: FrontendProtocol | None = None
    handshake_status: int | None = None
    handshake_reason = ""

    def dataReceived(self, data: bytes) -> None:
        self._dataReceived(data)

    def onOpen(self) -> None:
        tune_compression(self, self.dial.session.balancer.config.compression_level)
        self.dial.opened(self)

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
        session = self.session
        session.msgs_out += 1  # type: ignore[union-attr]
        session.bytes_out += len(payload)  # type: ignore[union-attr]
        self.partner.sendMessage(payload, isBinary)  # type: ignore[union-attr]

    def onCloseFrame(self, code: Any, reasonRaw: Any) -> Any:
        was_open = self.state == OPEN
        failed = super().onCloseFrame(code, reasonRaw)
        if not failed and was_open and self.session is not None:
            self.session.backend_close_frame(self.remoteCloseCode, reasonRaw)
        return failed

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
        session = self.session
        if session is not None:
            session.backend_lost(self.localCloseCode if self.failedByMe else None)


class RelayFactory(WebSocketServerFactory):
    """The client-facing factory; shared by every listen endpoint."""

    protocol = FrontendProtocol

    def __init__(self, balancer: Balancer) -> None:
        super().__init__()
        self.balancer = balancer
        self.noisy = False
