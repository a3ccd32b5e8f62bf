"""Integration: the client handshake checks (RFC 6455 version, Host, header bytes, affinity
cookies, connection limits under a burst), sent as raw bytes on 127.0.0.1 while a bystander
session keeps being served."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import pytest_twisted
import websockets
from twisted.internet import defer, protocol, reactor

from wsbalancer.config import load
from wsbalancer.upstream.affinity import Affinity

from .helpers import aio, recv, start_backend, start_balancer, start_http_backend, wait_for

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
# A second loopback address: the bystander is not counted against 127.0.0.1's limit.
BYSTANDER_ADDRESS = ("127.0.0.2", 0)


def upgrade(
    path: bytes = b"/echo",
    host: bytes = b"example.com",
    version: bytes = b"13",
    extra: bytes = b"",
) -> bytes:
    """A raw WebSocket upgrade request."""
    return (
        b"GET " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: " + KEY + b"\r\n"
        b"Sec-WebSocket-Version: " + version + b"\r\n" + extra + b"\r\n"
    )


async def _answer(port: int, request: bytes) -> bytes:
    """The balancer's answer to `request`: all of it up to the close after an error answer,
    the head alone for a 101."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        if _status(head) == 101:
            return head
        return head + await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def _head(port: int, request: bytes) -> tuple[bytes, asyncio.StreamWriter]:
    """The head of the answer to `request`; the connection stays open (a 101 is a session)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    except asyncio.IncompleteReadError as e:
        head = e.partial
    return head, writer


async def _dropped(reader: asyncio.StreamReader) -> bytes:
    """What arrives until the balancer drops the connection (closed or reset)."""
    try:
        return await asyncio.wait_for(reader.read(), 10)
    except ConnectionResetError:
        return b""


class Bystander:
    """A WebSocket session from another address, open through the balancer throughout."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    @classmethod
    async def open(cls, lb: Any) -> Bystander:
        ws = await aio(websockets.connect(lb.ws_url("/echo"), local_addr=BYSTANDER_ADDRESS))
        bystander = cls(ws)
        await bystander.echoes("before")
        return bystander

    async def echoes(self, text: str) -> None:
        await aio(self.ws.send(text))
        assert await recv(self.ws) == text

    async def keeps_echoing(self, times: int) -> None:
        for i in range(times):
            await self.echoes(f"during {i}")

    async def close(self) -> None:
        await aio(self.ws.close())


def _status(head: bytes) -> int:
    line = head.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) > 1 and line[1].isdigit() else 0


def _header(head: bytes, name: bytes) -> list[bytes]:
    values = []
    for line in head.split(b"\r\n")[1:]:
        key, sep, value = line.partition(b":")
        if sep and key.strip().lower() == name.lower():
            values.append(value.strip())
    return values


# --- item 8: a burst admits exactly up to the limit ----------------------------------------


async def _burst(lb: Any, bystander: Bystander, n: int) -> tuple[list[int], list[Any]]:
    """`n` concurrent raw upgrades from 127.0.0.1 while the bystander echoes; their statuses
    and the writers of every connection (admitted ones stay open)."""

    async def one() -> tuple[int, Any]:
        head, writer = await _head(lb.port, upgrade())
        return _status(head), writer

    results, _ = await defer.gatherResults(
        [
            aio(asyncio.gather(*(one() for _ in range(n)))),
            defer.ensureDeferred(bystander.keeps_echoing(20)),
        ],
        consumeErrors=True,
    )
    return [status for status, _ in results], [writer for _, writer in results]


@pytest_twisted.ensureDeferred
async def test_a_burst_from_one_address_admits_exactly_the_per_address_limit() -> None:
    backend = start_backend("b1")
    lb = await start_balancer([backend.url], limits__max_connections_per_ip="100")
    try:
        bystander = await Bystander.open(lb)
        statuses, writers = await _burst(lb, bystander, 300)
        assert statuses.count(101) == 100, sorted(set(statuses))
        assert statuses.count(429) == 200
        await wait_for(lambda: len(lb.balancer.sessions) == 101, what="100 sessions + 1")
        await bystander.echoes("after")
        for writer in writers:
            writer.close()
        await wait_for(lambda: len(lb.balancer.sessions) == 1, what="the burst's sessions end")
        # The slots are free again: one more from the same address is admitted.
        ws = await aio(websockets.connect(lb.ws_url("/echo")))
        await aio(ws.send("again"))
        assert await recv(ws) == "again"
        await aio(ws.close())
        await bystander.close()
    finally:
        await lb.stop()
        await backend.stop()


