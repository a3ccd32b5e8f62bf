"""Reconnect-storm admission (`admission.*`): token buckets per backend and per pool, a
bounded queue of waiting handshakes, 503 with a jittered Retry-After past it.

Unit tests drive `Admission` on a Clock; one integration test sends a burst of real clients
through a real balancer and checks the pace the backend saw and every client's answer."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace
from typing import Any

import pytest
import pytest_twisted
import treq
import websockets
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from websockets.exceptions import InvalidStatus

from wsbalancer.config import ConfigError, PoolConfig, load
from wsbalancer.devtools.demo.backend import DemoProtocol
from wsbalancer.upstream.admission import Admission, AdmissionRefusedError, TokenBucket

from .helpers import aio, start_backend, start_balancer


def pool(**settings: Any) -> PoolConfig:
    return replace(PoolConfig(backends=()), **settings)


def admitted_at(admission: Admission, clock: Clock, n: int, backend: str = "b1") -> list[Any]:
    """Start n dials at once; each result is the clock time its token came, or the refusal."""
    results: list[Any] = [None] * n
    for i in range(n):
        d = defer.ensureDeferred(admission.admit(backend))
        d.addCallbacks(
            lambda _, i=i: results.__setitem__(i, clock.seconds()),
            lambda f, i=i: results.__setitem__(i, f.value),
        )
    return results


def test_a_bucket_gives_its_burst_at_once_then_one_token_per_period() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.reserve(0.0) for _ in range(5)] == [0.0, 0.0, 0.0, 0.5, 1.0]
    assert bucket.due_in(10.0) == 0.0  # refilled, but never past the burst
    assert bucket.tokens == 3.0


def test_dials_past_the_burst_wait_their_turn_in_order() -> None:
    clock = Clock()
    admission = Admission(pool(admission_rate=4.0, admission_burst=2), clock)
    results = admitted_at(admission, clock, 5)
    assert results[:2] == [0.0, 0.0] and results[2:] == [None, None, None]
    assert admission.waiting == 3
    for _ in range(8):
        clock.advance(0.125)
    assert results == [0.0, 0.0, 0.25, 0.5, 0.75]
    assert admission.waiting == 0


def test_past_the_queue_or_the_longest_wait_a_dial_is_refused_with_a_jittered_retry_after() -> None:
    clock = Clock()
    admission = Admission(
        pool(admission_rate=1.0, admission_burst=1, admission_queue=2, admission_max_wait=5.0),
        clock,
        rng=random.Random(7),
    )
    results = admitted_at(admission, clock, 4)
    assert results[0] == 0.0 and results[1:3] == [None, None]
    refusal = results[3]
    assert isinstance(refusal, AdmissionRefusedError) and "queue full" in refusal.reason
    assert 3 <= refusal.retry_after <= 3 + 5 + 1  # the wait it would have had, plus jitter
    clock.advance(1)
    clock.advance(1)
    assert results[1:3] == [1.0, 2.0]
    # A wait longer than max_wait is refused even with room in the queue.
    slow = Admission(pool(admission_rate=0.1, admission_burst=1, admission_max_wait=2.0), clock)
    later = admitted_at(slow, clock, 2)
    assert later[0] == clock.seconds() and isinstance(later[1], AdmissionRefusedError)
    assert "in time" in later[1].reason
    retries = {
        Admission(
            pool(admission_rate=1.0, admission_queue=0), Clock(), rng=random.Random(s)
        )._retry_after(3.0)
        for s in range(20)
    }
    assert len(retries) > 1  # spread, not one instant for the whole storm


def test_each_backend_has_its_bucket_and_the_pool_one_over_all() -> None:
    clock = Clock()
    per_backend = Admission(pool(admission_rate=1.0, admission_burst=1), clock)
    assert admitted_at(per_backend, clock, 1, "b1") == [0.0]
    assert admitted_at(per_backend, clock, 1, "b2") == [0.0]  # its own bucket
    pooled = Admission(pool(admission_pool_rate=1.0, admission_burst=1), clock)
    first = admitted_at(pooled, clock, 1, "b1")
    second = admitted_at(pooled, clock, 1, "b2")  # the pool's token is spent
    assert first == [0.0] and second == [None]
    clock.advance(1.0)
    assert second == [1.0]


def test_a_cancelled_wait_frees_its_place_in_the_queue() -> None:
    clock = Clock()
    admission = Admission(pool(admission_rate=1.0, admission_burst=1, admission_queue=1), clock)
    admitted_at(admission, clock, 1)
    waiting = defer.ensureDeferred(admission.admit("b1"))
    assert admission.waiting == 1
    waiting.cancel()
    waiting.addErrback(lambda f: f.trap(defer.CancelledError))
    assert admission.waiting == 0


def test_off_by_default_and_after_a_reload_that_sets_zero() -> None:
    clock = Clock()
    admission = Admission(PoolConfig(backends=()), clock)
    assert not admission.enabled
    admission.configure(pool(admission_rate=10.0))
    assert admission.enabled and admitted_at(admission, clock, 1) == [0.0]
    admission.configure(pool(admission_rate=0.0))
    assert not admission.enabled and admission.buckets == {}


def test_the_keys_are_read_per_pool_and_checked() -> None:
    config = load(
        None,
        environ={},
        overrides=[("admission.rate", "500/s", "t"), ("admission.max_wait", "2s", "t")],
        backends=["a=ws://127.0.0.1:1"],
    )
    assert (config.admission_rate, config.admission_max_wait) == (500.0, 2.0)
    with pytest.raises(ConfigError, match="admission.rate"):
        load(None, environ={}, overrides=[("admission.rate", "fast", "t")], backends=[])


@pytest_twisted.ensureDeferred
async def test_a_burst_of_clients_reaches_the_backend_at_the_admitted_pace() -> None:
    seen: list[float] = []

    class Timed(DemoProtocol):
        def onConnect(self, request: Any) -> Any:
            seen.append(reactor.seconds())
            return super().onConnect(request)

    backend = start_backend("paced", protocol=Timed)
    lb = await start_balancer(
        [backend.url],
        admission__rate="5",
        admission__burst="2",
        admission__queue="4",
        admission__max_wait="3s",
    )
    try:

        async def client(i: int) -> Any:
            try:
                ws = await websockets.connect(lb.ws_url(), open_timeout=10)
            except InvalidStatus as e:
                return e.response
            await ws.send(f"hello {i}")
            reply = await asyncio.wait_for(ws.recv(), 10)
            await ws.close()
            return reply

        results = await aio(asyncio.gather(*(client(i) for i in range(10))))
        echoed = [r for r in results if isinstance(r, str)]
        refused = [r for r in results if not isinstance(r, str)]
        # The burst and the queue were served; the rest were told when to come back.
        assert len(echoed) == 6 and sorted(echoed) == sorted(set(echoed))
        assert len(refused) == 4
        for response in refused:
            assert response.status_code == 503
            assert int(response.headers["Retry-After"]) >= 1
            assert b"busy" in response.body
        # No more upgrades reached the backend than the burst, then one per 1/rate.
        seen.sort()
        for i, t in enumerate(seen):
            assert t - seen[0] >= max(0, i - 1) * 0.2 - 0.05, seen
        response = await treq.get(lb.admin_url("/metrics"), persistent=False)
        text = (await response.content()).decode()
        assert 'wsbalancer_handshakes_total{outcome="admission_refused"} 4.0' in text
    finally:
        await lb.stop()
        await backend.stop()


def test_a_late_process_lets_waiting_dials_go_at_the_pace_not_all_at_once() -> None:
    # The reactor is busy for 3 s (a storm's handshakes): the dials that were due meanwhile
    # go as the bucket refills from then on, so the backend never sees more than the burst
    # plus the rate in a second.
    clock = Clock()
    admission = Admission(pool(admission_rate=10.0, admission_burst=5), clock)
    results = admitted_at(admission, clock, 40)
    assert results.count(0.0) == 5
    clock.advance(3.0)  # one late turn: 3 s of tokens, but at most the burst saved up
    assert results.count(3.0) == 5
    for _ in range(10):
        clock.advance(0.1)
    assert results.count(None) == 40 - 5 - 5 - 10
    times = sorted(t for t in results if isinstance(t, float))
    for start in times:
        assert sum(start <= t < start + 1.0 for t in times) <= 10 + 5


def test_each_worker_process_has_its_share_of_the_rate_and_burst() -> None:
    clock = Clock()
    admission = Admission(pool(admission_rate=40.0, admission_burst=20), clock)
    admission.set_share(1 / 4)
    assert (admission.rate, admission._burst(admission.rate)) == (10.0, 5)
    results = admitted_at(admission, clock, 30)
    assert results.count(0.0) == 5
    clock.advance(1.0)
    assert results.count(None) == 30 - 5 - 5  # the burst saved up, a quarter of it
    admission.configure(pool(admission_rate=80.0))  # a reload keeps the share
    assert admission.rate == 20.0


def test_requests_admitted_apart_but_connected_together_are_written_at_the_pace() -> None:
    # Connects take their own time: dials let go a second apart can be ready to write their
    # upgrade requests in the same instant. At most rate + burst go in any second.
    clock = Clock()
    admission = Admission(pool(admission_rate=2.0, admission_burst=1), clock)
    delays = [admission.write_delay("b1") for _ in range(4)]
    assert delays[:3] == [0.0, 0.0, 0.0] and 1.0 < delays[3] <= 1.01
    assert admission.write_delay("b2") == 0.0  # another backend's second
    clock.advance(delays[3])
    assert admission.write_delay("b1") == 0.0
