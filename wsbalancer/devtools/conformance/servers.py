"""What a conformance leg runs against, each in its own process as in production: the echo
backends, the balancer under twistd, and for the TLS leg a certificate made for the run and
a plain-TCP-to-TLS pipe (kosoku speaks only ws://)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from wsbalancer.devtools.processes import (
    clean_environment,
    free_port,
    spawn_balancer,
    spawn_demo_backend,
    wait_port,
)


def start_echo_backend(children: list[subprocess.Popen[Any]], compression: bool, log: Any) -> int:
    """The demo backend in echo mode, in its own process."""
    port = free_port()
    args = ["--compression-level", "1"] + ([] if compression else ["--no-compression"])
    spawn_demo_backend(children, port, "echo", args, output=log)
    return port


def start_plain_echo_backend(children: list[subprocess.Popen[Any]], log: Any) -> int:
    """An ordinary Autobahn echo server with no count endpoint, in its own process."""
    port = free_port()
    cmd = [sys.executable, "-m", "wsbalancer.devtools.demo.plain_echo", "--port", str(port)]
    child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    children.append(child)
    wait_port(port, process=child)
    return port


def start_balancer(
    children: list[subprocess.Popen[Any]],
    backend_port: int,
    log: Any,
    settings: list[str] = (),  # type: ignore[assignment]
    tls: tuple[str, str] | None = None,
    by_environment: bool = False,
) -> int:
    """The balancer under twistd, in its own process, in front of the backend (named by a
    `--backend` flag, or by `BE_URLS` alone)."""
    port, admin = free_port(), free_port()
    listen = None
    if tls is not None:
        listen = f"ssl:{port}:interface=127.0.0.1:privateKey={tls[1]}:certKey={tls[0]}"
    url = f"ws://127.0.0.1:{backend_port}"
    spawn_balancer(
        children,
        port,
        admin,
        [] if by_environment else [url],
        ["log.level=warn", *settings],
        listen=listen,
        env=clean_environment(BE_URLS=url) if by_environment else None,
        output=log,
    )
    return port


def make_certificate(folder: Path) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1/localhost; returns (cert path, key path)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


@contextmanager
def tls_forwarder(port: int, cafile: str) -> Iterator[int]:
    """A plain-TCP port that forwards each connection over TLS to 127.0.0.1:port.

    kosoku speaks only ws://; this byte pipe lets its cases reach the balancer's `ssl:`
    endpoint, so the balancer's TLS side is what is exercised. Runs in its own thread."""
    import ssl
    import threading
    from concurrent.futures import Future

    context = ssl.create_default_context(cafile=cafile)
    loop = asyncio.new_event_loop()
    ready: Future[int] = Future()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=context, server_hostname="localhost"
            )
        except (OSError, ssl.SSLError):
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        ready.set_result(server.sockets[0].getsockname()[1])
        async with server:
            try:
                await server.serve_forever()
            except asyncio.CancelledError:
                pass  # the run is over
        # Let the connections still piping finish their cancellation before the loop ends.
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    try:
        yield ready.result(10)
    finally:

        def stop() -> None:
            for task in asyncio.all_tasks(loop):
                task.cancel()

        loop.call_soon_threadsafe(stop)
        thread.join(10)
