"""Integration: a black-hole backend (answers /metric, accepts TCP, never answers the
WebSocket handshake) beside a good one costs at most the first few clients one timeout."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import pytest_twisted
import treq
import websockets
from twisted.internet import defer, protocol, reactor
from websockets.exceptions import InvalidStatus

from .helpers import aio, get_json, recv, start_backend, start_balancer, wait_for

# The backend's and the client's alike, as with the defaults (10 s). Autobahn runs both on
# whole-second buckets, so a timeout of N s fires between N - 1 and N s after it was set.
HANDSHAKE_TIMEOUT = 2.0
SLOW = HANDSHAKE_TIMEOUT - 1  # a handshake that waited for the black hole took this at least
WAVES, CLIENTS = 3, 8


class _BlackHole(protocol.Protocol):
    """Answers GET /metric with a count of 0; any other request is read and never answered."""

    def __init__(self) -> None:
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer:
            return
        if self.buffer.startswith(b"GET /metric "):
            body = json.dumps({"agentsConnections": 0}).encode()
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
            )
            self.transport.loseConnection()
        elif self not in self.factory.held:
            self.factory.held.append(self)  # a handshake: held, unanswered


class _BlackHoleFactory(protocol.Factory):
    protocol = _BlackHole

    def __init__(self) -> None:
        self.held: list[_BlackHole] = []


def start_black_hole() -> tuple[Any, _BlackHoleFactory, str]:
    factory = _BlackHoleFactory()
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    return port, factory, f"ws://127.0.0.1:{port.getHost().port}"


async def _client(url: str, text: str) -> tuple[float, Any]:
    """Open, echo once; how long the handshake took (the open connection is returned)."""
    started = time.monotonic()
    ws = await websockets.connect(url, open_timeout=15)
    took = time.monotonic() - started
    await ws.send(text)
    assert await asyncio.wait_for(ws.recv(), 10) == text
    return took, ws


async def _wave(url: str, wave: int) -> list[float]:
    clients = [_client(url, f"wave {wave} client {i}") for i in range(CLIENTS)]
    results = await asyncio.gather(*clients, return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    for r in results:
        if not isinstance(r, BaseException):
            await r[1].close()
    assert not failures, f"wave {wave}: {len(failures)} clients got no session: {failures[0]!r}"
    return [r[0] for r in results if not isinstance(r, BaseException)]


@pytest_twisted.ensureDeferred
async def test_a_black_hole_backend_costs_at_most_the_first_wave_one_timeout_each() -> None:
    port, hole, hole_url = start_black_hole()
    hole_id = hole_url[len("ws://") :]
    good = start_backend("good")
    lb = await start_balancer(
        [hole_url, good.url],
        timeouts__backend_handshake=f"{HANDSHAKE_TIMEOUT}s",
        timeouts__client_handshake=f"{HANDSHAKE_TIMEOUT}s",
    )
    try:
        pool = lb.balancer.pool
        # Both report a count (the black hole's 0 makes least-loaded favour it).
        await wait_for(lambda: all(b.reported is not None for b in pool.backends.values()))
        # A session opened before keeps being served throughout.
        bystander = await aio(websockets.connect(lb.ws_url(), open_timeout=15))
        before = len(hole.held)  # 1 if it went to the black hole first
        timings = []
        held_after = []
        for wave in range(WAVES):
            timings.append(await aio(_wave(lb.ws_url(), wave)))
            held_after.append(len(hole.held))
            await aio(bystander.send(f"after wave {wave}"))
            assert await recv(bystander) == f"after wave {wave}"
        await aio(bystander.close())
        assert len(good.backend.handshakes) == 1 + WAVES * CLIENTS  # all on the good one
        slow = [t for t in timings[0] if t >= SLOW]
        # The first wave's few: least-loaded counts dials in flight, so the black hole gets
        # every other one of a burst, and one more while the bystander's session weighs on
        # whichever backend holds it.
        assert 1 <= len(slow) <= CLIENTS // 2 + 1, timings[0]
        assert max(timings[0]) < 2 * HANDSHAKE_TIMEOUT + 1, timings[0]  # one timeout each
        assert held_after[0] == before + len(slow)
        # Ejected after the third in a row: the later waves never reach it.
        assert held_after[1:] == [held_after[0]] * (WAVES - 1)
        for later in timings[1:]:
            assert max(later) < SLOW, later

        code, doc = await get_json(lb.admin_url("/balancer-metrics"))
        views = {b["id"]: b for b in doc["backends"]}
        assert views[hole_id]["ejectedUntil"] is not None
        assert views[hole_id]["usable"] is False
        assert views[good.id]["ejectedUntil"] is None
        response = await treq.get(lb.admin_url("/metrics"), persistent=False)
        text = (await response.content()).decode()
        assert f'wsbalancer_backend_ejected{{backend="{hole_id}"}} 1.0' in text
        assert f'wsbalancer_backend_ejected{{backend="{good.id}"}} 0.0' in text
        assert f'wsbalancer_backend_ejections_total{{backend="{hole_id}"}} 1.0' in text
    finally:
        await lb.stop()
        await good.stop()
        for held in hole.held:
            held.transport.abortConnection()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_the_client_gets_504_when_the_dial_budget_runs_out() -> None:
    port, hole, hole_url = start_black_hole()
    lb = await start_balancer(
        [hole_url],
        timeouts__backend_handshake="10s",
        timeouts__client_handshake="2s",
        timeouts__backend_total="2.5s",
    )
    try:
        started = time.monotonic()
        with pytest.raises(InvalidStatus) as raised:
            await aio(websockets.connect(lb.ws_url(), open_timeout=10))
        took = time.monotonic() - started
        assert raised.value.response.status_code == 504
        assert b"no backend answered in time" in raised.value.response.body
        # Past the client's own handshake timeout (at most 2 s), at the budget and well before
        # the backend's handshake timeout.
        assert 2.4 <= took < 8, took
        backend = lb.balancer.pool.backends[hole_url[len("ws://") :]]
        assert backend.connect_failures == 0  # the budget ran out, not the backend's time
        await wait_for(lambda: backend.dialing == 0)
    finally:
        await lb.stop()
        for held in hole.held:
            held.transport.abortConnection()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_backend_4xx_is_not_a_gateway_failure() -> None:
    refusing = start_backend("refusing", deny_status=403)
    good = start_backend("good")
    lb = await start_balancer(
        [refusing.url, good.url], balancing__strategy="round-robin", balancing__metric_path="none"
    )
    try:
        for _ in range(8):
            try:
                ws = await aio(websockets.connect(lb.ws_url()))
            except InvalidStatus as e:
                assert e.response.status_code == 403
            else:
                await aio(ws.close())
        outliers = lb.balancer.pool.outliers
        assert outliers is not None and not outliers.is_ejected(refusing.id)
        assert outliers.ejections(refusing.id) == 0
    finally:
        await lb.stop()
        await refusing.stop()
        await good.stop()


def test_dial_failures_are_told_apart() -> None:
    from wsbalancer.upstream.dialer import BackendConnectError, BackendTimeoutError

    assert issubclass(BackendTimeoutError, BackendConnectError)
    assert not issubclass(defer.TimeoutError, BackendConnectError)
