"""The count poller: reads every backend's metric JSON with treq, concurrently, each with a
timeout; a failure is logged, counted and flags the backend stale, and never stops the loop."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import treq
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.interfaces import IReactorTime

from wsbalancer.observe.logs import logger
from wsbalancer.upstream.pool import BackendPool, BackendState, PodInfo

MAX_METRIC_BODY = 64 * 1024
# The largest count taken from a report: every integer up to it is exact as a float, so no
# reported value can overflow the pick's arithmetic or an exporter (Prometheus, JSON).
MAX_COUNT = 2**53
# Answers that say "this server is alive but has no count endpoint here": what a plain
# WebSocket server (Autobahn, ws, gorilla, websockets) answers a plain GET with, or a
# missing route (404, 405, 410). 5xx, 408 and 429 stay errors: an overloaded or failing
# count endpoint is a sign about the backend, not the absence of one.
NO_COUNT_STATUSES = frozenset(range(400, 500)) - {408, 429}


class MetricError(Exception):
    """A metric fetch answered, but not with a usable count."""


class NoCountEndpointError(MetricError):
    """The backend answered HTTP, but has no count endpoint at its metric URL: it is alive,
    and balanced on this instance's own sessions."""


def parse_metric(body: bytes) -> PodInfo:
    """Read the seed backends' metric JSON. A body that is not JSON at all means there is no
    count endpoint (NoCountEndpointError); JSON without an integer `agentsConnections` in
    0..MAX_COUNT is an error (MetricError), never a zero."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise NoCountEndpointError("no count endpoint (the answer is not JSON)")
    except ValueError:  # JSON, with a number past the interpreter's digit limit
        raise MetricError("JSON holds a number too long to read")
    except RecursionError:
        raise MetricError("JSON is nested too deeply")
    if not isinstance(data, dict):
        raise MetricError("JSON is not an object")
    count = data.get("agentsConnections")
    if isinstance(count, bool) or not isinstance(count, int):
        raise MetricError("agentsConnections is missing or not an integer")
    if count < 0:
        shown = str(count) if count >= -MAX_COUNT else "below -2^53"
        raise MetricError(f"agentsConnections is negative ({shown})")
    if count > MAX_COUNT:
        raise MetricError("agentsConnections is out of range (over 2^53)")

    def text(key: str) -> str | None:
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
            return None  # only names (and numbers as names) are kept; structures are not
        # Bounded, and valid UTF-8 whatever escapes the JSON held (lone surrogates).
        return str(value)[:256].encode("utf-8", "replace").decode("utf-8")

    return PodInfo(count, text("podName"), text("podIP"), text("nodeName"))


class CountPoller:
    """Polls the pool's backends; `poll_once` is what a TimerService calls."""

    log = logger("wsbalancer.poller")

    def __init__(
        self,
        pool: BackendPool,
        http_client: Any,
        clock: IReactorTime,
        timeout: float,
        on_result: Callable[[BackendState, float, str | None], None] | None = None,
    ) -> None:
        self.pool = pool
        self.http = http_client
        self.clock = clock
        self.timeout = timeout
        self.on_result = on_result

    def poll_once(self) -> Deferred[None]:
        """Fetch every backend once, concurrently; the Deferred never fails."""
        fetches = [
            self.poll_backend(b)
            for b in list(self.pool.backends.values())
            if b.config.metric_url is not None
        ]
        return DeferredList(fetches, consumeErrors=True).addCallback(lambda _: None)

    def poll_backend(self, backend: BackendState) -> Deferred[None]:
        """Fetch one backend's count and apply the result; never fails."""
        url = backend.config.metric_url
        assert url is not None, "backends without a metric endpoint are not polled"
        started = self.clock.seconds()
        self.pool.poll_started(backend)
        d: Deferred[Any] = ensureDeferred(self._fetch(url))

        def timed_out(result: Any, timeout: float) -> Any:
            raise MetricError(f"no answer within {timeout:g}s")

        d.addTimeout(self.timeout, self.clock, onTimeoutCancel=timed_out)

        def succeeded(pod: PodInfo) -> None:
            if backend.id not in self.pool.backends:
                return
            was_stale = backend.stale
            self.pool.poll_succeeded(backend, pod)
            if was_stale:
                self.log.info("backend {backend} metric endpoint answers again", backend=backend.id)
            self._report(backend, started, None)

        def failed(failure: Any) -> None:
            if backend.id not in self.pool.backends:
                return
            error = _describe(failure.value, self.timeout)
            if isinstance(failure.value, NoCountEndpointError):
                no_count(error)
                return
            if backend.last_poll_error != error:
                self.log.warn(
                    "backend {backend} count unavailable from {url}: {error}",
                    backend=backend.id,
                    url=backend.config.metric_url,
                    error=error,
                )
            self.pool.poll_failed(backend, error)
            self._report(backend, started, error)

        def no_count(reason: str) -> None:
            # Alive (it answered HTTP), but only this instance's own sessions are known:
            # said once, not on every poll.
            if backend.last_poll_error != reason:
                self.log.warn(
                    "backend {backend} has {reason} at {url}: it is balanced on this "
                    "instance's own sessions; its health comes from its answers and dials",
                    backend=backend.id,
                    url=backend.config.metric_url,
                    reason=reason,
                )
            self.pool.poll_no_count(backend, reason)
            self._report(backend, started, None)

        d.addCallbacks(succeeded, failed)
        d.addErrback(lambda f: self.log.failure("applying a poll result failed", f))
        return d

    def _report(self, backend: BackendState, started: float, error: str | None) -> None:
        if self.on_result is not None:
            self.on_result(backend, self.clock.seconds() - started, error)

    async def _fetch(self, url: str) -> PodInfo:
        response = await self.http.get(url, headers={"Accept": ["application/json"]})
        length = getattr(response, "length", None)
        declared_huge = isinstance(length, int) and length > MAX_METRIC_BODY
        # Aborted at once when declared too large; read to the end (bounded) otherwise, which
        # keeps the connection reusable.
        limit = 0 if declared_huge else MAX_METRIC_BODY
        if not 200 <= response.code < 300:
            try:
                await _read_limited(response, limit)
            except BodyTooLargeError:
                pass  # the status says it all
            if response.code in NO_COUNT_STATUSES:
                raise NoCountEndpointError(f"no count endpoint (HTTP {response.code})")
            raise MetricError(f"HTTP {response.code}")
        try:
            body = await _read_limited(response, limit)
        except BodyTooLargeError as e:
            if e.may_be_json():
                raise
            # A page that is not JSON, e.g. a web app's catch-all page: not a count endpoint.
            raise NoCountEndpointError("no count endpoint (the answer is not JSON)")
        return parse_metric(body)


