"""The count poller: reads every backend's metric JSON with treq, concurrently, each with a
timeout; a failure is logged, counted and flags the backend stale, and never stops the loop."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import treq
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.interfaces import IReactorTime

from .logs import logger
from .pool import BackendPool, BackendState, PodInfo

MAX_METRIC_BODY = 64 * 1024


class MetricError(Exception):
    """A metric fetch answered, but not with a usable count."""


def parse_metric(body: bytes) -> PodInfo:
    """Read the seed backends' metric JSON; anything but a non-negative integer
    `agentsConnections` is an error, never a zero."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise MetricError(f"body is not JSON ({e.__class__.__name__})")
    if not isinstance(data, dict):
        raise MetricError("JSON is not an object")
    count = data.get("agentsConnections")
    if isinstance(count, bool) or not isinstance(count, int):
        raise MetricError("agentsConnections is missing or not an integer")
    if count < 0:
        raise MetricError(f"agentsConnections is negative ({count})")

    def text(key: str) -> str | None:
        value = data.get(key)
        return str(value)[:256] if value not in (None, "") else None

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
            if backend.last_poll_error != error:
                self.log.warn(
                    "backend {backend} count unavailable from {url}: {error}",
                    backend=backend.id,
                    url=backend.config.metric_url,
                    error=error,
                )
            self.pool.poll_failed(backend, error)
            self._report(backend, started, error)

        d.addCallbacks(succeeded, failed)
        d.addErrback(lambda f: self.log.failure("applying a poll result failed", f))
        return d

    def _report(self, backend: BackendState, started: float, error: str | None) -> None:
        if self.on_result is not None:
            self.on_result(backend, self.clock.seconds() - started, error)

    async def _fetch(self, url: str) -> PodInfo:
        response = await self.http.get(url, headers={"Accept": ["application/json"]})
        length = getattr(response, "length", None)
        if isinstance(length, int) and length > MAX_METRIC_BODY:
            await _read_limited(response, 0)  # aborts the transfer unread
        if response.code != 200:
            await _read_limited(response, MAX_METRIC_BODY)  # keeps the connection reusable
            raise MetricError(f"HTTP {response.code}")
        return parse_metric(await _read_limited(response, MAX_METRIC_BODY))


async def _read_limited(response: Any, limit: int) -> bytes:
    """The body, or MetricError (and the transfer aborted) once it grows past `limit`."""
    chunks: list[bytes] = []
    size = 0

    def collect(data: bytes) -> None:
        nonlocal size
        size += len(data)
        if size > limit:
            raise MetricError(f"body too large (over {MAX_METRIC_BODY} bytes)")
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
