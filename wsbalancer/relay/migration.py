"""Make-before-break migration: a session moved to another backend on purpose, with the
client seeing no close, no loss and no duplicate.

The new backend is dialled with the session's path, headers, subprotocol and
`X-Balancer-Reconnect` while the old leg carries on. Once the new leg's 101 has arrived,
new client messages go to it; the old leg stays open, still relaying what the old backend
sends to the client, until it has been quiet for `QUIET` seconds (at most `MAX_DRAIN`),
then it is closed with 1001. Per direction, order holds: each backend gets the client's
messages in order, and the client gets each backend's in order.

A session that cannot migrate safely is skipped, never broken: splice mode (frames pass as
they are, a move would cut one in half), a compressed backend leg (the new leg's
compression context could not continue the old one's stream), a failover or migration
already under way, or a message hook whose `may_migrate(session)` says no.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import defer

from wsbalancer.relay.failover import SessionFailover
from wsbalancer.relay.leg_traffic import drained_message, settle
from wsbalancer.relay.replay import replay
from wsbalancer.relay.session_base import NoBackendError
from wsbalancer.wire.flow import pair_flow, unpair
from wsbalancer.wire.states import CLOSE_GOING_AWAY, OPEN

if TYPE_CHECKING:
    from wsbalancer.relay.protocols import BackendProtocol

QUIET = 1.0  # the old leg is closed once its backend has sent nothing for this long
MAX_DRAIN = 10.0  # ... or after this long, whatever it still sends
MIGRATED = "session migrated"


class SessionMigration(SessionFailover):
    """Moving a live session to another backend, make-before-break."""

    __slots__ = ()

    def migration_blocker(self) -> str | None:
        """Why the session cannot migrate now; None when it can."""
        leg = self.backend
        if not self.opened or self.client_gone or self.client.state != OPEN:
            return "not open"
        if self.reconnecting or self.migrating:
            return "already moving"
        if leg is None or leg.state != OPEN:
            return "no open backend leg"
        if self.spliced:
            return "splice mode"
        if getattr(leg, "_perMessageCompress", None) is not None:
            return "compressed backend leg"
        for hook in self.hooks:
            may = getattr(hook, "may_migrate", None)
            if may is not None and not may(self):
                return f"hook {type(hook).__name__} said no"
        return None

    def migrate(self, reason: str, prefer: Any = None) -> defer.Deferred[str]:
        """Move the session to another backend (`prefer`, a BackendState, if it can take
        it); fires with the outcome: `migrated`, `skipped: <why>` or `failed: <why>`."""
        blocker = self.migration_blocker()
        if blocker is not None:
            self.balancer.session_migrated(self, None, f"skipped: {blocker}")
            return defer.succeed(f"skipped: {blocker}")
        return defer.ensureDeferred(self._migrate(reason, prefer))

    async def _migrate(self, reason: str, prefer: Any) -> str:
        old = self.backend
        old_state = self.backend_state
        assert old is not None and old_state is not None
        self.migrating = True
        try:
            deadline = self.balancer.clock.seconds() + self.lane.config.backend_total_timeout
            leg = await self._connect(
                [old_state.id],
                attempt=self.reconnects + 1,
                prefer=prefer,
                deadline=deadline,
                attach=False,
            )
        except NoBackendError as e:
            outcome = "failed: " + ("; ".join(e.errors) or e.reason)
            self.balancer.session_migrated(self, None, outcome)
            return outcome
        except defer.CancelledError:
            self.balancer.session_migrated(self, None, "failed: client left")
            return "failed: client left"
        finally:
            self.migrating = False
        if self.client_gone or self.backend is not old or self.client.state != OPEN:
            # The session ended or failed over while the new leg was dialled.
            self._release(leg, leg.backend_state, "session moved on")
            self.balancer.session_migrated(self, None, "failed: the session moved on")
            return "failed: the session moved on"
        self._switch(old, leg)
        old_state.leaving += 1
        replay(self, leg)  # migrate.replay_first: before any new client message
        self.balancer.session_migrated(self, old_state.id, "migrated")
        self._drain(old, old_state, reason)
        return "migrated"

    def _switch(self, old: BackendProtocol, leg: BackendProtocol) -> None:
        """From now on the client's messages go to `leg`; `old` still relays to the client."""
        client = self.client
        unpair(client)  # the client's writes were paced by the old leg's reads
        client.partner = leg
        leg.partner = client
        settle(self)  # what went over the old leg so far is the old backend's
        self.backend, self.backend_state = leg, leg.backend_state
        self.reconnects += 1
        self.unanswered = 0
        self.asked_at = None  # a reply crossing the switch is not timed
        self.leg_opened = self.balancer.clock.seconds()
        pair_flow(client, leg)
        _count_what_it_sends(old)

    def _drain(self, old: BackendProtocol, state: Any, reason: str, waited: float = 0.0) -> None:
        heard, old.heard = old.heard, 0
        quiet = not heard and waited > 0
        if self.client_gone or old.state != OPEN or quiet or waited >= MAX_DRAIN:
            state.leaving -= 1
            self._release(old, state, MIGRATED)
            return
        self.balancer.clock.callLater(QUIET, self._drain, old, state, reason, waited + QUIET)

    def _release(self, leg: BackendProtocol, state: Any, why: str) -> None:
        """Let go of a leg that is not (or no longer) the session's: close it with 1001."""
        leg.partner = None
        leg.session = None
        if state is not None:
            self.lane.pool.session_closed(state)
            if state.removed:
                self.balancer.backend_idle(state)
        if leg.state == OPEN:
            leg.sendCloseFrame(CLOSE_GOING_AWAY, why.encode())


def _count_what_it_sends(leg: Any) -> None:
    # Only a leg being drained pays for counting its messages: its own two entry points
    # (Autobahn's onMessage, the fast path's relayed) are wrapped on the instance.
    cls = type(leg)
    leg.heard = 0

    def on_message(payload: bytes, is_binary: bool) -> None:
        leg.heard += 1
        _as_old_leg(leg, cls.onMessage, payload, is_binary)

    def relayed(size: int) -> None:
        leg.heard += 1
        _as_old_leg(leg, cls.relayed, size)

    leg.onMessage = on_message
    leg.relayed = relayed


def _as_old_leg(leg: Any, relay: Any, *args: Any) -> None:
    # The old backend's message is charged to it, not to the new leg's share; it answers
    # none of the client messages sent since the switch (those went to the new backend).
    session = leg.session
    if session is None:
        relay(leg, *args)
        return
    messages, octets = session.msgs_out, session.bytes_out
    asked, unanswered = session.asked_at, session.unanswered
    session.asked_at = None
    relay(leg, *args)
    session.asked_at, session.unanswered = asked, unanswered
    drained_message(
        session, leg.backend_state, session.msgs_out - messages, session.bytes_out - octets
    )
