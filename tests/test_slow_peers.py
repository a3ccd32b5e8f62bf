"""Integration: slow and flooding peers (slowloris over plain HTTP, impossible chunk sizes,
ping floods from clients that never read) get a specific answer, in bounded time and memory,
while another session keeps being served."""

from __future__ import annotations

import asyncio
import gc
import socket
import weakref
from typing import Any

import pytest_twisted
import websockets

from .helpers import (
    aio,
    frame,
    recv,
    start_backend,
    start_balancer,
    start_http_backend,
    wait_for,
)

HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
GET = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
SLOW_HEAD = b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"p" * 200 + b"\r\n\r\n"


async def _http_balancer(**settings: Any) -> tuple[Any, Any, Any]:
    """An HTTP backend, a WebSocket backend and a balancer proxying both on one port (the
    WebSocket pool under /echo)."""
    h1 = start_http_backend("h1")
    ws = start_backend("ws")
    config = (
        f"backends: [{{id: h1, url: '{h1.url}', metric: none}}]\n"
        "http: {enabled: true}\n"
        f"pools:\n  echo:\n    backends: [{{id: ws, url: '{ws.url}', metric: none}}]\n"
        "routes: [{path: /echo, pool: echo}]\n"
    )
    lb = await start_balancer([], config_file=_yaml(config), **settings)
    return lb, h1, ws


def _yaml(text: str) -> str:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(text)
    return f.name


async def _stop(*things: Any) -> None:
    for thing in things:
        await thing.stop()


class Bystander:
    """A WebSocket session open through the balancer during the hostile input."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    @classmethod
    async def open(cls, lb: Any) -> Bystander:
        ws = await aio(websockets.connect(lb.ws_url("/echo")))
        bystander = cls(ws)
        await bystander.echoes("before")
        return bystander

    async def echoes(self, text: str) -> None:
        await aio(self.ws.send(text))
        assert await recv(self.ws) == text

    async def close(self) -> None:
        await aio(self.ws.close())


def _sample(lb: Any, name: str, **labels: str) -> float:
    value = lb.balancer.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


async def _read_until_closed(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything the balancer sends until it closes the connection (or `timeout`, a
    failure: the connection was held open)."""
    chunks = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    data = await reader.read(65536)
                except ConnectionResetError:
                    break
                if not data:
                    break
                chunks.append(data)
    except TimeoutError:
        raise AssertionError(
            f"connection still open after {timeout}s; got {b''.join(chunks)[:200]!r}"
        ) from None
    return b"".join(chunks)


async def _dribble(writer: asyncio.StreamWriter, data: bytes, interval: float) -> None:
    """Send `data` one byte per `interval` (the hostile input), until done or cut off."""
    for i in range(len(data)):
        if writer.is_closing():
            return
        writer.write(data[i : i + 1])
        try:
            await writer.drain()
        except ConnectionError:
            return
        await asyncio.sleep(interval)


