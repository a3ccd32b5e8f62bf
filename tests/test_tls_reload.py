"""TLS, continued: the listen certificate re-read on reload (SIGHUP) without dropping sessions,
and a client certificate presented to backends that require one."""

from __future__ import annotations

import signal
import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import websockets
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor
from twisted.internet import ssl as twisted_ssl
from twisted.logger import globalLogPublisher
from websockets.sync.client import connect as sync_connect

from wsbalancer.config import ConfigError, load
from wsbalancer.devtools.demo.backend import DemoBackend
from wsbalancer.devtools.processes import free_port, processes, spawn_balancer, spawn_demo_backend

from .helpers import aio, recv, start_backend, start_balancer
from .tlsutil import CertAuthority


def der(cert_file: Path) -> bytes:
    """The certificate in a PEM file, as the DER bytes a TLS peer sends."""
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    return cert.public_bytes(serialization.Encoding.DER)


def peer_der(ws: Any) -> bytes:
    return bytes(ws.transport.get_extra_info("ssl_object").getpeercert(binary_form=True))


@contextmanager
def log_lines(namespace: str) -> Iterator[list[dict[str, Any]]]:
    """Events logged under `namespace` (or below it) while the block runs."""
    events: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if str(event.get("log_namespace", "")).startswith(namespace):
            events.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observe)


@pytest_twisted.ensureDeferred
async def test_reload_serves_the_new_certificate_and_keeps_open_sessions(tmp_path: Path) -> None:
    ca = CertAuthority(tmp_path)
    cert, key = ca.issue(["localhost"], ["127.0.0.1"])
    first = der(cert)
    backend = start_backend("plain")
    lb = await start_balancer(
        [backend.url], listen=f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
    )
    context = ssl.create_default_context(cafile=str(ca.ca_file))
    url = f"wss://localhost:{lb.port}/echo"
    clients = []
    try:
        old = await aio(websockets.connect(url, ssl=context))
        clients.append(old)
        assert peer_der(old) == first

        assert ca.issue(["localhost"], ["127.0.0.1"]) == (cert, key)  # new key, same files
        second = der(cert)
        assert second != first
        assert lb.service.reload() == ["certificate of ssl:0 reloaded"]
        new = await aio(websockets.connect(url, ssl=context))
        clients.append(new)
        assert peer_der(new) == second
        await aio(old.send("still open"))
        assert await recv(old) == "still open"

        # A broken key file: the certificate in use stays, one clear line says why.
        key.write_text("-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n")
        with log_lines("wsbalancer.service.tlsreload") as events:
            (change,) = lb.service.reload()
        assert change.startswith("certificate of ssl:0 kept (reload failed: ")
        assert len(events) == 1 and "the old certificate stays" in events[0]["log_format"]
        third = await aio(websockets.connect(url, ssl=context))
        clients.append(third)
        assert peer_der(third) == second
        for ws in (old, new, third):
            await aio(ws.send("alive"))
            assert await recv(ws) == "alive"
    finally:
        for ws in clients:
            await aio(ws.close())
        await lb.stop()
        await backend.stop()


def _served_certificate(port: int, ca_file: Path) -> bytes:
    context = ssl.create_default_context(cafile=str(ca_file))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            return bytes(tls.getpeercert(binary_form=True))


def test_sighup_to_twistd_reloads_the_certificate(tmp_path: Path) -> None:
    ca = CertAuthority(tmp_path)
    cert, key = ca.issue(["localhost"], ["127.0.0.1"])
    first = der(cert)
    with processes() as children:
        backend_port, port, admin = free_port(), free_port(), free_port()
        spawn_demo_backend(children, backend_port)
        balancer = spawn_balancer(
            children,
            port,
            admin,
            [f"ws://127.0.0.1:{backend_port}"],
            listen=f"ssl:{port}:interface=127.0.0.1:privateKey={key}:certKey={cert}",
        )
        context = ssl.create_default_context(cafile=str(ca.ca_file))
        with sync_connect(f"wss://localhost:{port}/echo", ssl=context, open_timeout=10) as ws:
            assert _served_certificate(port, ca.ca_file) == first
            ca.issue(["localhost"], ["127.0.0.1"])
            second = der(cert)
            balancer.send_signal(signal.SIGHUP)
            # Across processes: ask again until the new certificate is served (bounded).
            deadline = time.monotonic() + 10
            while _served_certificate(port, ca.ca_file) != second:
                assert time.monotonic() < deadline, "certificate not reloaded"
            ws.send("after SIGHUP")
            assert ws.recv(timeout=10) == "after SIGHUP"
        assert balancer.poll() is None  # still serving


async def _backend_requiring_client_certificates(ca: CertAuthority) -> tuple[Any, int]:
    cert, key = ca.issue(["localhost"])
    pair = twisted_ssl.PrivateCertificate.loadPEM(cert.read_bytes() + b"\n" + key.read_bytes())
    options = twisted_ssl.CertificateOptions(
        privateKey=pair.privateKey.original,
        certificate=pair.original,
        verify=True,
        requireCertificate=True,
        caCerts=[twisted_ssl.Certificate.loadPEM(ca.ca_file.read_bytes()).original],
    )
    listening = reactor.listenSSL(0, DemoBackend("mtls").site(), options, interface="127.0.0.1")
    return listening, listening.getHost().port


@pytest_twisted.ensureDeferred
async def test_a_backend_requiring_a_client_certificate_gets_ours(tmp_path: Path) -> None:
    ca = CertAuthority(tmp_path)
    client_cert, client_key = ca.issue(["wsbalancer.test"])
    listening, port = await _backend_requiring_client_certificates(ca)
    with_cert = await start_balancer(
        [f"wss://localhost:{port}"],
        tls__ca_file=str(ca.ca_file),
        tls__client_cert=str(client_cert),
        tls__client_key=str(client_key),
        balancing__metric_path="none",
    )
    without = await start_balancer(
        [f"wss://localhost:{port}"], tls__ca_file=str(ca.ca_file), balancing__metric_path="none"
    )
    try:
        ws = await aio(websockets.connect(with_cert.ws_url("/chat")))
        assert await recv(ws) == "connected to mtls"
        await aio(ws.close())

        with log_lines("wsbalancer") as events:
            with pytest.raises(websockets.InvalidStatus) as refused:
                await aio(websockets.connect(without.ws_url("/chat")))
        assert refused.value.response.status_code == 503
        lines = [e["log_format"].format(**e) for e in events]
        (line,) = [text for text in lines if text.startswith(f"backend localhost:{port} refused")]
        assert "certificate required" in line
    finally:
        await with_cert.stop()
        await without.stop()
        await listening.stopListening()


def test_client_certificate_needs_both_files_that_match(tmp_path: Path) -> None:
    ca = CertAuthority(tmp_path)
    cert, key = ca.issue(["wsbalancer.test"])
    _, other_key = ca.issue(["other.test"])
    base = {"WSBALANCER_BACKENDS": "wss://localhost:1"}
    with pytest.raises(ConfigError, match=r"^configuration: tls.client_key: needed with"):
        load(None, environ={**base, "WSBALANCER_TLS__CLIENT_CERT": str(cert)})
    with pytest.raises(ConfigError, match="are not a PEM certificate and its key"):
        load(
            None,
            environ={
                **base,
                "WSBALANCER_TLS__CLIENT_CERT": str(cert),
                "WSBALANCER_TLS__CLIENT_KEY": str(other_key),
            },
        )