@pytest_twisted.ensureDeferred
async def test_a_burst_admits_exactly_the_global_limit_and_answers_503_to_the_rest() -> None:
    backend = start_backend("b1")
    lb = await start_balancer([backend.url], limits__max_connections="100")
    try:
        bystander = await Bystander.open(lb)  # takes one of the 100
        statuses, writers = await _burst(lb, bystander, 300)
        assert statuses.count(101) == 99, sorted(set(statuses))
        assert statuses.count(503) == 201
        await bystander.echoes("after")
        for writer in writers:
            writer.close()
        await wait_for(lambda: len(lb.balancer.sessions) == 1, what="the burst's sessions end")
        await bystander.close()
    finally:
        await lb.stop()
        await backend.stop()


@pytest_twisted.ensureDeferred
async def test_an_unfinished_handshake_holds_no_slot_and_is_cut_at_the_handshake_timeout() -> None:
    backend = start_backend("b1")
    lb = await start_balancer(
        [backend.url], limits__max_connections_per_ip="2", timeouts__client_handshake="1s"
    )
    try:
        bystander = await Bystander.open(lb)
        stalled = []
        for _ in range(3):  # more than the limit, each a head that never ends
            reader, writer = await aio(asyncio.open_connection("127.0.0.1", lb.port))
            writer.write(upgrade()[:40])
            stalled.append((reader, writer))
        # Handshakes still being read take no slot: two sessions from the same address open.
        sessions = [await aio(websockets.connect(lb.ws_url("/echo"))) for _ in range(2)]
        for ws in sessions:
            await aio(ws.send("admitted"))
            assert await recv(ws) == "admitted"
        for reader, writer in stalled:
            assert await aio(_dropped(reader)) == b""  # dropped unanswered at the timeout
            writer.close()
        await bystander.echoes("after")
        for ws in sessions:
            await aio(ws.close())
        await bystander.close()
    finally:
        await lb.stop()
        await backend.stop()


class _Silent(protocol.Protocol):
    """Accepts TCP and never answers."""


@pytest_twisted.ensureDeferred
async def test_a_handshake_in_flight_holds_its_slot_until_the_backend_timeout_frees_it() -> None:
    silent = reactor.listenTCP(0, protocol.Factory.forProtocol(_Silent), interface="127.0.0.1")
    good = start_backend("good")
    lb = await start_balancer(
        [],
        config_file=_yaml(
            f"backends: [{{id: silent, url: 'ws://127.0.0.1:{silent.getHost().port}'}}]\n"
            "balancing: {metric_path: none}\n"
            f"pools:\n  echo:\n    backends: [{{id: good, url: '{good.url}', metric: none}}]\n"
            "routes: [{path: /echo, pool: echo}]\n"
        ),
        limits__max_connections_per_ip="1",
        timeouts__backend_handshake="1s",
    )
    try:
        bystander = await Bystander.open(lb)
        reader, writer = await aio(asyncio.open_connection("127.0.0.1", lb.port))
        writer.write(upgrade(path=b"/app"))  # dialled to the backend that never answers
        factory = lb.balancer.factories[0]
        await wait_for(lambda: factory.per_ip.get("127.0.0.1") == 1, what="the dial in flight")
        answer = await aio(_answer(lb.port, upgrade(path=b"/app")))
        assert _status(answer) == 429, answer  # the slot is the dialling one's
        await bystander.echoes("during")
        assert _status(await aio(_dropped(reader))) == 503  # no backend answered
        writer.close()
        answer = await aio(_answer(lb.port, upgrade(path=b"/app")))
        assert _status(answer) == 503, answer  # the slot was freed: dialled, not refused
        await bystander.echoes("after")
        await bystander.close()
    finally:
        await lb.stop()
        await good.stop()
        await silent.stopListening()


# --- item 10: the version, the Host, the header bytes --------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_version_other_than_13_gets_426_naming_13() -> None:
    backend = start_backend("b1")
    lb = await start_balancer([backend.url])
    try:
        bystander = await Bystander.open(lb)
        for version in (b"8", b"abc", b"12", b"13, 8", b"013"):
            answer = await aio(_answer(lb.port, upgrade(version=version)))
            head = answer.partition(b"\r\n\r\n")[0]
            assert _status(head) == 426, (version, answer)
            assert _header(head, b"Sec-WebSocket-Version") == [b"13"], (version, answer)
            await bystander.echoes(f"after {version!r}")
        assert [h["path"] for h in backend.backend.handshakes] == ["/echo"]  # the bystander
        ws = await aio(websockets.connect(lb.ws_url("/echo")))  # 13 is served
        await aio(ws.close())
        await bystander.close()
    finally:
        await lb.stop()
        await backend.stop()


BAD_HOSTS = [
    b"a b",
    b"h\xe9.example",
    b"example.com:abc",
    b"example.com:",
    b"example.com:99999",
    b"[::1",
    b"[zz::1]:80",
    b"::1",
    b"a/b",
    b"a@b",
    b"",
    b"example.com:80:80",
]
GOOD_HOSTS = [
    b"example.com",
    b"Example.COM:8080",
    b"127.0.0.1:80",
    b"[::1]:8080",
    b"[2001:db8::7]",
    b"xn--bcher-kva.example",
    b"under_score.local",
    b"localhost.",
]


