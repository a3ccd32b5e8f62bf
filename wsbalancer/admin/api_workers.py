"""The admin API with worker processes: a session's calls go to the worker that owns it,
the session list and the backends' own figures are gathered from all of them, and a change
to backends or frontends is made on every worker before the caller hears it is done.
`workers` is the service's `WorkerPool` (`call`, `gather`, `broadcast`, `ready_workers`).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.web.server import Request

from wsbalancer.admin.api_requests import MAX_BODY, finish_later, request_uri
from wsbalancer.observe.worker_metrics import add_backend_figures


def from_worker(workers: Any, request: Request, owner: int, method: str) -> Any:
    """Answer with what the worker that owns the session said (404 once it has gone)."""

    async def answer() -> bytes:
        if owner not in workers.ready_workers():
            request.setResponseCode(404)
            return b'{"error": "not_found", "reason": "no such session"}\n'
        status, body = await workers.call(
            owner, method, request_uri(request), _body_of(request), _auth(request)
        )
        request.setResponseCode(status)
        return body

    return finish_later(request, ensureDeferred(answer()))


def all_sessions(workers: Any, request: Request, own: dict[str, Any]) -> Any:
    """This process's session list (`own`) with every other worker's appended."""

    async def answer() -> bytes:
        for _, body in await workers.gather(request_uri(request), _auth(request)):
            own["sessions"] += json.loads(body).get("sessions", [])
        return json.dumps(own, indent=1).encode() + b"\n"

    return finish_later(request, ensureDeferred(answer()))


def all_backend_figures(workers: Any, request: Request, status: int, document: Any) -> Any:
    """A backend view with every process's own figures (its sessions, dials, picks)
    summed; the fleet-wide ones (health, reported count, state) are the master's."""
    own = document["backends"] if "backends" in document else [document]

    async def answer() -> bytes:
        for _, body in await workers.gather(request_uri(request), _auth(request)):
            doc = json.loads(body)
            add_backend_figures(own, doc["backends"] if "backends" in doc else [doc])
        request.setResponseCode(status)
        return json.dumps(document, indent=1).encode() + b"\n"

    return finish_later(request, ensureDeferred(answer()))


def broadcast(workers: Any, request: Request, method: str, body: bytes) -> Any:
    """Make the same change on every worker, then answer `body`."""
    changed = ensureDeferred(
        workers.broadcast(method, request_uri(request), _body_of(request), _auth(request))
    )
    return finish_later(request, changed.addCallback(lambda _: body))


def _body_of(request: Request) -> bytes:
    # From the start: the handler here has read it already.
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    return content.read(MAX_BODY + 1)


def _auth(request: Request) -> dict[str, str]:
    # The caller's own token goes along, so each worker checks it as this process did.
    headers = {"Content-Type": "application/json"}
    token = request.getHeader(b"authorization")
    if token:
        headers["Authorization"] = token.decode("latin-1")
    return headers
