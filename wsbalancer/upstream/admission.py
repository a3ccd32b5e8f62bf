"""Reconnect-storm admission: how many backend upgrades per second each backend and each
pool is given, as token buckets, so a restart's wave of reconnects (or of failovers) reaches
the backends at a pace they take instead of all at once.

A dial takes a token of its backend's bucket and of its pool's; when there is none, it
waits in its backend's queue, and is let go (in order) once the buckets have refilled; past
`admission.queue` waiting, or a wait longer than `admission.max_wait`, the dial is refused
and the client is told when to come back. Off (every dial goes at once) while
`admission.rate` and `admission.pool_rate` are 0.
"""

from __future__ import annotations

import math
import random
from collections import deque
from typing import Any

from twisted.internet import defer

from wsbalancer.config import PoolConfig


class AdmissionRefusedError(Exception):
    """No token in time: the client is answered 503 with `retry_after` seconds."""

    def __init__(self, reason: str, retry_after: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; tokens may be reserved ahead."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def _refill(self, now: float) -> None:
        self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def due_in(self, now: float) -> float:
        """Seconds until the next token not yet reserved is due (0: one is there now)."""
        self._refill(now)
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate

    def reserve(self, now: float) -> float:
        """Take the next token; seconds until it is due."""
        wait = self.due_in(now)
        self.tokens -= 1
        return wait

    def configure(self, rate: float, burst: int) -> None:
        """New settings; what is saved or reserved carries over, within the new burst."""
        self.rate, self.burst = rate, burst
        self.tokens = min(self.tokens, float(burst))


class Admission:
    """One pool's admission: a bucket per backend and one for the pool, a bounded queue.

    A token is taken when the dial is let go, not when it is queued: when the process is
    late (busy taking in a storm's handshakes), the dials that were due meanwhile go as the
    buckets refill, never all at once, so a backend sees no more than rate and burst. With
    worker processes, each one has its `share` of the rates and bursts."""

    def __init__(self, config: PoolConfig, clock: Any, rng: Any = None) -> None:
        self.clock = clock
        self.rng = rng or random.Random()
        self.buckets: dict[str, TokenBucket] = {}
        self.pool_bucket: TokenBucket | None = None
        self.queues: dict[str, deque[defer.Deferred[None]]] = {}  # waiting dials by backend
        self.waiting = 0  # dials waiting for their token now
        self.refused = 0
        self.share = 1.0  # of the rates, this process's (1 / worker processes)
        self.call: Any = None  # the next release
        # When each backend (and the pool, key None) was last sent upgrade requests: the
        # last second's, checked as each request is about to be written (`write_delay`).
        self.sent: dict[str | None, deque[float]] = {}
        self.configure(config)

    def set_share(self, share: float) -> None:
        """This process's part of the rates and bursts (one of several worker processes)."""
        self.share = share
        self.configure(self.config)

    def configure(self, config: PoolConfig) -> None:
        """Take a pool's (new) admission settings; buckets keep what they hold."""
        self.config = config
        self.rate = config.admission_rate * self.share
        self.pool_rate = config.admission_pool_rate * self.share
        self.burst = config.admission_burst
        self.queue = config.admission_queue
        self.max_wait = config.admission_max_wait
        now = self.clock.seconds()
        if self.pool_rate:
            burst = self._burst(self.pool_rate)
            if self.pool_bucket is None:
                self.pool_bucket = TokenBucket(self.pool_rate, burst, now)
            else:
                self.pool_bucket.configure(self.pool_rate, burst)
        else:
            self.pool_bucket = None
        if self.rate:
            for bucket in self.buckets.values():
                bucket.configure(self.rate, self._burst(self.rate))
        else:
            self.buckets.clear()
        if self.waiting:
            self._release()  # the new pace applies to those waiting, or none is left

    @property
    def enabled(self) -> bool:
        return bool(self.rate or self.pool_rate)

    def _burst(self, rate: float) -> int:
        # Unset, a bucket holds one second's worth (at least one token); a worker process
        # saves up its share of a burst that is set.
        if not self.burst:
            return max(1, math.ceil(rate))
        return max(1, math.ceil(self.burst * self.share))

    def _buckets(self, backend_id: str) -> list[TokenBucket]:
        buckets = []
        if self.rate:
            bucket = self.buckets.get(backend_id)
            if bucket is None:
                bucket = TokenBucket(self.rate, self._burst(self.rate), self.clock.seconds())
                self.buckets[backend_id] = bucket
            buckets.append(bucket)
        if self.pool_bucket is not None:
            buckets.append(self.pool_bucket)
        return buckets

    def forget(self, backend_id: str) -> None:
        """A backend left the pool: its bucket goes with it."""
        self.buckets.pop(backend_id, None)
        self.sent.pop(backend_id, None)

    async def admit(self, backend_id: str, limit: float | None = None) -> None:
        """Wait for this dial's token to `backend_id`; AdmissionRefusedError when the queue is
        full or the token would come later than `admission.max_wait` (or `limit`)."""
        buckets = self._buckets(backend_id)
        if not buckets:
            return
        now = self.clock.seconds()
        queue = self.queues.setdefault(backend_id, deque())
        ahead = self.waiting if self.pool_bucket is not None else len(queue)
        if not ahead and all(bucket.due_in(now) == 0 for bucket in buckets):
            for bucket in buckets:
                bucket.tokens -= 1
            return
        wait = self._expected_wait(backend_id, len(queue), now)
        budget = self.max_wait if limit is None else min(self.max_wait, limit)
        if self.waiting >= self.queue or wait > budget:
            self.refused += 1
            why = "queue full" if self.waiting >= self.queue else "no upgrade slot in time"
            raise AdmissionRefusedError(
                f"backends busy ({why}), retry later", self._retry_after(max(wait, 1.0))
            )

        def cancel(d: defer.Deferred[None]) -> None:
            # The client left: its place goes to the next one.
            queue.remove(d)
            self.waiting -= 1

        turn: defer.Deferred[None] = defer.Deferred(cancel)
        queue.append(turn)
        self.waiting += 1
        self._schedule(now)
        await turn

    def _expected_wait(self, backend_id: str, ahead: int, now: float) -> float:
        """When a dial queued now would go: after those ahead of it, as the buckets refill."""
        wait = 0.0
        bucket = self.buckets.get(backend_id)
        if bucket is not None:
            bucket._refill(now)
            wait = (ahead + 1 - bucket.tokens) / bucket.rate
        pool = self.pool_bucket
        if pool is not None:
            pool._refill(now)
            wait = max(wait, (self.waiting + 1 - pool.tokens) / pool.rate)
        return max(0.0, wait)

    def _release(self) -> None:
        """Let go of every waiting dial whose tokens are there now, in order per backend."""
        self.call = None
        now = self.clock.seconds()
        for backend_id, queue in self.queues.items():
            while queue:
                buckets = self._buckets(backend_id)
                if any(bucket.due_in(now) > 0 for bucket in buckets):
                    break
                for bucket in buckets:
                    bucket.tokens -= 1
                self.waiting -= 1
                queue.popleft().callback(None)
        self._schedule(now)

    def _schedule(self, now: float) -> None:
        """Be back when the first waiting dial's tokens are due."""
        due = [
            max((b.due_in(now) for b in self._buckets(backend_id)), default=0.0)
            for backend_id, queue in self.queues.items()
            if queue
        ]
        if not due:
            return
        delay = min(due)
        if self.call is not None and self.call.active():
            if self.call.getTime() <= now + delay:
                return
            self.call.cancel()
        self.call = self.clock.callLater(delay, self._release)

    def write_delay(self, backend_id: str) -> float:
        """How long an upgrade request to `backend_id`, its dial admitted and connected,
        waits before it is written (0: now, and it is counted as sent).

        The buckets pace the dials; a dial's connect takes its own time, longer when the
        process is busy, so requests admitted a moment apart can reach a backend together.
        This holds what a backend is sent in any second to rate + burst all the same."""
        now = self.clock.seconds()
        checks: list[tuple[str | None, float]] = []
        if self.rate:
            checks.append((backend_id, self.rate + self._burst(self.rate)))
        if self.pool_rate:
            checks.append((None, self.pool_rate + self._burst(self.pool_rate)))
        wait = 0.0
        for key, limit in checks:
            sent = self.sent.setdefault(key, deque())
            while sent and sent[0] <= now - 1.0:
                sent.popleft()
            if len(sent) >= limit:
                wait = max(wait, sent[0] + 1.0 - now)
        if wait > 0:
            return wait + 0.001
        for key, _ in checks:
            self.sent[key].append(now)
        return 0.0

    def _retry_after(self, wait: float) -> int:
        # Spread the comebacks: a storm told "in 3 s" all at once would come back as one.
        return math.ceil(wait + self.rng.uniform(0, max(wait, self.max_wait)))