@pytest_twisted.ensureDeferred
async def test_a_malformed_host_gets_400_and_a_valid_one_is_forwarded() -> None:
    backend = start_backend("b1")
    lb = await start_balancer([backend.url])
    try:
        bystander = await Bystander.open(lb)
        for host in BAD_HOSTS:
            answer = await aio(_answer(lb.port, upgrade(host=host)))
            assert _status(answer) == 400, (host, answer)
            assert b"Host" in answer.partition(b"\r\n\r\n")[2], (host, answer)
            await bystander.echoes(f"after {host!r}")
        assert len(backend.backend.handshakes) == 1  # none of them reached the backend
        for host in GOOD_HOSTS:
            head, writer = await aio(_head(lb.port, upgrade(host=host)))
            assert _status(head) == 101, (host, head)
            writer.close()
            forwarded = backend.backend.handshakes[-1]["headers"]["x-forwarded-host"]
            assert forwarded == host.decode("ascii"), host
        await bystander.echoes("after")
        await bystander.close()
    finally:
        await lb.stop()
        await backend.stop()


@pytest_twisted.ensureDeferred
async def test_header_bytes_beyond_ascii_reach_the_backend_as_they_came() -> None:
    backend = start_backend("b1")
    lb = await start_balancer([backend.url])
    try:
        bystander = await Bystander.open(lb)
        extra = b"X-Custom: \xe9\xff\r\nCookie: name=caf\xc3\xa9\r\n"
        head, writer = await aio(_head(lb.port, upgrade(extra=extra)))
        assert _status(head) == 101, head
        writer.close()
        # The backend (Autobahn) reads its head as latin-1: one character per byte.
        seen = backend.backend.handshakes[-1]["headers"]
        assert seen["x-custom"].encode("latin-1") == b"\xe9\xff"
        assert seen["cookie"].encode("latin-1") == b"name=caf\xc3\xa9"
        await bystander.echoes("after")
        await bystander.close()
    finally:
        await lb.stop()
        await backend.stop()


# --- item 6: a cookie whose MAC holds a non-ASCII byte is ignored --------------------------


def test_a_mac_with_non_ascii_characters_does_not_verify() -> None:
    config = load(
        None, environ={}, overrides=[("affinity.mode", "cookie", "t")], backends=["ws://x:1"]
    )
    affinity = Affinity(config, b"key", lambda: 0.0)
    name, nonce, mac = affinity.sign("x:1", "n1").split(".")
    assert affinity.verify(f"{name}.{nonce}.{mac}") == ("x:1", "n1")
    for bad_mac in (mac[:-1] + "\xe9", "\xff" * len(mac), "\u20ac"):
        assert affinity.verify(f"{name}.{nonce}.{bad_mac}") is None
    assert affinity.verify(f"\xe9.{nonce}.{mac}") is None


@pytest.mark.parametrize("mac", [b"AAAA\xe9", b"\xff\xfe"])
@pytest_twisted.ensureDeferred
async def test_a_cookie_with_a_non_ascii_mac_is_ignored_on_upgrades_and_http(mac: bytes) -> None:
    ws_backend = start_backend("b1")
    h1 = start_http_backend("h1")
    lb = await start_balancer(
        [],
        config_file=_yaml(
            f"backends: [{{id: h1, url: '{h1.url}', metric: none}}]\n"
            "http: {enabled: true}\naffinity: {mode: cookie, secret: s3cret}\n"
            f"pools:\n  echo:\n    backends: [{{id: b1, url: '{ws_backend.url}', metric: none}}]\n"
            "    affinity: {mode: cookie, secret: s3cret}\n"
            "routes: [{path: /echo, pool: echo}]\n"
        ),
    )
    cookie = b"Cookie: wsb_backend=YjE.n1." + mac + b"\r\n"
    try:
        bystander = await Bystander.open(lb)
        head, writer = await aio(_head(lb.port, upgrade(extra=cookie)))
        assert _status(head) == 101, head
        assert _header(head, b"Set-Cookie")[0].startswith(b"wsb_backend=")  # placed anew
        writer.close()
        request = b"GET /app HTTP/1.1\r\nHost: example.com\r\n" + cookie + b"\r\n"
        head, writer = await aio(_head(lb.port, request))
        assert _status(head) == 200, head
        assert _header(head, b"Set-Cookie")[0].startswith(b"wsb_backend=")
        writer.close()
        await bystander.echoes("after")
        await bystander.close()
    finally:
        await lb.stop()
        await ws_backend.stop()
        await h1.stop()


def _yaml(text: str) -> str:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(text)
    return f.name
