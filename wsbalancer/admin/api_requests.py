"""What the admin API asks of a request, and how it answers: the bearer-token check and the
JSON body rules (64 KiB, application/json, an object), which `admin.http` also applies to a
request's head before its body is read; `ApiError`, the error answer; query arguments; and
`finish_later`, for answers that come once something asynchronous is done.
"""

from __future__ import annotations

import hmac
import json
import re
from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.server import NOT_DONE_YET, Request

from wsbalancer.observe.logs import logger

_log = logger("wsbalancer.admin")
MAX_BODY = 64 * 1024
DIGITS = re.compile(r"[0-9]{1,15}")  # str.isdigit() also takes "²", which int() refuses
JSON_ONLY = "request bodies must be Content-Type: application/json"


def bearer_token_ok(authorization: bytes | None, token: str) -> bool:
    """Whether an Authorization header value is `Bearer <token>` (compared in constant time)."""
    scheme, _, value = (authorization or b"").decode("latin-1").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        value.strip().encode("latin-1"), token.encode()
    )


def is_json_type(content_type: bytes | None) -> bool:
    """Whether a Content-Type header says application/json (parameters such as charset aside)."""
    media = (content_type or b"").split(b";", 1)[0].strip().lower()
    return media == b"application/json"


class ApiError(Exception):
    """An error answer: HTTP status, a short code, and a sentence."""

    def __init__(self, status: int, error: str, reason: str, allow: list[str] = ()) -> None:  # type: ignore[assignment]
        super().__init__(reason)
        self.status, self.error, self.reason = status, error, reason
        self.allow = list(allow)


def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object body ({} when there is none), or the ApiError to answer."""
    raw = request.content.read(MAX_BODY + 1) if request.content else b""
    if len(raw) > MAX_BODY:
        raise ApiError(413, "body_too_large", f"request body over {MAX_BODY} bytes")
    if not raw.strip():
        return {}
    if not is_json_type(request.getHeader(b"content-type")):
        raise ApiError(415, "unsupported_media_type", JSON_ONLY)
    try:
        body = json.loads(raw)
    except ValueError:
        raise ApiError(400, "bad_body", "body is not JSON")
    except RecursionError:  # json recurses per nesting level: [[[[... is not an answer 500
        raise ApiError(400, "bad_body", "body is nested too deeply")
    if not isinstance(body, dict):
        raise ApiError(400, "bad_body", "body must be a JSON object")
    return body


def query_arg(request: Request, name: str, default: str | None = None) -> str | None:
    """The first value of a query argument; `default` only when it is not given at all
    (given empty, it is the empty string, for the handler to refuse)."""
    values = request.args.get(name.encode())
    return values[0].decode("utf-8", "replace") if values else default


def finish_later(request: Request, answer: Deferred[Any]) -> Any:
    """Write what `answer` fires with (bytes) and finish, unless the client has left."""
    gone: list[bool] = []
    request.notifyFinish().addErrback(lambda _: gone.append(True))

    def write(body: bytes) -> None:
        if not gone:
            request.write(body)
            request.finish()

    def failed(failure: Any) -> None:
        _log.failure("admin request {path} failed", failure, path=request.path)
        if not gone:
            request.setResponseCode(500)
            write(b'{"error": "internal", "reason": "see the balancer\'s log"}\n')

    answer.addCallback(write).addErrback(failed)
    return NOT_DONE_YET


def request_uri(request: Request) -> str:
    """The request's path and query, as the event log and the worker calls name it."""
    return request.uri.decode("utf-8", "replace")