async def _slow_exchange(port: int, first: bytes, slow: bytes, timeout: float = 5.0) -> bytes:
    """Send `first` at once, then `slow` one byte every 50 ms; what comes back until the
    balancer closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(first)
    await writer.drain()
    dribbler = asyncio.ensure_future(_dribble(writer, slow, 0.05))
    try:
        return await _read_until_closed(reader, timeout)
    finally:
        dribbler.cancel()
        writer.close()


@pytest_twisted.ensureDeferred
async def test_a_keep_alive_request_head_sent_byte_by_byte_gets_408() -> None:
    lb, h1, ws = await _http_balancer(timeouts__http_head="0.5s")
    try:
        bystander = await Bystander.open(lb)
        answer = await aio(_slow_exchange(lb.port, GET, SLOW_HEAD))
        assert answer.startswith(b"HTTP/1.1 200 OK")  # the first request was served
        assert b"HTTP/1.1 408 Request Timeout" in answer
        assert answer.endswith(b"request head not received within 0.5s\n")
        assert [r["uri"] for r in h1.resource.requests] == ["/a"]  # the slow one never went
        assert _sample(lb, "wsbalancer_http_timeouts_total", kind="head") == 1
        await bystander.echoes("after")
        await bystander.close()
    finally:
        await _stop(lb, h1, ws)


@pytest_twisted.ensureDeferred
async def test_a_request_body_sent_byte_by_byte_gets_408() -> None:
    lb, h1, ws = await _http_balancer(timeouts__http_body="0.5s", limits__http_body_min_rate="1KiB")
    try:
        bystander = await Bystander.open(lb)
        head = b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n"
        answer = await aio(_slow_exchange(lb.port, head, b"b" * 500))
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout")
        assert answer.endswith(b"request body not received in time\n")
        chunked = b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        answer = await aio(_slow_exchange(lb.port, chunked, b"1f4\r\n" + b"b" * 500))
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout")
        # behind a keep-alive request, sent with it: its deadline starts once the first
        # is answered
        answer = await aio(_slow_exchange(lb.port, GET + head + b"b" * 10, b""))
        assert answer.startswith(b"HTTP/1.1 200 OK")
        assert b"HTTP/1.1 408 Request Timeout" in answer
        assert answer.endswith(b"request body not received in time\n")
        assert [r["uri"] for r in h1.resource.requests] == ["/a"]
        assert _sample(lb, "wsbalancer_http_timeouts_total", kind="body") == 3
        await bystander.echoes("after")
        await bystander.close()
    finally:
        await _stop(lb, h1, ws)


@pytest_twisted.ensureDeferred
async def test_a_body_arriving_at_the_minimum_rate_is_not_cut_off() -> None:
    # 0.3 s allowed, plus 1 s per 100 bytes: 60 bytes at 20 bytes/s take 3 s and pass.
    lb, h1, ws = await _http_balancer(timeouts__http_body="0.3s", limits__http_body_min_rate="10")
    try:
        head = b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\nConnection: close\r\n\r\n"
        reader, writer = await aio(asyncio.open_connection("127.0.0.1", lb.port))
        writer.write(head)
        await aio(_dribble(writer, b"c" * 30, 0.05))
        answer = await aio(_read_until_closed(reader, 5.0))
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200 OK")
        assert b"h1 POST /up " + b"c" * 30 in answer and answer.endswith(b"\r\n0\r\n\r\n")
    finally:
        await _stop(lb, h1, ws)


@pytest_twisted.ensureDeferred
async def test_an_idle_keep_alive_connection_is_closed() -> None:
    lb, h1, ws = await _http_balancer(timeouts__http_keepalive="0.5s")
    try:
        bystander = await Bystander.open(lb)
        reader, writer = await aio(asyncio.open_connection("127.0.0.1", lb.port))
        writer.write(GET)
        answer = await aio(_read_until_closed(reader, 5.0))  # and then nothing
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"h1 GET /a \r\n0\r\n\r\n")
        assert _sample(lb, "wsbalancer_http_timeouts_total", kind="keepalive") == 1
        await bystander.echoes("after")
        await bystander.close()
    finally:
        await _stop(lb, h1, ws)


@pytest_twisted.ensureDeferred
async def test_http_connections_over_the_cap_get_503_and_a_freed_slot_is_reused() -> None:
    lb, h1, ws = await _http_balancer(limits__max_http_connections="2")
    try:
        bystander = await Bystander.open(lb)
        held = []
        for _ in range(2):
            reader, writer = await aio(asyncio.open_connection("127.0.0.1", lb.port))
            writer.write(GET)
            assert (await aio(reader.readuntil(b"h1 GET /a "))).startswith(b"HTTP/1.1 200")
            held.append((reader, writer))
        reader, writer = await aio(asyncio.open_connection("127.0.0.1", lb.port))
        writer.write(GET)
        answer = await aio(_read_until_closed(reader, 5.0))
        writer.close()
        assert answer.startswith(b"HTTP/1.1 503 Service Unavailable")
        assert answer.endswith(b"too many HTTP connections\n")
        assert _sample(lb, "wsbalancer_http_refused_total", reason="connections") == 1
        await bystander.echoes("WebSocket sessions do not count")  # nor are they refused
        held.pop()[1].close()
        await wait_for(lambda: _open_http(lb) == 1, what="the closed connection uncounted")
        reader, writer = await aio(asyncio.open_connection("127.0.0.1", lb.port))
        writer.write(GET)
        assert (await aio(reader.readuntil(b"h1 GET /a "))).startswith(b"HTTP/1.1 200")
        writer.close()
        held.pop()[1].close()
        await bystander.close()
    finally:
        await _stop(lb, h1, ws)


def _open_http(lb: Any) -> int:
    return int(sum(f.http_site().open_channels for f in lb.balancer.factories))


@pytest_twisted.ensureDeferred
async def test_an_impossible_chunk_size_gets_400_at_once_and_an_oversized_one_413() -> None:
    lb, h1, ws = await _http_balancer(http__max_body="1KiB")
    try:
        bystander = await Bystander.open(lb)
        head = b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        reader, writer = await aio(asyncio.open_connection("127.0.0.1", lb.port))
        writer.write(head + b"ffffffffffffffffffff\r\nabc")
        answer = await aio(_read_until_closed(reader, 2.0))
        writer.close()
        assert answer.startswith(b"HTTP/1.1 400 Bad Request")
        assert answer.endswith(b"chunk size out of range\n")
        reader, writer = await aio(asyncio.open_connection("127.0.0.1", lb.port))
        writer.write(head + b"400\r\n" + b"d" * 1024 + b"\r\n1\r\n")  # 1 KiB + 1 byte
        answer = await aio(_read_until_closed(reader, 2.0))
        writer.close()
        assert answer.startswith(b"HTTP/1.1 413 Request Entity Too Large")
        assert h1.resource.requests == []
        assert _sample(lb, "wsbalancer_http_refused_total", reason="malformed") == 1
        assert _sample(lb, "wsbalancer_http_refused_total", reason="body_too_large") == 1
        await bystander.echoes("after")
        await bystander.close()
    finally:
        await _stop(lb, h1, ws)


PING = frame(0x9, b"p" * 125)


@pytest_twisted.ensureDeferred
async def test_a_ping_flood_from_a_client_that_never_reads_is_bounded_and_closed() -> None:
    backend = start_backend("b1")
    lb = await start_balancer([backend.url], timeouts__close="0.5s")
    try:
        bystander = Bystander(await aio(websockets.connect(lb.ws_url())))
        await bystander.echoes("before")
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # reads nothing anyway
        sock.connect(("127.0.0.1", lb.port))
        sock.setblocking(False)
        reader, writer = await aio(asyncio.open_connection(sock=sock))
        writer.write(HANDSHAKE)
        assert (await aio(reader.readuntil(b"\r\n\r\n"))).startswith(b"HTTP/1.1 101")
        session = await wait_for(
            lambda: next(
                (
                    s
                    for s in lb.balancer.sessions.values()
                    if s.client is not None
                    and s.client.transport.getPeer().port == sock.getsockname()[1]
                ),
                None,
            )
        )
        leg = weakref.ref(session.client)
        transport = session.client.transport
        most = 0
        # 300,000 pings would be 38 MB of pongs; the balancer must stop well before.
        for _ in range(300):
            writer.write(PING * 1000)
            try:
                await aio(writer.drain())
            except ConnectionError:
                break
            most = max(most, _queued(transport))
            if not transport.connected:
                break
        print("MOST", most)
        assert most < 256 * 1024, f"{most} bytes queued for a client that does not read"
        await aio(_read_until_closed(reader, 5.0))
        writer.close()
        await wait_for(lambda: not transport.connected, what="the flooding client dropped")
        await bystander.echoes("after")
        await bystander.close()
        session = transport = None  # what the leg's memory is still held by, here
        await wait_for(lambda: gc.collect() is not None and leg() is None, what="leg freed")
    finally:
        await lb.stop()
        await backend.stop()


def _queued(transport: Any) -> int:
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen
