"""Failover: when a session's backend leg ends abnormally under an open client, the
session is dialled again elsewhere while the client stays connected; what the client sends
meanwhile is held in order and delivered first. `move` does it on purpose (a backend
removed, an admin request)."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.task import deferLater

from wsbalancer.relay.dialing import SessionDialing
from wsbalancer.relay.replay import keep, replay
from wsbalancer.relay.session_base import NoBackendError
from wsbalancer.relay.splice import attach_backend, fails_over_cleanly
from wsbalancer.wire.flow import pair_flow
from wsbalancer.wire.states import (
    CLOSE_BAD_GATEWAY,
    CLOSE_GOING_AWAY,
    CLOSE_TRY_AGAIN,
    OPEN,
)

if TYPE_CHECKING:
    from wsbalancer.relay.protocols import BackendProtocol


class SessionFailover(SessionDialing):
    """Re-dialling a session whose backend leg died, and moving one on purpose."""

    __slots__ = ()

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
            # backend's close is passed on. A leg that lived `stable_after` resets the count
            # (before this check: its own death is the first of a new count).
            and self._quick_deaths() < config.failover_max_consecutive
            and (not self.spliced or self._splice_fails_over())
        )

    def _quick_deaths(self) -> int:
        """Failovers in a row of legs that died young, not counting a stable current leg."""
        lived = self.balancer.clock.seconds() - self.leg_opened
        return 0 if lived >= self.lane.config.failover_stable_after else self.quick_failovers

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
        self.asked_at = None  # the dead backend's answer will never come
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
                attach_backend(self, self.backend)  # type: ignore[arg-type]  # a RelaySession
            else:
                replay(self, self.backend)  # migrate.replay_first: before what was held
            self._flush_held()
            pair_flow(self.client, self.backend)
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
            if self.replay is not None:
                keep(self, payload, is_binary)  # sent now: still among the first ones?
            if self.asked_at is None:  # timed from its delivery: the wait was the failover's
                self.asked_at = self.balancer.seconds()
            leg.sendMessage(payload, is_binary)
        self.held_bytes = 0
        transport: Any = self.client.transport
        if transport is not None:
            transport.resumeProducing()
