"""Integration: transparent failover keeps the client connected when its backend dies."""

from __future__ import annotations

from typing import Any

import pytest_twisted
import websockets
from twisted.internet import defer

from wsbalancer.devtools.demo.backend import DemoProtocol

from .helpers import aio, recv, start_backend, start_balancer, wait_for

# Reconnect handshakes wait on this gate, so a test can hold the failover open.
gates: list[defer.Deferred[None]] = []


class Tagging(DemoProtocol):
    """Answers "n" with "n:<backend name>"; a reconnect handshake waits for the test's gate."""

    def onConnect(self, request: Any) -> Any:
        chosen = super().onConnect(request)
        if "x-balancer-reconnect" in request.headers and gates:
            return gates[-1].addCallback(lambda _: chosen)
        return chosen

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if payload.startswith(b"close "):
            self.sendClose(int(payload.split()[1]), "bye")
            return
        self.sendMessage(payload + b":" + self.factory.backend.name.encode())


def _session(lb: Any) -> Any:
    return next(iter(lb.balancer.sessions.values()))


@pytest_twisted.ensureDeferred
async def test_killing_the_backend_keeps_the_session_and_delivers_held_messages_in_order() -> None:
    backends = [start_backend(f"b{i}", protocol=Tagging, subprotocols=("v1",)) for i in range(3)]
    lb = await start_balancer([b.url for b in backends])
    gates.append(defer.Deferred())
    try:
        ws = await aio(websockets.connect(lb.ws_url("/stream?room=7"), subprotocols=["v1"]))
        await aio(ws.send("0"))
        first = (await recv(ws)).split(":")[1]
        victim = next(b for b in backends if b.backend.name == first)
        session = _session(lb)
        await victim.stop()
        await wait_for(lambda: session.reconnecting, what="the balancer to notice")
        # Sent while the new backend has not answered yet: held, then delivered in order.
        for n in range(1, 20):
            await aio(ws.send(str(n)))
        await wait_for(lambda: session.msgs_in == 20, what="the messages to be held")
        assert len(session.held) == 19
        gates[-1].callback(None)
        answers = [await recv(ws) for _ in range(1, 20)]
        assert [a.split(":")[0] for a in answers] == [str(n) for n in range(1, 20)]
        survivors = {a.split(":")[1] for a in answers}
        assert len(survivors) == 1 and first not in survivors
        new = next(b for b in backends if b.backend.name in survivors)
        handshake = new.backend.handshakes[-1]
        assert handshake["path"] == "/stream" and handshake["params"] == {"room": ["7"]}
        assert handshake["headers"]["x-balancer-reconnect"] == "1"
        assert handshake["protocols"] == ["v1"]
        assert session.reconnects == 1 and session.lost == 0
        assert lb.balancer.pool.backends[victim.id].local_sessions == 0
        assert lb.balancer.pool.backends[new.id].local_sessions == 1
        await aio(ws.close())
        await wait_for(lambda: not lb.balancer.sessions, what="session to end")
    finally:
        gates.clear()
        await lb.stop()
        for b in backends:
            await b.stop()


@pytest_twisted.ensureDeferred
async def test_a_backend_closing_with_1012_fails_over_but_4000_is_passed_on() -> None:
    backends = [start_backend(f"b{i}", protocol=Tagging) for i in range(2)]
    lb = await start_balancer([b.url for b in backends])
    try:
        ws = await aio(websockets.connect(lb.ws_url()))
        await aio(ws.send("hi"))
        first = (await recv(ws)).split(":")[1]
        server_side = next(c for b in backends for c in b.backend.clients)
        # 1012 (service restart) is in failover.close_codes: the client keeps its session.
        server_side.sendCloseFrame(1012, b"restarting")
        await wait_for(lambda: _session(lb).reconnects == 1, what="failover")
        await aio(ws.send("after"))
        assert (await recv(ws)).split(":") == [
            "after",
            next(b.backend.name for b in backends if b.backend.name != first),
        ]
        # 4000 is an application's own close: it reaches the client as it is.
        await aio(ws.send("close 4000"))
        await aio(ws.wait_closed())
        assert (ws.close_code, ws.close_reason) == (4000, "bye")
    finally:
        await lb.stop()
        for b in backends:
            await b.stop()


@pytest_twisted.ensureDeferred
async def test_failover_off_passes_1012_to_the_client() -> None:
    backends = [start_backend(f"b{i}", protocol=Tagging) for i in range(2)]
    lb = await start_balancer([b.url for b in backends], failover__enabled="false")
    try:
        ws = await aio(websockets.connect(lb.ws_url()))
        await wait_for(lambda: any(b.count for b in backends))
        server_side = next(c for b in backends for c in b.backend.clients)
        server_side.sendCloseFrame(1012, b"restarting")
        await aio(ws.wait_closed())
        assert (ws.close_code, ws.close_reason) == (1012, "restarting")
    finally:
        await lb.stop()
        for b in backends:
            await b.stop()


class _Crashing(DemoProtocol):
    """Fails every session it is given with 1011 right after opening."""

    def onOpen(self) -> None:
        super().onOpen()
        self.sendCloseFrame(1011, b"crashed")


@pytest_twisted.ensureDeferred
async def test_a_backend_failing_every_session_does_not_loop_a_client_forever() -> None:
    crashing = start_backend("crashing", protocol=_Crashing)
    lb = await start_balancer([crashing.url], failover__max_consecutive="3")
    try:
        ws = await aio(websockets.connect(lb.ws_url()))
        await aio(ws.wait_closed())
        assert (ws.close_code, ws.close_reason) == (1011, "crashed")
        assert len(crashing.backend.handshakes) == 4  # the first leg and three reconnects
        assert [h["headers"].get("x-balancer-reconnect") for h in crashing.backend.handshakes] == [
            None,
            "1",
            "2",
            "3",
        ]
    finally:
        await lb.stop()
        await crashing.stop()
