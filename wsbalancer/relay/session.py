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

import itertools
from collections import deque
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer, ISSLTransport
from twisted.internet.task import deferLater
from zope.interface import implementer

from wsbalancer.config import DEFAULT_POOL
from wsbalancer.relay.splice import (
    attach_backend,
    client_offers,
    engage,
    fails_over_cleanly,
    mirror_accept,
    splice_compatible,
)
from wsbalancer.upstream.affinity import new_nonce
from wsbalancer.upstream.dialer import BackendConnectError, BackendHandshakeError, backend_resource
from wsbalancer.wire.headers import backend_request_headers, parse_raw_headers, pass_back_headers
from wsbalancer.wire.lean import shed_handshake

if TYPE_CHECKING:
    from wsbalancer.relay.balancer import Balancer
    from wsbalancer.relay.protocols import BackendProtocol, FrontendProtocol
    from wsbalancer.upstream.pool import BackendState
    from wsbalancer.upstream.routing import Lane

OPEN = WebSocketProtocol.STATE_OPEN
CLOSED = WebSocketProtocol.STATE_CLOSED
# Codes that can never appear on the wire; each is translated when carried across.
NOT_ON_WIRE = (1005, 1006, 1015)
NO_CLOSE_FRAME = 1006

CLOSE_GOING_AWAY = 1001
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN = 1013
CLOSE_BAD_GATEWAY = 1014

GATEWAY_TIMEOUT = 504
NO_ANSWER_IN_TIME = "no backend answered in time"

_session_ids = itertools.count(1)


class NoBackendError(Exception):
    """No backend took the session; `status` is what the client is told (a backend's 4xx,
    503 when none is left to try, 504 when the dial budget ran out)."""

    def __init__(self, status: int, reason: str, errors: list[str], reached: bool = False) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.errors = errors
        self.reached = reached  # some backend answered, but not with a usable session


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
        "dial_args",
        "held",
        "held_bytes",
        "reconnecting",
        "reconnects",
        "unanswered",
        "lost",
        "subprotocol",
        "failover_from",
        "leg_opened",
        "quick_failovers",
        "lane",
        "spliced",
        "last_backend",
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
        self.dial_args: dict[str, Any] = {}
        # made on the first message held (failing over), so idle sessions carry none
        self.held: deque[tuple[bytes, bool | None]] | None = None
        self.held_bytes = 0
        self.reconnecting = False
        self.reconnects = 0
        self.unanswered = 0  # client messages sent to the backend since it last sent one
        self.lost = 0  # of those, the ones sent to backends that then died
        self.subprotocol: str | None = None
        self.failover_from: str | None = None
        self.leg_opened = self.started
        self.quick_failovers = 0  # failovers in a row of legs that died young
        self.lane: Lane = client.lane or balancer.lanes[DEFAULT_POOL]  # the session's pool
        self.spliced = False  # frames forwarded as they are (splice.py)
        self.last_backend: str | None = None  # kept when the backend is let go of

    # --- opening ------------------------------------------------------------------

    def start(self, request: Any) -> defer.Deferred[Any]:
        """Route, pick and dial; fires with (subprotocol, headers) for the client's 101."""
        return defer.ensureDeferred(self._open(request))

    async def _open(self, request: Any) -> tuple[str | None, dict[str, list[str]]]:
        balancer = self.balancer
        config = self.lane.config
        client = self.client
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
        back = pass_back_headers(parse_raw_headers(leg.http_response_data), config)
        shed_handshake(leg)
        if affinity.mode == "cookie":
            state = self.backend_state
            if state is not None and placement.backend is not state:
                pin = affinity.set_cookie(state.id, new_nonce(), is_tls)
                back.setdefault("Set-Cookie", []).append(pin)
        return self.subprotocol, back

    async def _connect(
        self,
        exclude: Any,
        attempt: int = 0,
        prefer: BackendState | None = None,
        last_resort: bool = False,
        deadline: float | None = None,
    ) -> BackendProtocol:
        """Dial usable backends in pick order until one opens; attach it to the session.
        `prefer` (the session's pinned backend) is tried first; with `last_resort`, the
        backends only marked down are tried once no usable one is left. Past `deadline`
        (clock seconds), no further dial starts and the client is told 504."""
        balancer = self.balancer
        lane = self.lane
        pool = lane.pool
        args = self.dial_args
        headers = args["headers"]
        protocols = args["protocols"]
        if attempt:
            headers = {**headers, lane.config.reconnect_header: str(attempt)}
            # The client already speaks the subprotocol the first backend chose.
            protocols = [self.subprotocol] if self.subprotocol else []
        tried = list(exclude)
        errors: list[str] = []
        reached = False
        outliers = pool.outliers
        while True:
            limit = None if deadline is None else deadline - balancer.clock.seconds()
            if limit is not None and limit <= 0:
                raise NoBackendError(GATEWAY_TIMEOUT, NO_ANSWER_IN_TIME, errors, reached)
            backend = (
                _pinned(prefer, tried)
                or pool.pick(exclude=tried)
                or (pool.last_resort(tried) if last_resort else None)
            )
            if backend is None:
                break
            prefer = None
            tried.append(backend.id)
            pool.dial_started(backend)
            balancer.backend_picked(self, backend)
            self.dial = lane.dialer.dial(
                backend.config,
                backend_resource(backend.config.url, args["uri"]),
                headers,
                args["origin"],
                protocols,
                args["offer_deflate"],
                self,
                limit=limit,
            )
            try:
                leg = await self.dial
            except BackendHandshakeError as e:
                server_error = e.status is None or e.status >= 500
                pool.dial_failed(backend, counts_against_breaker=server_error)
                balancer.dial_failed(backend, f"handshake {e}")
                if outliers is not None:
                    if server_error:
                        outliers.failure(backend.id)
                    else:
                        outliers.success(backend.id)  # an answer its application meant
                if not server_error and not attempt:
                    assert e.status is not None
                    raise NoBackendError(e.status, e.reason or HTTPStatus(e.status).phrase, [])
                errors.append(f"{backend.id}: {e}")
                reached = True
                continue
            except defer.CancelledError:
                pool.dial_failed(backend, counts_against_breaker=False)
                raise
            except defer.TimeoutError:
                # The client's dial budget ran out during this dial, before the backend's
                # own timeouts: not the backend's failure.
                pool.dial_failed(backend, counts_against_breaker=False)
                errors.append(f"{backend.id}: no answer before the dial budget ran out")
                raise NoBackendError(GATEWAY_TIMEOUT, NO_ANSWER_IN_TIME, errors, reached)
            except BackendConnectError as e:
                pool.dial_failed(backend, counts_against_breaker=True)
                balancer.dial_failed(backend, str(e))
                if outliers is not None:
                    outliers.failure(backend.id)
                errors.append(f"{backend.id}: {e}")
                continue
            finally:
                self.dial = None
            pool.dial_succeeded(backend)
            if outliers is not None:
                outliers.success(backend.id)
            if attempt:
                shed_handshake(leg)  # a re-dial: its 101's headers go nowhere
            misfit = self._misfit(leg) if attempt else None
            if misfit is not None:
                errors.append(f"{backend.id}: {misfit[0]}")
                reached = True
                leg.session = self
                self.backend, self.backend_state = leg, backend
                self._drop_backend_leg(leg, misfit[1])
                continue
            self.backend, self.backend_state = leg, backend
            self.leg_opened = balancer.clock.seconds()
            leg.session = self
            if not self.client_gone:
                self.client.partner = leg
                leg.partner = self.client
            return leg
        raise NoBackendError(503, "no backend available", errors, reached)

    def _misfit(self, leg: BackendProtocol) -> tuple[str, str] | None:
        """Why a re-dialled leg cannot carry this session (error text, close reason)."""
        if leg.websocket_protocol_in_use != self.subprotocol:
            chosen = leg.websocket_protocol_in_use
            return f"chose subprotocol {chosen!r}", "subprotocol mismatch"
        if self.spliced and not splice_compatible(self.client, leg):
            return "negotiated other extensions than the client's", "extensions differ"
        return None

    def client_opened(self) -> None:
        """The client got its 101: start flow control both ways."""
        self.opened = True
        self.balancer.handshake_outcome("ok")
        if self.backend is not None:
            _pair_flow(self.client, self.backend)
            if self.wants_splice():
                engage(self)

    def wants_splice(self) -> bool:
        """Whether this session's pool forwards frames as they are (hooks need messages)."""
        return self.lane.config.relay_mode == "splice" and not self.balancer.hooks

    # --- failover -------------------------------------------------------------------

    def fails_over(self, code: int | None) -> bool:
        """Whether a backend leg ending with `code` (1006: no close frame) is re-dialled."""
        config = self.lane.config
        return (
            config.failover
            and self.opened
            and not self.client_gone
            and self.client.state == OPEN
            and code in config.abnormal_close_codes
            # Backends that keep failing a session as soon as they get it must not keep one
            # client in a loop of reconnects: after this many quick deaths in a row, the
            # backend's close is passed on. A leg that lived `stable_after` resets the count.
            and self.quick_failovers < config.failover_max_consecutive
            and (not self.spliced or self._splice_fails_over())
        )

    def _splice_fails_over(self) -> bool:
        # A backend that was midway through a message cannot be replaced: the client
        # would get the rest of it from nowhere.
        leg = self.backend
        inward = leg.splice_out if leg is not None else None
        return fails_over_cleanly(self.client) and (inward is None or inward.at_boundary())

    def hold(self, payload: bytes, is_binary: bool | None) -> None:
        """A client message while no backend leg is open: keep it, in order (`is_binary`
        None: raw frames of a spliced session)."""
        if self.held is None:
            self.held = deque()
        self.held.append((payload, is_binary))
        self.held_bytes += len(payload)
        if self.held_bytes >= self.lane.config.failover_buffer:
            transport: Any = self.client.transport
            if transport is not None:
                transport.pauseProducing()  # hold no more: the client waits, nothing drops

    def move(self, reason: str, tries: int = 0) -> None:
        """Fail over on purpose (backend removed, admin request): close this leg with 1001
        and re-dial elsewhere while the client stays connected."""
        leg = self.backend
        if leg is None or not self.opened or self.reconnecting or self.client.state != OPEN:
            return
        if self.spliced:
            if not fails_over_cleanly(self.client):
                self.terminate(CLOSE_GOING_AWAY, reason)  # the client reconnects instead
                return
            # Frames pass as they are: the move waits for both directions to be between
            # messages (checked every 50 ms, for up to 10 s, then the session is closed).
            inward, outward = leg.splice_out, self.client.splice_out
            if (inward is not None and not inward.at_boundary()) or (
                outward is not None and not outward.at_boundary()
            ):
                if tries < 200:
                    self.balancer.clock.callLater(0.05, self.move, reason, tries + 1)
                else:
                    self.terminate(CLOSE_GOING_AWAY, reason)
                return
        self.backend_failed(leg, reason)
        if leg.state == OPEN:
            leg.sendCloseFrame(CLOSE_GOING_AWAY, reason.encode()[:123])

    def backend_failed(self, leg: BackendProtocol, reason: str) -> None:
        """The backend leg died under an open client: re-dial elsewhere."""
        state = self.backend_state
        lived = self.balancer.clock.seconds() - self.leg_opened
        if lived >= self.lane.config.failover_stable_after:
            self.quick_failovers = 0
        self.quick_failovers += 1
        self._detach(leg)
        self.lost += self.unanswered
        self.unanswered = 0
        self.reconnecting = True
        self.balancer.failover_started(self, state, reason)
        defer.ensureDeferred(self._reconnect(state.id if state else None))

    async def _reconnect(self, dead: str | None) -> None:
        balancer = self.balancer
        config = self.lane.config
        exclude = [dead] if dead else []
        errors: list[str] = []
        reached = False
        for attempt in range(1, config.failover_attempts + 1):
            if self.client_gone:
                return
            try:
                # From the second round on, backends marked down are tried too: flapping
                # backends can leave none marked usable while one is in fact up again.
                await self._connect(exclude, attempt=self.reconnects + 1, last_resort=attempt > 1)
            except NoBackendError as e:
                balancer.log.debug(
                    "session {session} re-dial round {round} found no backend: {errors}",
                    session=self.id,
                    round=attempt,
                    errors="; ".join(e.errors) or "none usable",
                )
                errors += e.errors
                reached = reached or e.reached
                exclude = []  # the next round may find the dead backend back
                delay = config.failover_backoff * 2 ** (attempt - 1)
                await deferLater(balancer.clock, delay, lambda: None)
                continue
            except defer.CancelledError:
                return
            if self.client_gone:
                self._end_backend(CLOSE_GOING_AWAY, "client went away")
                return
            self.reconnects += 1
            self.reconnecting = False
            if self.spliced:
                attach_backend(self, self.backend)
            self._flush_held()
            _pair_flow(self.client, self.backend)
            balancer.failover_done(self, None)
            return
        self.reconnecting = False
        # 1014 when backends answered but none would take the session; 1013 when none
        # could be reached at all (the client should come back later).
        code = CLOSE_BAD_GATEWAY if reached else CLOSE_TRY_AGAIN
        reason = b"no backend accepted the session" if reached else b"no backend available"
        balancer.failover_done(self, "; ".join(errors) or "no backend usable")
        self._record(code, reason, "backend")
        self._close_client(code, reason)
        self._finish_when_closed()

    def _flush_held(self) -> None:
        leg = self.backend
        assert leg is not None
        held, self.held = self.held, None
        while held:
            payload, is_binary = held.popleft()
            if is_binary is None:  # frames of a spliced session, as the client sent them
                leg.transport.write(payload)
                continue
            self.unanswered += 1
            leg.sendMessage(payload, is_binary)
        self.held_bytes = 0
        transport: Any = self.client.transport
        if transport is not None:
            transport.resumeProducing()

    def _detach(self, leg: BackendProtocol) -> None:
        """Forget a dead backend leg: its backend no longer carries this session."""
        if self.backend is leg:
            if self.backend_state is not None:
                self.last_backend = self.backend_state.id
                self.lane.pool.session_closed(self.backend_state)
            self.backend = None
            self.backend_state = None
            self.client.partner = None
            outward = self.client.splice_out
            if outward is not None:
                outward.backend_lost()
            client_transport: Any = self.client.transport
            if client_transport is not None:
                try:
                    client_transport.unregisterProducer()
                except Exception:
                    pass
                _resume(self.client)
        leg.partner = None

    def _drop_backend_leg(self, leg: BackendProtocol, reason: str) -> None:
        self._detach(leg)
        leg.session = None
        if leg.state == OPEN:
            leg.sendCloseFrame(CLOSE_GOING_AWAY, reason.encode())

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
            self.last_backend = self.backend_state.id
            self.lane.pool.session_closed(self.backend_state)
            self.backend_state = None
        self.balancer.session_ended(self)

    @property
    def backend_id(self) -> str | None:
        """The backend the session is on, or the last one it was on (for its end's log
        line and metric, recorded after the backend was let go of)."""
        state = self.backend_state
        return state.id if state is not None else self.last_backend

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


