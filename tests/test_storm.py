"""A reconnect storm through admission, in short: the suite's form of `bench/storm.py
--admission` (issue 19's "Storm").

300 clients connect at once through a real balancer to three backends, each given
`admission.rate` upgrades a second with the default burst (one second's worth). From the
backends' side no backend sees more than rate + burst upgrades in any one second (1-s sliding
windows over the times its handshakes arrived); from the clients' side every client ends
connected or holding a 503 with a Retry-After, none with anything else. test_admission.py
covers the bucket itself, the queue and one backend's pace; this adds a pool of backends, each
with its own bucket under least-loaded picks, and a storm large enough to fill the queue.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest_twisted
import websockets
from twisted.internet import reactor
from websockets.exceptions import InvalidStatus

from wsbalancer.devtools.demo.backend import DemoProtocol

from .helpers import aio, start_backend, start_balancer, wait_for

CLIENTS = 330
RATE = 50  # upgrades a second per backend; the burst is its default, one second's worth
BURST = RATE


def most_in_one_second(times: list[float]) -> int:
    """The most of the sorted `times` (seconds) in any half-open window [t, t + 1)."""
    best = lo = 0
    for hi, t in enumerate(times):
        while times[lo] <= t - 1.0:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


@pytest_twisted.ensureDeferred
async def test_a_storm_of_clients_is_paced_per_backend_and_every_client_is_answered() -> None:
    seen: dict[str, list[float]] = {}

    class Timed(DemoProtocol):
        def onConnect(self, request: Any) -> Any:
            seen[self.factory.backend.name].append(reactor.seconds())
            return super().onConnect(request)

    backends = [start_backend(f"b{i}", protocol=Timed) for i in range(3)]
    for backend in backends:
        seen[backend.backend.name] = []
    lb = await start_balancer(
        [b.url for b in backends],
        admission__rate=str(RATE),
        # Room to wait for a token, but not for all of them: part of the storm is refused.
        admission__queue="120",
        admission__max_wait="1s",
        timeouts__client_handshake="30s",
    )
    opened: list[Any] = []
    try:

        async def client() -> Any:
            try:
                ws = await websockets.connect(lb.ws_url(), open_timeout=30, compression=None)
            except InvalidStatus as e:
                return e.response
            opened.append(ws)
            return "open"

        answers = await aio(asyncio.gather(*(client() for _ in range(CLIENTS))))
        refused = [a for a in answers if a != "open"]
        # Every client was answered: connected, or 503 with when to come back; nothing else.
        assert len(opened) + len(refused) == CLIENTS
        assert [r.status_code for r in refused] == [503] * len(refused)
        assert all(int(r.headers["Retry-After"]) >= 1 for r in refused)
        # At least every backend's burst got through, and the queue's bound turned some away.
        assert len(opened) >= 3 * BURST and refused
        await wait_for(
            lambda: sum(b.count for b in backends) == len(opened), what="the backends' counts"
        )
        # No backend saw more upgrades in any one second than rate + burst.
        peaks = {name: most_in_one_second(sorted(times)) for name, times in seen.items()}
        assert sum(len(t) for t in seen.values()) == len(opened)
        assert max(peaks.values()) <= RATE + BURST, peaks
    finally:
        await aio(asyncio.gather(*(ws.close() for ws in opened), return_exceptions=True))
        await lb.stop()
        for backend in backends:
            await backend.stop()
