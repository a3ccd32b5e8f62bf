"""Integration: a rolling restart without a reconnect. Clients exchange numbered messages
with echo backends while one backend is evacuated through the admin API, then stopped: no
client session closes, every message comes back once and in order."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest_twisted
import treq
import websockets

from .helpers import aio, recv, start_backend, start_balancer, wait_for

CLIENTS, ROUNDS = 8, 30
AUTH = {"Authorization": "Bearer t0ken"}


async def _get(url: str) -> Any:
    response = await treq.get(url, headers=AUTH, persistent=False)
    assert response.code == 200
    return json.loads(await response.content())


@pytest_twisted.ensureDeferred
async def test_an_evacuated_backend_can_stop_without_closing_a_client_session() -> None:
    first, second = start_backend("first"), start_backend("second")
    lb = await start_balancer([first.url, second.url], admin__token="t0ken")
    try:
        clients = [
            await aio(websockets.connect(lb.ws_url("/echo"), compression=None))
            for _ in range(CLIENTS)
        ]
        await wait_for(lambda: first.backend.handshakes and second.backend.handshakes)

        async def talk(ws: Any, i: int, n: int) -> list[str]:
            got = []
            for k in range(n):
                await ws.send(f"{i}:{k}")
                got.append(await asyncio.wait_for(ws.recv(), 10))
            return got

        before = await aio(asyncio.gather(*(talk(ws, i, ROUNDS) for i, ws in enumerate(clients))))
        response = await treq.post(
            lb.admin_url(f"/api/backends/{first.id}/evacuate?pace=50"),
            headers=AUTH,
            persistent=False,
        )
        assert response.code == 202
        during = await aio(asyncio.gather(*(talk(ws, i, ROUNDS) for i, ws in enumerate(clients))))

        state = lb.balancer.pool.backends[first.id]
        await wait_for(
            lambda: lb.balancer.evacuations[first.id].done and state.local_sessions == 0,
            what="the evacuation to finish and the old legs to close",
        )
        doc = await _get(lb.admin_url(f"/api/backends/{first.id}"))
        assert doc["evacuation"]["done"] and doc["localSessions"] == 0 and doc["draining"]
        assert doc["evacuation"]["migrated"] == doc["evacuation"]["sessions"] >= 1
        await first.stop()  # the restart
        after = await aio(asyncio.gather(*(talk(ws, i, ROUNDS) for i, ws in enumerate(clients))))
        for i in range(CLIENTS):
            assert before[i] + during[i] + after[i] == [f"{i}:{k}" for k in range(ROUNDS)] * 3
        for ws in clients:
            assert ws.close_code is None  # still open, never closed
            await aio(ws.send("bye"))
            assert await recv(ws) == "bye"
        doc = await _get(lb.admin_url(f"/api/backends/{second.id}"))
        assert doc["localSessions"] == CLIENTS
        for ws in clients:
            await aio(ws.close())
    finally:
        await lb.stop()
        await second.stop()
