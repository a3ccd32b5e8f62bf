"""Integration: bad input gets a clear answer, and the balancer keeps serving everyone else."""

from __future__ import annotations

import asyncio

import pytest_twisted
import websockets

from wsbalancer.devtools.demo.backend import DemoProtocol

from .helpers import aio, start_backend, start_balancer, wait_for


async def _raw_exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)  # the balancer closes after answering
    writer.close()
    return answer


async def _still_serves(lb) -> None:
    ws = await aio(websockets.connect(lb.ws_url()))
    await aio(ws.send("still here"))
    assert await aio(ws.recv()) == "still here"
    await aio(ws.close())


@pytest_twisted.ensureDeferred
async def test_plain_http_gets_426_with_a_body() -> None:
    backend = start_backend("b1")
    lb = await start_balancer([backend.url])
    try:
        answer = await aio(_raw_exchange(lb.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 426 Upgrade Required")
        assert b"Upgrade: websocket" in head
        assert body == b"HTTP Upgrade header missing\n"
        await _still_serves(lb)
    finally:
        await lb.stop()
        await backend.stop()


@pytest_twisted.ensureDeferred
async def test_malformed_handshake_gets_400() -> None:
    backend = start_backend("b1")
    lb = await start_balancer([backend.url])
    try:
        request = (
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )  # no Sec-WebSocket-Key
        answer = await aio(_raw_exchange(lb.port, request))
        assert answer.startswith(b"HTTP/1.1 400 Bad Request")
        assert backend.backend.handshakes == type(backend.backend.handshakes)()  # never dialled
        await _still_serves(lb)
    finally:
        await lb.stop()
        await backend.stop()


@pytest_twisted.ensureDeferred
async def test_oversized_request_head_gets_431() -> None:
    backend = start_backend("b1")
    lb = await start_balancer([backend.url], limits__max_header_bytes="4KiB")
    try:
        request = b"GET / HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"a" * 8000 + b"\r\n\r\n"
        answer = await aio(_raw_exchange(lb.port, request))
        assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large")
        # A head that never ends is cut off at the limit as well (no unbounded buffering).
        answer = await aio(_raw_exchange(lb.port, b"GET / HTTP/1.1\r\nX: " + b"b" * 8000))
        assert answer.startswith(b"HTTP/1.1 431")
        await _still_serves(lb)
    finally:
        await lb.stop()
        await backend.stop()


class Flooder(DemoProtocol):
    """Sends 64 MiB in 64 KiB messages when asked."""

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if payload == b"flood":
            chunk = b"x" * 65536
            for i in range(1024):
                self.sendMessage(i.to_bytes(4, "big") + chunk, isBinary=True)
        else:
            super().onMessage(payload, isBinary)


@pytest_twisted.ensureDeferred
async def test_a_client_that_does_not_read_pauses_the_backend_leg() -> None:
    from twisted.internet import reactor

    backend = start_backend("b1", protocol=Flooder)
    lb = await start_balancer([backend.url])
    try:
        # max_queue=1: the client stops reading its socket while its queue is full.
        ws = await aio(
            websockets.connect(lb.ws_url(), max_queue=1, max_size=None, compression=None)
        )
        await aio(ws.send("flood"))
        session = await wait_for(lambda: next(iter(lb.balancer.sessions.values()), None))
        client_transport = session.client.transport
        await wait_for(lambda: client_transport.producerPaused, what="client leg to push back")
        # The backend leg stopped reading: the flood waits in the backend, not in the balancer.
        assert session.backend.transport not in reactor.getReaders()
        assert session.bytes_out < 32 * 1024 * 1024
        # Reading again resumes the relay; everything arrives, in order.
        for i in range(1024):
            message = await aio(ws.recv())
            assert int.from_bytes(message[:4], "big") == i
        assert session.bytes_out == 1024 * (65536 + 4)
        await aio(ws.close())
    finally:
        await lb.stop()
        await backend.stop()