def _pinned(backend: BackendState | None, tried: list[str]) -> BackendState | None:
    # A pinned backend is dialled first; once tried, the pick decides.
    if backend is None or backend.id in tried:
        return None
    backend.picks += 1
    return backend


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


@implementer(IPushProducer)
class _Pacer:
    """Lets one leg's full write buffer pause the other leg's reads.

    A transport registered directly would be stopped (disconnected) when its consumer's
    connection ends; the session decides how the other leg ends, so stop does nothing."""

    __slots__ = ("transport",)

    def __init__(self, transport: Any) -> None:
        self.transport = transport

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        pass


def _pair_flow(client: Any, backend: Any) -> None:
    # A full write buffer on one side pauses reads on the other (bounded memory).
    for consumer_side, producer_side in ((client, backend), (backend, client)):
        consumer, producer = consumer_side.transport, producer_side.transport
        if consumer is None or producer is None:
            continue
        try:
            consumer.registerProducer(_Pacer(producer), True)
        except RuntimeError:
            pass  # already disconnecting, or paired: nothing to add


def _resume(protocol: Any) -> None:
    # A leg paused because its partner could not keep up must read again to see its close.
    transport = protocol.transport
    if transport is not None:
        try:
            transport.resumeProducing()
        except Exception:
            pass
