"""Shared integration-test helpers: real backends, a real balancer, all on 127.0.0.1:0."""

from __future__ import annotations

import asyncio
import json
import os
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.protocols.policies import WrappingFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from wsbalancer.config import load
from wsbalancer.devtools.demo.backend import DemoBackend, DemoProtocol
from wsbalancer.service.tap import BalancerService, build_service

TIMEOUT = 10.0


def aio(awaitable: Awaitable[Any]) -> defer.Deferred[Any]:
    """Await an asyncio awaitable (a websockets call) from a Twisted coroutine."""
    return defer.Deferred.fromFuture(asyncio.ensure_future(awaitable))


async def wait_for(
    predicate: Callable[[], Any], timeout: float = TIMEOUT, what: str = "condition"
) -> Any:
    """Check `predicate` on each reactor turn until true, failing after `timeout` seconds."""
    deadline = reactor.seconds() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await deferLater(reactor, 0.01, lambda: None)


class RunningBackend:
    """A demo backend listening on an ephemeral port."""

    def __init__(self, backend: DemoBackend, port: Any, tracker: WrappingFactory) -> None:
        self.backend = backend
        self.port = port
        self.tracker = tracker
        self.url = f"ws://127.0.0.1:{port.getHost().port}"
        self.id = self.url[len("ws://") :]  # the balancer's default backend id is host:port

    @property
    def count(self) -> int:
        return len(self.backend.clients)

    async def stop(self) -> None:
        """Stop listening and drop every connection (a crashed backend)."""
        stopped = self.port.stopListening()
        if stopped is not None:  # None: it had stopped already
            await stopped
        for connection in list(self.tracker.protocols):
            connection.transport.abortConnection()


def start_backend(
    name: str, protocol: type[DemoProtocol] = DemoProtocol, port: int = 0, **kwargs: Any
) -> RunningBackend:
    """A demo backend on `port` (0: an ephemeral one; a stopped backend's port restarts it)."""
    backend = DemoBackend(name, protocol=protocol, **kwargs)
    tracker = WrappingFactory(backend.site())  # to drop every connection, HTTP ones too
    listening = reactor.listenTCP(port, tracker, interface="127.0.0.1")
    return RunningBackend(backend, listening, tracker)


class RunningBalancer:
    """A balancer built from a config, started, with its ports known."""

    def __init__(self, service: BalancerService, port: int, admin_port: int) -> None:
        self.service = service
        self.balancer = service.balancer
        self.port = port
        self.admin_port = admin_port

    def ws_url(self, path: str = "/echo") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def admin_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.admin_port}{path}"

    async def stop(self) -> None:
        await self.service.stopService()


async def start_balancer(
    backend_urls: list[str], config_file: str | None = None, **settings: Any
) -> RunningBalancer:
    """Start a balancer in this reactor; `settings` are dotted keys with `__` for dots;
    `config_file` is a YAML file read first (pools and routes live there)."""
    overrides = [
        ("listen", "tcp:0:interface=127.0.0.1", "test"),
        ("admin.listen", "tcp:0:interface=127.0.0.1", "test"),
        ("balancing.poll_interval", "0.2s", "test"),
        ("shutdown.drain_period", "0s", "test"),
    ]
    overrides += [(key.replace("__", "."), value, "test") for key, value in settings.items()]
    config = load(config_file, environ={}, overrides=overrides, backends=backend_urls)
    service = build_service(config, reactor)
    service.startService()
    port = await service.listeners[0].listening()
    assert service.admin is not None
    admin = await service.admin.listening()
    return RunningBalancer(service, port.getHost().port, admin.getHost().port)


async def get_json(url: str) -> tuple[int, Any]:
    """GET a JSON document with treq."""
    import treq

    response = await treq.get(url, persistent=False)
    body = await response.content()
    return response.code, json.loads(body)


def recv(ws: Any, timeout: float = TIMEOUT) -> defer.Deferred[Any]:
    """A websockets message, failing the test after `timeout` seconds instead of hanging."""
    return aio(asyncio.wait_for(ws.recv(), timeout))


class HTTPBackend(Resource):
    """A plain-HTTP backend that records each request and answers `NAME METHOD PATH BODY`;
    `hang` leaves requests unanswered, `stream` answers in two parts (the second when
    `release()` is called)."""

    isLeaf = True

    def __init__(self, name: str, hang: bool = False, stream: bool = False) -> None:
        super().__init__()
        self.name = name
        self.hang = hang
        self.stream = stream
        self.requests: list[dict[str, Any]] = []
        self.waiting: list[Any] = []

    def render(self, request: Any) -> Any:
        body = request.content.read()
        self.requests.append(
            {
                "method": request.method.decode(),
                "uri": request.uri.decode(),
                "headers": {
                    k.decode().lower(): [v.decode() for v in vs]
                    for k, vs in request.requestHeaders.getAllRawHeaders()
                },
                "body": body,
            }
        )
        request.setHeader(b"x-served-by", self.name.encode())
        # A request whose client went away is no longer waiting.
        request.notifyFinish().addBoth(lambda _: self._forget(request))
        if self.hang:
            self.waiting.append(request)
            return NOT_DONE_YET
        answer = f"{self.name} {request.method.decode()} {request.uri.decode()} ".encode() + body
        if self.stream:
            request.write(b"first part;")
            self.waiting.append(request)
            return NOT_DONE_YET
        return answer

    def _forget(self, request: Any) -> None:
        if request in self.waiting:
            self.waiting.remove(request)

    def release(self) -> None:
        """Finish the streamed (or hung) requests."""
        for request in list(self.waiting):
            self.waiting.remove(request)
            request.write(b"second part")
            request.finish()


class RunningHTTPBackend:
    """An `HTTPBackend` listening on an ephemeral port."""

    def __init__(self, resource: HTTPBackend, port: Any) -> None:
        self.resource = resource
        self.port = port
        self.url = f"ws://127.0.0.1:{port.getHost().port}"
        self.id = resource.name

    async def stop(self) -> None:
        self.resource.release()
        await self.port.stopListening()


def start_http_backend(name: str, **kwargs: Any) -> RunningHTTPBackend:
    """A recording plain-HTTP backend on 127.0.0.1:0."""
    resource = HTTPBackend(name, **kwargs)
    site = Site(resource)
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    return RunningHTTPBackend(resource, port)


def frame(opcode: int, payload: bytes, fin: bool = True, mask: bool = True, rsv: int = 0) -> bytes:
    """One WebSocket frame as a peer sends it (masked with a random key unless `mask` is off)."""
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    size = len(payload)
    bit = 0x80 if mask else 0
    if size < 126:
        head += bytes([bit | size])
    elif size < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", size)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", size)
    if mask:
        key = os.urandom(4)
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        head += key
    return head + payload
