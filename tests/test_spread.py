"""Integration: least-loaded spreading with real clients, sequential and in a burst."""

from __future__ import annotations

import asyncio

import pytest_twisted
import websockets

from .helpers import aio, get_json, start_backend, start_balancer


async def _spread(burst: bool) -> tuple[list[int], list[int]]:
    backends = [start_backend(f"b{i}") for i in range(3)]
    # A slow poll: the spread must come from the local accounting, not from fresh counts.
    lb = await start_balancer([b.url for b in backends], balancing__poll_interval="30s")
    clients = []
    try:
        if burst:
            connects = [websockets.connect(lb.ws_url()) for _ in range(60)]
            clients = await aio(asyncio.gather(*connects))
        else:
            for _ in range(60):
                clients.append(await aio(websockets.connect(lb.ws_url())))
        code, doc = await get_json(lb.admin_url("/balancer-metrics"))
        assert code == 200
        reported = [s["connections"] for s in doc["services"]]
        actual = [b.count for b in backends]
        assert doc["totalConnections"] == 60
        return reported, actual
    finally:
        await aio(asyncio.gather(*(c.close() for c in clients)))
        await lb.stop()
        for b in backends:
            await b.stop()


@pytest_twisted.ensureDeferred
async def test_sixty_sequential_clients_end_twenty_each() -> None:
    reported, actual = await _spread(burst=False)
    assert actual == [20, 20, 20]
    assert reported == actual


@pytest_twisted.ensureDeferred
async def test_a_burst_of_sixty_spreads_within_two_of_even() -> None:
    reported, actual = await _spread(burst=True)
    assert sum(actual) == 60
    assert all(abs(n - 20) <= 2 for n in actual), actual
    assert reported == actual
