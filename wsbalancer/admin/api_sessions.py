"""The session routes of the admin API, `/api/sessions[/<id>[/failover]]`: list, show,
terminate with a close code, fail over to another backend. They see this process's
sessions; with worker processes, `AdminApi` asks the owning worker (`admin.api_workers`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.web.server import Request

from wsbalancer.admin.api_requests import DIGITS, ApiError, query_arg
from wsbalancer.wire.peers import peer_host

if TYPE_CHECKING:
    from wsbalancer.relay.balancer import Balancer
    from wsbalancer.relay.session import RelaySession


def session_view(balancer: Balancer, s: RelaySession) -> dict[str, Any]:
    """One session as the API shows it."""
    return {
        "id": s.id,
        "client": peer_host(s.client),
        "path": s.client.http_request_uri,
        "backend": s.backend_state.id if s.backend_state else None,
        "ageSeconds": round(balancer.clock.seconds() - s.started, 3),
        "subprotocol": s.subprotocol,
        "reconnecting": s.reconnecting,
        "reconnects": s.reconnects,
        "possiblyLost": s.lost,
        "messagesIn": s.msgs_in,
        "bytesIn": s.bytes_in,
        "messagesOut": s.msgs_out,
        "bytesOut": s.bytes_out,
    }


class SessionRoutes:
    """The handlers of the session routes: each returns (status, document)."""

    def __init__(self, balancer: Balancer) -> None:
        self.balancer = balancer

    def list_sessions(self, request: Request) -> tuple[int, Any]:
        backend = query_arg(request, "backend")
        sessions = [
            s
            for s in self.balancer.sessions.values()
            if backend is None or (s.backend_state and s.backend_state.id == backend)
        ]
        return 200, {"sessions": [session_view(self.balancer, s) for s in sessions]}

    def get_session(self, request: Request, session_id: str) -> tuple[int, Any]:
        return 200, session_view(self.balancer, self._session(session_id))

    def terminate_session(self, request: Request, session_id: str) -> tuple[int, Any]:
        session = self._session(session_id)
        code_text = query_arg(request, "code", "1000") or ""
        reason = query_arg(request, "reason") or "terminated by the operator"
        if not DIGITS.fullmatch(code_text) or not (
            int(code_text) == 1000
            or 1001 <= int(code_text) <= 1003
            or 1007 <= int(code_text) <= 1014
            or 3000 <= int(code_text) <= 4999
        ):
            raise ApiError(
                400,
                "bad_parameter",
                "code must be a close code that may be sent (1000-1003, 1007-1014, 3000-4999)",
            )
        if len(reason.encode()) > 123:
            raise ApiError(400, "bad_parameter", "reason must be at most 123 bytes")
        session.terminate(int(code_text), reason)
        return 200, {"terminated": session.id, "code": int(code_text), "reason": reason}

    def fail_over_session(self, request: Request, session_id: str) -> tuple[int, Any]:
        session = self._session(session_id)
        if session.reconnecting or session.backend is None:
            raise ApiError(409, "conflict", "the session is already failing over")
        before = session.backend_state.id if session.backend_state else None
        session.move("moved by the operator")
        return 202, {"session": session.id, "from": before, "reconnecting": True}

    def migrate_session(self, request: Request, session_id: str) -> tuple[int, Any]:
        session = self._session(session_id)
        blocker = session.migration_blocker()
        if blocker is not None:
            raise ApiError(409, "conflict", f"the session cannot migrate now: {blocker}")
        before = session.backend_id
        session.migrate("migrated by the operator")
        return 202, {"session": session.id, "from": before, "migrating": True}

    def rebalancing(self, request: Request) -> tuple[int, Any]:
        return 200, self.balancer.rebalancer.view()

    def _session(self, session_id: str) -> RelaySession:
        session = (
            self.balancer.sessions.get(int(session_id)) if DIGITS.fullmatch(session_id) else None
        )
        if session is None:
            raise ApiError(404, "unknown_session", f"no open session {session_id!r}")
        return session
