"""The state every session holds, and how a session ends (`RelaySession` is built on it:
`dialing` < `failover` < `session`)."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.internet import defer

from wsbalancer.config import DEFAULT_POOL
from wsbalancer.relay.interfaces import ISessionEvents
from wsbalancer.relay.leg_traffic import settle
from wsbalancer.wire.flow import resume
from wsbalancer.wire.states import CLOSE_BAD_GATEWAY, CLOSE_GOING_AWAY, CLOSED, NOT_ON_WIRE, OPEN

if TYPE_CHECKING:
    from wsbalancer.relay.protocols import BackendProtocol, FrontendProtocol
    from wsbalancer.upstream.pool import BackendState
    from wsbalancer.upstream.routing import Lane

GATEWAY_TIMEOUT = 504
NO_ANSWER_IN_TIME = "no backend answered in time"


class NoBackendError(Exception):
    """No backend took the session; `status` is what the client is told (a backend's 4xx,
    503 when none is left to try, 504 when the dial budget ran out); `retry_after`, when
    admission refused the dials, is the Retry-After the client is given."""

    def __init__(
        self,
        status: int,
        reason: str,
        errors: list[str],
        reached: bool = False,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.errors = errors
        self.reached = reached  # some backend answered, but not with a usable session
        self.retry_after = retry_after


class SessionBase:
    """A session's state (its two legs, the backend it sits on, its counters) and how it
    ends: the close codes each side is sent, the accounting done once."""

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
        "migrating",
        "replay",
        "leg_base",
        "asked_at",
    )

    def __init__(self, balancer: ISessionEvents, client: FrontendProtocol) -> None:
        self.balancer = balancer
        self.id: int = next(balancer.session_ids)
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
        self.migrating = False  # a make-before-break migration is under way (migration.py)
        self.replay: list[tuple[bytes, bool]] | None = None  # replay.py, when asked for
        # The counters when the last backend leg was settled (leg_traffic.py); None: zeros
        self.leg_base: list[int] | None = None
        # When the oldest unanswered client message went out (clock seconds), if one is
        self.asked_at: float | None = None

    @property
    def hooks(self) -> list[Any]:
        """The message hooks this session's messages pass, in order."""
        return self.balancer.hooks  # type: ignore[no-any-return]

    @property
    def compression_level(self) -> int:
        """The zlib level the legs compress with."""
        return self.balancer.config.compression_level  # type: ignore[no-any-return]

    def wants_splice(self) -> bool:
        """Whether this session's pool forwards frames as they are (hooks need messages)."""
        return self.lane.config.relay_mode == "splice" and not self.balancer.hooks

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
        settle(self)
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
        resume(backend)
        if backend.state == OPEN:
            code = _wire_code(code)
            if code == CLOSE_BAD_GATEWAY:
                code = CLOSE_GOING_AWAY
            backend.sendCloseFrame(code=code, reasonUtf8=_reason_bytes(code, reason))


def _wire_code(code: int | None) -> int | None:
    return CLOSE_BAD_GATEWAY if code in NOT_ON_WIRE else code


def _reason_bytes(code: int | None, reason: bytes | str | None) -> bytes | None:
    if code is None or not reason:
        return None
    data = reason.encode("utf-8") if isinstance(reason, str) else reason
    return data[:123]
