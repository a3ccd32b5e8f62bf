"""Integration: the admin site under hostile requests (issue 20, items 4 and 5). Each hostile
request is answered from its head, with a reason, while a WebSocket session through the
balancer keeps being served."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import pytest_twisted
import treq
import websockets
from twisted.internet import reactor

from wsbalancer.admin.http import host_allowed, host_name
from wsbalancer.config import ConfigError, load

from .helpers import aio, recv, start_backend, start_balancer

TOKEN = "s3cret-token"
HUGE = 200 * 1024 * 1024  # declared, never sent


async def _setup(**settings: str) -> tuple[Any, Any, Any]:
    """A backend, a balancer with a token, and a bystander session echoing through it."""
    backend = start_backend("b0")
    settings.setdefault("admin__token", TOKEN)
    lb = await start_balancer([f"b0={backend.url}"], **settings)
    bystander = await aio(websockets.connect(lb.ws_url()))
    await _echoes(bystander)
    return backend, lb, bystander


async def _echoes(ws: Any) -> None:
    await aio(ws.send("bystander"))
    assert await recv(ws) == "bystander"


async def _teardown(backend: Any, lb: Any, bystander: Any) -> None:
    await _echoes(bystander)  # served all along
    await aio(bystander.close())
    await lb.stop()
    await backend.stop()


async def _exchange(port: int, data: bytes, timeout: float = 5.0, reset_ok: bool = False) -> bytes:
    """Send `data` (and nothing more) and read the answer until the server closes; with
    `reset_ok`, a connection the server cut (a reset, or a broken pipe while still
    writing) reads as b""."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await asyncio.wait_for(writer.drain(), timeout)
        return await asyncio.wait_for(reader.read(), timeout)
    except (ConnectionResetError, BrokenPipeError):
        if not reset_ok:
            raise
        return b""
    finally:
        writer.close()


def _answer(raw: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, json.loads(body)


def _head(method: str, path: str, *headers: str) -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + "".join(h + "\r\n" for h in headers)
        + "\r\n"
    ).encode()


AUTH = f"Authorization: Bearer {TOKEN}"
JSON = "Content-Type: application/json"


@pytest_twisted.ensureDeferred
async def test_a_huge_declared_body_is_answered_from_the_head() -> None:
    backend, lb, bystander = await _setup()
    try:
        # No token: 401 while the client has sent only the head (and no "100 Continue").
        raw = await aio(
            _exchange(
                lb.admin_port,
                _head(
                    "POST",
                    "/api/backends",
                    JSON,
                    f"Content-Length: {HUGE}",
                    "Expect: 100-continue",
                ),
            )
        )
        assert raw.startswith(b"HTTP/1.1 401 ")
        status, headers, doc = _answer(raw)
        assert doc["error"] == "unauthorized" and "token" in doc["reason"]
        assert headers["www-authenticate"].startswith("Bearer")
        assert headers["connection"] == "close"
        await _echoes(bystander)
        # A wrong token is no better.
        raw = await aio(
            _exchange(
                lb.admin_port,
                _head(
                    "POST",
                    "/api/backends",
                    JSON,
                    "Authorization: Bearer nope",
                    f"Content-Length: {HUGE}",
                ),
            )
        )
        assert _answer(raw)[0] == 401
        # With the token: 413 from the declared length, nothing read.
        raw = await aio(
            _exchange(
                lb.admin_port,
                _head("POST", "/api/backends", AUTH, JSON, f"Content-Length: {HUGE}"),
            )
        )
        status, _, doc = _answer(raw)
        assert (status, doc["error"]) == (413, "body_too_large") and "65536" in doc["reason"]
        await _echoes(bystander)
        # A client that sends the body anyway is not read to its end: what follows the
        # answer is dropped for at most 1 MiB, then the connection is cut.
        head = _head("POST", "/api/backends", AUTH, JSON, f"Content-Length: {HUGE}")
        raw = await aio(_exchange(lb.admin_port, head + b" " * (4 * 1024 * 1024), reset_ok=True))
        assert raw == b"" or _answer(raw)[0] == 413
        await _echoes(bystander)
    finally:
        await _teardown(backend, lb, bystander)


@pytest_twisted.ensureDeferred
async def test_a_chunked_body_needs_the_token_and_is_cut_at_the_cap() -> None:
    backend, lb, bystander = await _setup()
    try:
        chunked = "Transfer-Encoding: chunked"
        # No token: 401 at once, the (never ending) chunked body unread.
        raw = await aio(
            _exchange(lb.admin_port, _head("POST", "/api/backends", JSON, chunked) + b"4000\r\n")
        )
        assert _answer(raw)[0] == 401
        await _echoes(bystander)
        # With the token: 256 KiB of chunks and no last chunk; cut at 64 KiB, closed.
        chunk = b"4000\r\n" + b" " * 0x4000 + b"\r\n"
        started = reactor.seconds()
        raw = await aio(
            _exchange(
                lb.admin_port, _head("POST", "/api/backends", AUTH, JSON, chunked) + chunk * 16
            )
        )
        status, _, doc = _answer(raw)
        assert (status, doc["error"]) == (413, "body_too_large")
        assert reactor.seconds() - started < 2
        await _echoes(bystander)
    finally:
        await _teardown(backend, lb, bystander)


