"""One client's session: opening it on a backend, relaying, failing over, closing it.

The protocols (`relay.py`) translate Autobahn events into calls on `RelaySession`; this module
decides what happens: which backend, which close code the other side gets, whether a lost
backend leg is re-dialled while the client stays connected.

Failover: when the backend leg ends abnormally (no close frame, a ping timeout, or a close
code listed in `failover.close_codes`) and the client is still open, the session is dialled
again on another usable backend with the same path, headers and subprotocol plus
`X-Balancer-Reconnect: <attempt>`. Client messages that arrive meanwhile are held in order
(up to `failover.buffer`; beyond it the client's reads pause, so nothing is dropped) and
delivered first. What can be lost is what the dead backend had already been sent and not
acted on: the session counts, as `unanswered`, the client messages relayed to that backend
after the last message it sent back, an upper bound for request/response traffic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autobahn.websocket.types import ConnectionDeny
from twisted.internet import defer
from twisted.internet.interfaces import ISSLTransport
from zope.interface import implementer

from wsbalancer.relay.interfaces import IRelaySession
from wsbalancer.relay.migration import SessionMigration
from wsbalancer.relay.replay import record_first
from wsbalancer.relay.session_base import GATEWAY_TIMEOUT, NoBackendError
from wsbalancer.relay.splice import client_offers, engage, mirror_accept
from wsbalancer.upstream.affinity import new_nonce
from wsbalancer.wire.flow import pair_flow
from wsbalancer.wire.headers import backend_request_headers, parse_raw_headers, pass_back_headers
from wsbalancer.wire.idle import compact
from wsbalancer.wire.lean import shed_handshake
from wsbalancer.wire.peers import peer_host
from wsbalancer.wire.states import (
    CLOSE_BAD_GATEWAY,
    CLOSE_GOING_AWAY,
    CLOSE_TOO_BIG,
    NO_CLOSE_FRAME,
)

if TYPE_CHECKING:
    from wsbalancer.relay.protocols import BackendProtocol

__all__ = ["NoBackendError", "RelaySession"]


@implementer(IRelaySession)
class RelaySession(SessionMigration):
    """One client's session: opened on a backend, relaying, failing over, closing.

    It is made by the client-facing factory (`RelayFactory.open_session`) when a client's
    request has been read, and reports to `balancer`, the registry it belongs to."""

    __slots__ = ()

    # --- opening ------------------------------------------------------------------

    def start(self, request: Any) -> defer.Deferred[Any]:
        """Route, pick and dial; fires with (subprotocol, headers) for the client's 101."""
        return defer.ensureDeferred(self._open(request))

    async def _open(self, request: Any) -> tuple[str | None, dict[str, list[str]]]:
        balancer = self.balancer
        config = self.lane.config
        client = self.client
        raw = client.request_pairs
        if raw is None:  # a request Autobahn read, not the fast path
            raw = parse_raw_headers(client.http_request_data)
        is_tls = ISSLTransport.providedBy(client.transport)
        # The backend leg is offered compression only when asked to mirror the client's:
        # on a data-centre link it mostly costs CPU on both ends.
        client_compression = balancer.config.compression  # compression.client: the process's
        offers_deflate: bool | list[Any] = (
            client_compression
            and config.backend_compression == "mirror"
            and any(name == "permessage-deflate" for name, _ in request.extensions)
        )
        splicing = self.wants_splice()
        if splicing:
            # The backend gets the client's own offers, and the client is then granted
            # exactly what the backend accepted: equal terms on both legs let frames pass
            # as they are.
            offers_deflate = client_offers(request.extensions) if client_compression else []
        self.dial_args = {
            "uri": client.http_request_uri,
            "headers": backend_request_headers(raw, config, peer_host(client), is_tls),
            "origin": request.origin,
            "protocols": list(request.protocols),
            "offer_deflate": offers_deflate,
        }
        affinity = self.lane.affinity
        placement = affinity.place(
            self.lane.pool,
            {name.lower(): value for name, value in raw},
            client.http_request_uri,
            peer_host(client),
        )
        if placement.forged:
            balancer.log.info(
                "affinity cookie from {peer} does not verify; placed anew", peer=peer_host(client)
            )
        # From the dial on, the session counts as a dial (then a session), not as a pin.
        affinity.release(placement.nonce)
        # The client's handshake timer (Autobahn's, from its TCP connect) bounded reading its
        # request; from here the dials are bounded by timeouts.backend_total instead, so a
        # backend slow to answer does not cut the client off before the next one is tried.
        timer = client.openHandshakeTimeoutCall
        if timer is not None:
            timer.cancel()
            client.openHandshakeTimeoutCall = None
        deadline = balancer.clock.seconds() + config.backend_total_timeout
        try:
            leg = await self._connect(exclude=(), prefer=placement.backend, deadline=deadline)
        except NoBackendError as e:
            if e.retry_after is not None:
                # Admission: the backends take upgrades at a pace; come back then.
                balancer.handshake_outcome("admission_refused")
                client.retry_after = e.retry_after
                raise ConnectionDeny(e.status, e.reason)
            balancer.handshake_outcome(
                "backend_refused"
                if e.status < 500
                else "backend_timeout"
                if e.status == GATEWAY_TIMEOUT
                else "no_backend"
            )
            if e.status >= 500:
                balancer.no_backend(self, e.errors)
            raise ConnectionDeny(e.status, e.reason)
        except defer.CancelledError:
            raise ConnectionDeny(499, "client went away")
        if self.client_gone:
            self._end_backend(CLOSE_GOING_AWAY, "client went away")
            raise ConnectionDeny(499, "client went away")
        self.subprotocol = leg.websocket_protocol_in_use
        if splicing:
            client.perMessageCompressionAccept = mirror_accept(leg)  # type: ignore[attr-defined]
        balancer.session_opened(self)
        answer = leg.response_pairs
        if answer is None:
            answer = parse_raw_headers(leg.http_response_data)
        back = pass_back_headers(answer, config)
        shed_handshake(leg)
        if affinity.mode == "cookie":
            state = self.backend_state
            if state is not None and placement.backend is not state:
                pin = affinity.set_cookie(state.id, new_nonce(), is_tls)
                back.setdefault("Set-Cookie", []).append(pin)
        return self.subprotocol, back

    def client_opened(self) -> None:
        """The client got its 101: start flow control both ways."""
        self.opened = True
        self.balancer.handshake_outcome("ok")
        if self.backend is not None:
            pair_flow(self.client, self.backend)
            if self.wants_splice():
                engage(self)
            elif self.lane.config.migrate_replay_first:
                record_first(self)
            compact(self.client)  # an idle session's legs hold only what differs
            compact(self.backend)

    # --- closing ------------------------------------------------------------------

    def client_close_frame(self, code: int | None, reason: bytes | None) -> None:
        """The client sent a valid close: pass it on to the backend as it is."""
        self._record(code, reason, "client")
        self._end_backend(code, reason)

    def backend_close_frame(
        self, leg: BackendProtocol, code: int | None, reason: bytes | None
    ) -> None:
        """The backend sent a valid close: pass it on, or fail over if it is abnormal."""
        if leg is not self.backend:
            return
        if self.fails_over(code):
            self.backend_failed(leg, f"backend closed with {code}")
            return
        self._record(code, reason, "backend")
        self._close_client(code, reason)

    def client_lost(self, code: int | None) -> None:
        """The client leg ended (after a close, an error or a drop)."""
        self.client_gone = True
        if self.dial is not None:
            self.dial.cancel()
            if not self.opened:
                return
        self._record(code, None, "client")
        self._end_backend(CLOSE_GOING_AWAY, b"client went away")
        self._finish_when_closed()

    def backend_lost(self, leg: BackendProtocol, failure_code: int | None, was_clean: bool) -> None:
        """The backend leg ended; fail over, or tell the client why.

        `failure_code` is the code this leg failed the backend with, if it did."""
        if leg is not self.backend:
            self._finish_when_closed()  # a leg already detached (failover, mismatch)
            return
        if failure_code is None and not was_clean and self.fails_over(NO_CLOSE_FRAME):
            self.backend_failed(leg, "backend connection lost")
            return
        inward = leg.splice_out
        if inward is not None and inward.mid_frame():
            # The client was midway through one of this backend's frames: no close frame
            # can follow it, so the client connection is dropped (it sees 1006).
            self._record(NO_CLOSE_FRAME, b"backend lost mid-frame", "backend")
            self.client.dropConnection(abort=True)
            self._finish_when_closed()
            return
        if failure_code == CLOSE_TOO_BIG:
            code, reason = CLOSE_TOO_BIG, b"backend message too big"
        elif failure_code is not None:
            code, reason = CLOSE_BAD_GATEWAY, b"backend protocol error"
        else:
            code, reason = CLOSE_BAD_GATEWAY, b"backend connection lost"
        self._record(code, reason, "backend")
        self._close_client(code, reason)
        self._finish_when_closed()
