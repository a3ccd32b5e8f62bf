"""Dialling a session's backend: backends in the pool's pick order until one opens, within
the dial budget; the leg it gets is attached to the session (or let go of, if it cannot
carry it)."""

from __future__ import annotations

from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from twisted.internet import defer

from wsbalancer.relay.leg_traffic import settle
from wsbalancer.relay.session_base import (
    GATEWAY_TIMEOUT,
    NO_ANSWER_IN_TIME,
    NoBackendError,
    SessionBase,
)
from wsbalancer.relay.splice import splice_compatible
from wsbalancer.upstream.admission import AdmissionRefusedError
from wsbalancer.upstream.dialer import BackendConnectError, BackendHandshakeError, backend_resource
from wsbalancer.wire.flow import unpair
from wsbalancer.wire.lean import shed_handshake
from wsbalancer.wire.states import CLOSE_GOING_AWAY, OPEN

if TYPE_CHECKING:
    from wsbalancer.relay.protocols import BackendProtocol
    from wsbalancer.upstream.pool import BackendState


class SessionDialing(SessionBase):
    """Opening a backend leg for the session, and letting one go."""

    __slots__ = ()

    async def _connect(
        self,
        exclude: Any,
        attempt: int = 0,
        prefer: BackendState | None = None,
        last_resort: bool = False,
        deadline: float | None = None,
        attach: bool = True,
    ) -> BackendProtocol:
        """Dial usable backends in pick order until one opens; attach it to the session
        (with `attach` False, a migration's: the leg is returned, its backend state on it as
        `leg.backend_state`, and the session's current leg is left as it is).
        `prefer` (the session's pinned backend) is tried first; with `last_resort`, the
        backends only marked down are tried once no usable one is left. Past `deadline`
        (clock seconds), no further dial starts and the client is told 504."""
        balancer = self.balancer
        lane = self.lane
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
        retry_after: int | None = None  # set when admission refused a backend
        while True:
            limit = None if deadline is None else deadline - balancer.clock.seconds()
            if limit is not None and limit <= 0:
                raise NoBackendError(GATEWAY_TIMEOUT, NO_ANSWER_IN_TIME, errors, reached)
            backend = lane.next_candidate(tried, prefer, last_resort)
            if backend is None:
                break
            prefer = None
            tried.append(backend.id)
            lane.dial_started(backend)
            balancer.backend_picked(self, backend)
            admission = lane.admission
            if admission is not None and admission.enabled:
                # Wait for this backend's (and pool's) next upgrade slot; the client's
                # leaving cancels the wait as it would the dial.
                self.dial = defer.ensureDeferred(admission.admit(backend.id, limit))
                try:
                    await self.dial
                except AdmissionRefusedError as e:
                    lane.dial_failed(backend, breaker=False, outlier=None)
                    errors.append(f"{backend.id}: {e.reason}")
                    retry_after = min(retry_after or e.retry_after, e.retry_after)
                    continue
                except defer.CancelledError:
                    lane.dial_failed(backend, breaker=False, outlier=None)
                    raise
                finally:
                    self.dial = None
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
                # A 4xx is an answer its application meant: no gateway failure.
                lane.dial_failed(backend, breaker=server_error, outlier=server_error)
                balancer.dial_failed(backend, f"handshake {e}")
                if not server_error and not attempt:
                    assert e.status is not None
                    raise NoBackendError(e.status, e.reason or HTTPStatus(e.status).phrase, [])
                errors.append(f"{backend.id}: {e}")
                reached = True
                continue
            except defer.CancelledError:
                lane.dial_failed(backend, breaker=False, outlier=None)
                raise
            except defer.TimeoutError:
                # The client's dial budget ran out during this dial, before the backend's
                # own timeouts: not the backend's failure.
                lane.dial_failed(backend, breaker=False, outlier=None)
                errors.append(f"{backend.id}: no answer before the dial budget ran out")
                raise NoBackendError(GATEWAY_TIMEOUT, NO_ANSWER_IN_TIME, errors, reached)
            except BackendConnectError as e:
                lane.dial_failed(backend, breaker=True, outlier=True)
                balancer.dial_failed(backend, str(e))
                errors.append(f"{backend.id}: {e}")
                continue
            finally:
                self.dial = None
            lane.dial_succeeded(backend)
            leg.backend_state = backend  # the backend its traffic and close are counted for
            if attempt:
                shed_handshake(leg)  # a re-dial: its 101's headers go nowhere
            misfit = self._misfit(leg) if attempt else None
            if misfit is not None:
                errors.append(f"{backend.id}: {misfit[0]}")
                reached = True
                if attach:
                    leg.session = self
                    self.backend, self.backend_state = leg, backend
                    self._drop_backend_leg(leg, misfit[1], carried=False)
                else:
                    lane.pool.session_closed(backend)
                    if leg.state == OPEN:
                        leg.sendCloseFrame(CLOSE_GOING_AWAY, misfit[1].encode())
                continue
            if not attach:
                leg.session = self  # its events reach the session, which ignores them for now
                return leg
            self.backend, self.backend_state = leg, backend
            self.leg_opened = balancer.clock.seconds()
            leg.session = self
            if not self.client_gone:
                self.client.partner = leg
                leg.partner = self.client
            return leg
        if retry_after is not None and not reached:
            raise NoBackendError(
                503, "backends busy, retry later", errors, reached, retry_after=retry_after
            )
        raise NoBackendError(503, "no backend available", errors, reached)

    def _misfit(self, leg: BackendProtocol) -> tuple[str, str] | None:
        """Why a re-dialled leg cannot carry this session (error text, close reason)."""
        if leg.websocket_protocol_in_use != self.subprotocol:
            chosen = leg.websocket_protocol_in_use
            return f"chose subprotocol {chosen!r}", "subprotocol mismatch"
        if self.spliced and not splice_compatible(self.client, leg):
            return "negotiated other extensions than the client's", "extensions differ"
        return None

    def _detach(self, leg: BackendProtocol, carried: bool = True) -> None:
        """Forget a dead backend leg: its backend no longer carries this session (with
        `carried` False, it never did: what was held for it goes to the next leg)."""
        if self.backend is leg:
            if carried:
                settle(self)
            if self.backend_state is not None:
                self.last_backend = self.backend_state.id
                self.lane.pool.session_closed(self.backend_state)
            self.backend = None
            self.backend_state = None
            self.client.partner = None
            outward = self.client.splice_out
            if outward is not None:
                outward.backend_lost()
            unpair(self.client)
        leg.partner = None

    def _drop_backend_leg(self, leg: BackendProtocol, reason: str, carried: bool = True) -> None:
        self._detach(leg, carried)
        leg.session = None
        if leg.state == OPEN:
            leg.sendCloseFrame(CLOSE_GOING_AWAY, reason.encode())