class BodyTooLargeError(MetricError):
    """The body grew past the limit; `prefix` is what arrived before the transfer stopped."""

    def __init__(self, prefix: bytes) -> None:
        super().__init__(f"body too large (over {MAX_METRIC_BODY} bytes)")
        self.prefix = prefix

    def may_be_json(self) -> bool:
        """Whether the body could be a JSON count document, by its first character."""
        start = self.prefix.lstrip(b" \t\r\n")
        return not start or start[:1] == b"{"


async def _read_limited(response: Any, limit: int) -> bytes:
    """The body, or BodyTooLargeError (and the transfer aborted) once it grows past `limit`."""
    chunks: list[bytes] = []
    size = 0

    def collect(data: bytes) -> None:
        nonlocal size
        size += len(data)
        if size > limit:
            raise BodyTooLargeError((b"".join(chunks) + data)[:64])
        chunks.append(data)

    await treq.collect(response, collect)
    return b"".join(chunks)


def _describe(error: BaseException, timeout: float) -> str:
    from twisted.internet.defer import CancelledError, TimeoutError

    if isinstance(error, MetricError):
        return str(error)
    if isinstance(error, TimeoutError | CancelledError):
        return f"no answer within {timeout:g}s"
    text = str(error) or error.__class__.__name__
    return f"{error.__class__.__name__}: {text}"[:300]
