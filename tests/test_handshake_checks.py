"""Integration: the client handshake checks (RFC 6455 version, Host, header bytes, affinity
cookies, connection limits under a burst), sent as raw bytes on 127.0.0.1 while a bystander
session keeps being served."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import pytest_twisted
import websockets

from wsbalancer.affinity import Affinity
from wsbalancer.config import load

from .helpers import aio, recv, start_backend, start_balancer, start_http_backend

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
