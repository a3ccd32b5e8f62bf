"""Reconnect-storm admission: how many backend upgrades per second each backend and each
pool is given, as token buckets, so a restart's wave of reconnects (or of failovers) reaches
the backends at a pace they take instead of all at once.

A dial reserves the next token of its backend's bucket and of its pool's, and waits until
that token is due. Tokens may be reserved ahead (a bucket goes below zero), so waiting
handshakes are served in order without polling; past `admission.queue` waiting, or a wait
longer than `admission.max_wait`, the dial is refused and the client is told when to come
back. Off (every dial goes at once) while `admission.rate` and `admission.pool_rate` are 0.
"""

from __future__ import annotations

import math
import random
from typing import Any

from twisted.internet import defer
from twisted.internet.task import deferLater

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
    """One pool's admission: a bucket per backend and one for the pool, a bounded queue."""

    def __init__(self, config: PoolConfig, clock: Any, rng: Any = None) -> None:
        self.clock = clock
        self.rng = rng or random.Random()
        self.buckets: dict[str, TokenBucket] = {}
        self.pool_bucket: TokenBucket | None = None
        self.waiting = 0  # dials waiting for their token now
        self.refused = 0
        self.configure(config)

    def configure(self, config: PoolConfig) -> None:
        """Take a pool's (new) admission settings; buckets keep what they hold."""
        self.rate = config.admission_rate
        self.pool_rate = config.admission_pool_rate
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

    @property
    def enabled(self) -> bool:
        return bool(self.rate or self.pool_rate)

    def _burst(self, rate: float) -> int:
        # Unset, a bucket holds one second's worth (at least one token).
        return self.burst or max(1, math.ceil(rate))

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

    async def admit(self, backend_id: str, limit: float | None = None) -> None:
        """Wait for this dial's token to `backend_id`; AdmissionRefusedError when the queue is
        full or the token would come later than `admission.max_wait` (or `limit`)."""
        buckets = self._buckets(backend_id)
        if not buckets:
            return
        now = self.clock.seconds()
        wait = max(bucket.due_in(now) for bucket in buckets)
        budget = self.max_wait if limit is None else min(self.max_wait, limit)
        if wait > 0 and (self.waiting >= self.queue or wait > budget):
            self.refused += 1
            why = "queue full" if self.waiting >= self.queue else "no upgrade slot in time"
            raise AdmissionRefusedError(
                f"backends busy ({why}), retry later", self._retry_after(max(wait, 1.0))
            )
        for bucket in buckets:
            bucket.reserve(now)
        if wait <= 0:
            return
        self.waiting += 1
        try:
            await deferLater(self.clock, wait, lambda: None)
        except defer.CancelledError:
            raise  # the client left: its token stays spent (the pace only errs slower)
        finally:
            self.waiting -= 1

    def _retry_after(self, wait: float) -> int:
        # Spread the comebacks: a storm told "in 3 s" all at once would come back as one.
        return math.ceil(wait + self.rng.uniform(0, max(wait, self.max_wait)))
