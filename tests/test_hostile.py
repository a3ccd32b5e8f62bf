"""Integration: hostile or broken peers get a specific answer; everyone else is still served."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import pytest_twisted
import websockets
from twisted.internet import protocol, reactor
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from websockets.exceptions import InvalidStatus

from wsbalancer.devtools.demo.backend import DemoProtocol

from .helpers import aio, recv, start_backend, start_balancer, wait_for


async def _still_serves(lb: Any) -> None:
    ws = await aio(websockets.connect(lb.ws_url()))
    await aio(ws.send("still here"))
    assert await recv(ws) == "still here"
    await aio(ws.close())


async def _open_raw(port: int, data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    return reader, writer


async def _dropped(reader: asyncio.StreamReader) -> bytes:
    """What arrives until the balancer drops the connection (closed or reset)."""
    try:
        return await asyncio.wait_for(reader.read(), 10)
    except ConnectionResetError:
        return b""


HANDSHAKE = (
    b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


@pytest_twisted.ensureDeferred
async def test_a_slowloris_handshake_is_cut_off_at_the_client_handshake_timeout() -> None:
    backend = start_backend("b1")
    lb = await start_balancer([backend.url], timeouts__client_handshake="1s")
    try:
        reader, writer = await aio(_open_raw(lb.port, HANDSHAKE[:40]))  # and then nothing
        await _still_serves(lb)
        assert await aio(_dropped(reader)) == b""  # dropped, unanswered
        writer.close()
        assert not backend.backend.handshakes or all(
            h["path"] == "/echo" for h in backend.backend.handshakes
        )
    finally:
        await lb.stop()
        await backend.stop()


@pytest_twisted.ensureDeferred
async def test_connection_limits_answer_503_globally_and_429_per_address() -> None:
    backend = start_backend("b1")
    total = await start_balancer([backend.url], limits__max_connections="2")
    per_ip = await start_balancer([backend.url], limits__max_connections_per_ip="2")
    try:
        for lb, status in ((total, 503), (per_ip, 429)):
            held = [await aio(websockets.connect(lb.ws_url())) for _ in range(2)]
            with pytest.raises(InvalidStatus) as raised:
                await aio(websockets.connect(lb.ws_url()))
            assert raised.value.response.status_code == status
            await aio(held[0].close())
            await wait_for(lambda lb=lb: len(lb.balancer.sessions) == 1)
            await _still_serves(lb)  # a freed slot is usable again
            await aio(held[1].close())
    finally:
        await total.stop()
        await per_ip.stop()
        await backend.stop()


class _Silent(protocol.Protocol):
    """Accepts TCP and never answers."""


@pytest_twisted.ensureDeferred
async def test_a_backend_that_never_answers_the_handshake_is_skipped_after_the_timeout() -> None:
    factory = protocol.Factory.forProtocol(_Silent)
    silent = reactor.listenTCP(0, factory, interface="127.0.0.1")
    silent_url = f"ws://127.0.0.1:{silent.getHost().port}"
    good = start_backend("good")
    lb = await start_balancer(
        [silent_url, good.url],
        timeouts__backend_handshake="1s",
        balancing__strategy="round-robin",
        balancing__metric_path="none",
    )
    alone = await start_balancer(
        [silent_url], timeouts__backend_handshake="1s", balancing__metric_path="none"
    )
    try:
        for _ in range(2):  # one of the two goes to the silent backend first
            await _still_serves(lb)
        assert lb.balancer.pool.backends[silent_url[5:]].connect_failures >= 1
        with pytest.raises(InvalidStatus) as raised:
            await aio(websockets.connect(alone.ws_url()))
        assert raised.value.response.status_code == 503
    finally:
        await lb.stop()
        await alone.stop()
        await good.stop()
        await silent.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_client_that_stops_answering_pings_is_reaped_and_its_backend_leg_closed() -> None:
    backend = start_backend("b1")
    lb = await start_balancer(
        [backend.url],
        keepalive__client__ping_interval="1s",
        keepalive__client__pong_timeout="1s",
    )
    try:
        reader, writer = await aio(_open_raw(lb.port, HANDSHAKE))
        head = await aio(asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10))
        assert head.startswith(b"HTTP/1.1 101")
        await wait_for(lambda: backend.count == 1)
        # Never read or answer again: the ping goes unanswered.
        await wait_for(lambda: backend.count == 0, what="the dead client to be reaped")
        assert backend.backend.closes[-1][0] == 1001
        await wait_for(lambda: not lb.balancer.sessions)
        writer.close()
        await _still_serves(lb)
    finally:
        await lb.stop()
        await backend.stop()


class _Deaf(DemoProtocol):
    """Echoes, but never answers a ping."""

    def onPing(self, payload: bytes) -> None:
        pass


@pytest_twisted.ensureDeferred
async def test_a_backend_that_stops_answering_pings_is_dropped_and_the_session_fails_over() -> None:
    deaf = start_backend("deaf", protocol=_Deaf)
    good = start_backend("good")
    lb = await start_balancer(
        [deaf.url, good.url],
        keepalive__backend__ping_interval="1s",
        keepalive__backend__pong_timeout="1s",
        balancing__strategy="round-robin",
    )
    try:
        ws = await aio(websockets.connect(lb.ws_url()))
        session = next(iter(lb.balancer.sessions.values()))
        assert session.backend_state.id == deaf.id  # round robin starts with the first
        await wait_for(lambda: session.reconnects == 1, what="the deaf leg to be dropped")
        assert session.backend_state.id == good.id
        await aio(ws.send("on the good one"))
        assert await recv(ws) == "on the good one"  # the client never noticed
        await aio(ws.close())
    finally:
        await lb.stop()
        await deaf.stop()
        await good.stop()


class _HangingMetric(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> Any:
        return NOT_DONE_YET  # never answers


@pytest_twisted.ensureDeferred
async def test_a_hanging_metric_endpoint_is_stale_not_zero() -> None:
    busy = start_backend("busy")
    hanging = reactor.listenTCP(0, Site(_HangingMetric()), interface="127.0.0.1")
    metric = f"http://127.0.0.1:{hanging.getHost().port}/metric"
    from wsbalancer.config import load
    from wsbalancer.service.tap import build_service

    config = load(
        None,
        environ={},
        overrides=[
            ("listen", "tcp:0:interface=127.0.0.1", "test"),
            ("admin.listen", "tcp:0:interface=127.0.0.1", "test"),
            ("balancing.fetch_timeout", "200ms", "test"),
            ("health.fall", "1000", "test"),
            ("shutdown.drain_period", "0s", "test"),
        ],
        backends=[busy.url],
    )
    # The backend's metric endpoint hangs: point it there.
    from dataclasses import replace

    config = replace(config, backends=(replace(config.backends[0], metric_url=metric),))
    service = build_service(config, reactor)
    service.startService()
    try:
        state = service.balancer.pool.backends[busy.id]
        await wait_for(lambda: state.stale, what="the hanging poll to time out")
        assert state.last_poll_error == "no answer within 0.2s"
        assert state.reported is None and state.health == "down"  # never confirmed: down
    finally:
        await service.stopService()
        await busy.stop()
        await hanging.stopListening()
