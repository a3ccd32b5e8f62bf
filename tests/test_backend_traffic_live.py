"""Per-backend traffic end to end: real sockets, a fast and a slow demo backend, and what
/metrics, the API and /balancer-metrics say about them after real traffic."""

from __future__ import annotations

from typing import Any

import pytest_twisted
import treq
import websockets
from prometheus_client.parser import text_string_to_metric_families

from .helpers import aio, get_json, recv, start_backend, start_balancer, wait_for

DELAY = 0.1  # the slow backend's wait before each echo
MESSAGES = 5


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest_twisted.ensureDeferred
async def test_a_backend_slow_per_message_shows_in_metrics_api_and_json() -> None:
    fast, slow = start_backend("fast"), start_backend("slow", reply_delay=DELAY)
    lb = await start_balancer([fast.url, slow.url], balancing__strategy="round-robin")
    try:
        clients = [await aio(websockets.connect(lb.ws_url(), open_timeout=10)) for _ in range(2)]
        placed = {s.backend_id for s in lb.balancer.sessions.values()}
        assert placed == {fast.id, slow.id}  # round-robin: one client on each
        for n in range(MESSAGES):
            for ws in clients:
                await aio(ws.send(f"m{n}"))
                assert await recv(ws) == f"m{n}"
        _, listed = await get_json(lb.admin_url("/api/backends"))
        traffic = {b["id"]: b["traffic"] for b in listed["backends"]}
        for backend in (fast, slow):
            t = traffic[backend.id]
            assert (t["messagesToBackend"], t["messagesToClient"]) == (MESSAGES, MESSAGES)
            assert (t["bytesToBackend"], t["bytesToClient"]) == (2 * MESSAGES, 2 * MESSAGES)
            assert t["responseTime"]["count"] == MESSAGES
        fast_time, slow_time = traffic[fast.id]["responseTime"], traffic[slow.id]["responseTime"]
        # Each of the slow backend's answers waited DELAY after its question went out.
        assert slow_time["meanSeconds"] >= DELAY and slow_time["p50"] >= DELAY
        assert fast_time["meanSeconds"] < slow_time["meanSeconds"]
        assert fast_time["p50"] < slow_time["p50"]
        _, one = await get_json(lb.admin_url(f"/api/backends/{slow.id}"))
        assert one["traffic"]["responseTime"]["count"] == MESSAGES

        for ws in clients:
            await aio(ws.close())
        await wait_for(lambda: not lb.balancer.sessions, what="both sessions to end")
        await wait_for(
            lambda: (
                sum(
                    b.traffic.closes.get(("backend", "1000"), 0)
                    for b in lb.balancer.pool.backends.values()
                )
                == 2
            ),
            what="both backend legs to close",
        )
        response = await treq.get(lb.admin_url("/metrics"), persistent=False)
        found = samples((await response.content()).decode())
        _, doc = await get_json(lb.admin_url("/balancer-metrics"))
    finally:
        await lb.stop()
        await fast.stop()
        await slow.stop()

    def metric(name: str, **labels: str) -> float:
        return found[(name, tuple(sorted(labels.items())))]

    for backend in (fast, slow):
        b = backend.id
        for direction in ("client_to_backend", "backend_to_client"):
            assert metric("wsbalancer_backend_messages_total", backend=b, direction=direction) == 5
            assert (
                metric("wsbalancer_backend_message_bytes_total", backend=b, direction=direction)
                == 10
            )
        assert metric("wsbalancer_backend_response_seconds_count", backend=b) == MESSAGES
        for leg in ("client", "backend"):
            assert metric("wsbalancer_leg_closes_total", backend=b, leg=leg, code="1000") == 1
    assert metric("wsbalancer_backend_response_seconds_sum", backend=slow.id) >= MESSAGES * DELAY
    # None of the slow backend's answers came within its delay.
    assert metric("wsbalancer_backend_response_seconds_bucket", backend=slow.id, le="0.05") == 0
    by_id: dict[str, Any] = {b["id"]: b for b in doc["backends"]}
    assert by_id[slow.id]["traffic"]["responseTime"]["count"] == MESSAGES
    assert doc["migrations"] == {"migrated": 0, "skipped": 0, "failed": 0}