@pytest_twisted.ensureDeferred
async def test_deeply_nested_json_is_a_400() -> None:
    backend, lb, bystander = await _setup()
    try:
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        for body in (b"[" * 60000, b"[" * 30000 + b"]" * 30000, b'{"a":' * 12000):
            response = await treq.post(
                lb.admin_url("/api/backends"), data=body, headers=headers, persistent=False
            )
            doc = json.loads(await response.content())
            assert (response.code, doc["error"]) == (400, "bad_body"), body[:10]
            assert "nested" in doc["reason"]
            await _echoes(bystander)
    finally:
        await _teardown(backend, lb, bystander)


@pytest_twisted.ensureDeferred
async def test_only_application_json_is_read_as_json() -> None:
    backend, lb, bystander = await _setup()
    extra = start_backend("extra")
    try:
        url = lb.admin_url("/api/backends")
        body = json.dumps({"id": "x", "url": extra.url}).encode()
        for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
            headers = {"Authorization": f"Bearer {TOKEN}"}
            if content_type:
                headers["Content-Type"] = content_type
            response = await treq.post(url, data=body, headers=headers, persistent=False)
            doc = json.loads(await response.content())
            assert (response.code, doc["error"]) == (415, "unsupported_media_type"), content_type
            assert "application/json" in doc["reason"]
            await _echoes(bystander)
        assert "x" not in lb.balancer.pool.backends
        headers = {
            "Authorization": f"Bearer {TOKEN}",
            "Content-Type": "application/json; charset=utf-8",
        }
        response = await treq.post(url, data=body, headers=headers, persistent=False)
        assert response.code == 201
        await response.content()
    finally:
        await extra.stop()
        await _teardown(backend, lb, bystander)


async def _get(lb: Any, path: str, host: str) -> tuple[int, Any]:
    response = await treq.get(lb.admin_url(path), headers={"Host": host}, persistent=False)
    return response.code, json.loads(await response.content())


@pytest_twisted.ensureDeferred
async def test_a_host_not_allowed_is_a_400_and_ip_literals_pass() -> None:
    # open_reads: what a rebound page in an operator's browser could read without a token.
    backend, lb, bystander = await _setup(
        admin__token="",
        admin__open_reads="true",
        admin__allowed_hosts="admin.example,.corp.example",
    )
    port = lb.admin_port
    try:
        for path in ("/api/backends", "/balancer-metrics", "/healthz"):
            status, doc = await _get(lb, path, f"rebind.attacker.example:{port}")
            assert (status, doc["error"]) == (400, "host_not_allowed"), path
            assert "admin.allowed_hosts" in doc["reason"]
            await _echoes(bystander)
        assert (await _get(lb, "/api/backends", "evil\x01:x"))[0] == 400
        for host in (
            f"127.0.0.1:{port}",
            f"localhost:{port}",
            f"[::1]:{port}",
            "10.1.2.3:8081",  # a pod IP (kubelet probes, Prometheus scrapes)
            "admin.example",
            "ADMIN.example.:8081",
            "corp.example",
            "a.b.corp.example",
        ):
            assert (await _get(lb, "/readyz", host))[0] == 200, host
        status, doc = await _get(lb, "/api/backends", f"127.0.0.1:{port}")
        assert status == 200 and doc["backends"][0]["id"] == "b0"
    finally:
        await _teardown(backend, lb, bystander)
    anything = await start_balancer([backend.url], admin__allowed_hosts="*")
    try:
        assert (await _get(anything, "/healthz", "whatever.example"))[0] == 200
    finally:
        await anything.stop()


def test_host_names_and_patterns() -> None:
    assert host_name(b"Example.COM.:8081") == "example.com"
    assert host_name(b"[::1]:80") == "::1"
    assert host_name(b"10.0.0.1") == "10.0.0.1"
    assert host_name(b"a b") == "a b"  # not a name: allowed by nothing
    assert host_name(b"x:y") is None and host_name(b"[::1") is None and host_name(b"") is None
    own = frozenset({"box"})
    assert host_allowed("box", (), own) and host_allowed("app.localhost", (), own)
    assert host_allowed("fe80::1", (), own) and not host_allowed("a b", (), own)
    assert not host_allowed("evil.example", (".corp.example", "admin"), own)
    assert not host_allowed("xcorp.example", (".corp.example",), own)
    config = load(
        environ={},
        overrides=[("admin.allowed_hosts", "A.example, .B.example.", "t")],
        backends=["ws://a:1"],
    )
    assert config.admin_allowed_hosts == ("a.example", ".b.example")
    with pytest.raises(ConfigError, match="allowed_hosts"):
        load(
            environ={}, overrides=[("admin.allowed_hosts", "http://x/", "t")], backends=["ws://a:1"]
        )
