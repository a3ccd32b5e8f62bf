"""Session ends name the backend the session was on, in the log line and in the
`wsbalancer_sessions_closed_total` label, however the session ended."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import pytest_twisted
import websockets
from twisted.logger import formatEvent, globalLogPublisher
from websockets.exceptions import ConnectionClosed

from .helpers import aio, recv, start_backend, start_balancer, wait_for


@contextmanager
def session_ends() -> Iterator[list[dict[str, Any]]]:
    """The session-end log events emitted while the block runs."""
    events: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if str(event.get("log_namespace")).startswith("wsbalancer.") and " ended after " in str(
            event.get("log_format")
        ):
            events.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observe)


def closed_total(lb: Any, backend: str, code: int) -> float:
    value = lb.balancer.metrics.registry.get_sample_value(
        "wsbalancer_sessions_closed_total", {"backend": backend, "code": str(code)}
    )
    return value or 0.0


@pytest_twisted.ensureDeferred
async def test_client_backend_and_balancer_closes_name_the_backend() -> None:
    backend = start_backend("b1")
    lb = await start_balancer([f"b1={backend.url}"])
    try:
        with session_ends() as ends:
            # the client closes
            ws = await aio(websockets.connect(lb.ws_url()))
            await aio(ws.send("x"))
            assert await recv(ws) == "x"
            await aio(ws.close(1000, "bye"))
            await wait_for(lambda: len(ends) == 1, what="the first session's end")
            # the balancer closes (what the admin API's DELETE, a drain and the idle
            # timeout do)
            ws = await aio(websockets.connect(lb.ws_url()))
            await aio(ws.send("x"))
            assert await recv(ws) == "x"
            (session,) = lb.balancer.sessions.values()
            session.terminate(4003, "terminated by the operator")
            with pytest.raises(ConnectionClosed):
                await recv(ws)
            await wait_for(lambda: len(ends) == 2, what="the second session's end")
            # the client vanishes without a close
            ws = await aio(websockets.connect(lb.ws_url()))
            await aio(ws.send("x"))
            assert await recv(ws) == "x"
            ws.transport.abort()
            await wait_for(lambda: len(ends) == 3, what="the third session's end")
        assert [(e["backend"], e["code"], e["by"]) for e in ends] == [
            ("b1", 1000, "client"),
            ("b1", 4003, "balancer"),
            ("b1", 1006, "client"),
        ]
        assert closed_total(lb, "b1", 1000) == 1
        assert closed_total(lb, "b1", 4003) == 1
        assert closed_total(lb, "b1", 1006) == 1
        assert closed_total(lb, "-", 1000) == 0
    finally:
        await lb.stop()
        await backend.stop()


@pytest_twisted.ensureDeferred
async def test_failed_over_and_given_up_sessions_name_their_backend() -> None:
    first, second = start_backend("b1"), start_backend("b2")
    lb = await start_balancer([f"b1={first.url}", f"b2={second.url}"], failover__backoff="50ms")
    try:
        with session_ends() as ends:
            lb.balancer.pool.backends["b2"].enabled = False  # the session starts on b1
            ws = await aio(websockets.connect(lb.ws_url()))
            await aio(ws.send("x"))
            assert await recv(ws) == "x"
            lb.balancer.pool.backends["b2"].enabled = True
            await first.stop()  # fails over to b2, then the client closes there
            await wait_for(lambda: second.count == 1, what="the failover to b2")
            await aio(ws.send("y"))
            assert await recv(ws) == "y"
            await aio(ws.close(1000, "bye"))
            await wait_for(lambda: len(ends) == 1, what="the failed-over session's end")

            ws = await aio(websockets.connect(lb.ws_url()))  # on b2, the only one left
            await aio(ws.send("x"))
            assert await recv(ws) == "x"
            await second.stop()  # nothing to fail over to: the client gets 1013
            with pytest.raises(ConnectionClosed):
                await recv(ws)
            assert ws.close_code == 1013
            await wait_for(lambda: len(ends) == 2, what="the given-up session's end")
        assert [(e["backend"], e["code"]) for e in ends] == [("b2", 1000), ("b2", 1013)]
        assert closed_total(lb, "b2", 1000) == 1
        assert closed_total(lb, "b2", 1013) == 1
        assert "on b2 ended after" in formatEvent(ends[1])
    finally:
        await lb.stop()
