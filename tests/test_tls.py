"""TLS on both sides: verified wss:// backends (service-identity), a TLS frontend."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest_twisted
import websockets
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString

from wsbalancer.devtools.demo.backend import DemoBackend

from .helpers import aio, recv, start_backend, start_balancer
from .tlsutil import CertAuthority


async def _tls_backend(name: str, cert: Path, key: Path) -> tuple[Any, int]:
    backend = DemoBackend(name)
    endpoint = serverFromString(
        reactor, f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
    )
    port = await endpoint.listen(backend.site())
    return port, port.getHost().port


async def _greeted(lb: Any, **kwargs: Any) -> str:
    ws = await aio(websockets.connect(lb.ws_url("/chat"), **kwargs))
    greeting = (await recv(ws)).removeprefix("connected to ")
    await aio(ws.close())
    return greeting


@pytest_twisted.ensureDeferred
async def test_verified_backend_works_and_wrong_host_or_unknown_ca_is_refused(
    tmp_path: Path,
) -> None:
    ca, stranger = CertAuthority(tmp_path), CertAuthority(tmp_path, "some other CA")
    good_port, good = await _tls_backend("good", *ca.issue(["localhost"]))
    wrong_port, wrong = await _tls_backend("wrong-host", *ca.issue(["elsewhere.test"]))
    alien_port, alien = await _tls_backend("unknown-ca", *stranger.issue(["localhost"]))
    lb = await start_balancer(
        [
            f"wrong=wss://localhost:{wrong}",
            f"alien=wss://localhost:{alien}",
            f"good=wss://localhost:{good}",
        ],
        tls__ca_file=str(ca.ca_file),
        balancing__strategy="round-robin",
        balancing__metric_path="none",
    )
    try:
        # Whatever backend the pick starts with, only the verified one ever takes a session.
        assert {await _greeted(lb) for _ in range(3)} == {"good"}
        pool = lb.balancer.pool.backends
        assert pool["wrong"].connect_failures >= 1 and pool["alien"].connect_failures >= 1
    finally:
        await lb.stop()
        for port in (good_port, wrong_port, alien_port):
            await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_verification_can_be_turned_off(tmp_path: Path) -> None:
    stranger = CertAuthority(tmp_path, "self-signed")
    port, number = await _tls_backend("unverified", *stranger.issue(["localhost"]))
    lb = await start_balancer(
        [f"wss://localhost:{number}"], tls__verify="false", balancing__metric_path="none"
    )
    try:
        assert await _greeted(lb) == "unverified"
    finally:
        await lb.stop()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_wss_client_through_the_tls_frontend(tmp_path: Path) -> None:
    ca = CertAuthority(tmp_path)
    cert, key = ca.issue(["localhost"], ["127.0.0.1"])
    backend = start_backend("plain")
    lb = await start_balancer(
        [backend.url], listen=f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
    )
    context = ssl.create_default_context(cafile=str(ca.ca_file))
    try:
        ws = await aio(websockets.connect(f"wss://localhost:{lb.port}/echo", ssl=context))
        await aio(ws.send("over tls"))
        assert await recv(ws) == "over tls"
        forwarded = backend.backend.handshakes[-1]["headers"]
        assert forwarded["x-forwarded-proto"] == "https"
        await aio(ws.close())
    finally:
        await lb.stop()
        await backend.stop()
