"""The in-memory session rig: a real balancer and real legs joined by tests/memory.py to
fake backends and a client, on a memory reactor that is also Autobahn's clock. Its
fixtures (`reactor`, `rig`) are registered for every test module by conftest.py."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
import txaio
from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock

from wsbalancer.config import load
from wsbalancer.relay.balancer import Balancer
from wsbalancer.relay.hooks import SessionListener
from wsbalancer.relay.session import RelaySession

from .memory import REFUSE, Network, Pipe

OPEN = WebSocketProtocol.STATE_OPEN
CLOSED = WebSocketProtocol.STATE_CLOSED
LISTEN = IPv4Address("TCP", "192.0.2.1", 8080)  # the balancer's own address
BAD_GATEWAY = 1014  # registered with IANA and taken by browsers; Autobahn's own check refuses it


# --- the backends and the client ----------------------------------------------------------


class BackendPeer(WebSocketServerProtocol):  # type: ignore[misc]
    """One connection of a `FakeBackend`: answers "x" with "x:<name>" unless told not to."""

    closed_with: tuple[int | None, str | None] | None = None

    def onConnect(self, request: Any) -> Any:
        backend: FakeBackend = self.factory.backend
        backend.handshakes.append(request)
        backend.peers.append(self)
        if backend.deny is not None:
            raise ConnectionDeny(backend.deny, "not today")
        chosen = next((p for p in request.protocols if p in backend.subprotocols), None)
        answer = (chosen, {"Set-Cookie": ["app=1; Path=/"], "X-Internal": "secret"})
        if backend.gated:
            gate: Deferred[None] = Deferred()
            backend.gates.append(gate)
            return gate.addCallback(lambda _: answer)
        return answer

    def onOpen(self) -> None:
        code = self.factory.backend.close_on_open
        if code is not None:
            self.sendCloseFrame(code, b"crashed")

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        backend: FakeBackend = self.factory.backend
        backend.received.append(payload)
        if backend.echo:
            self.sendMessage(payload + b":" + backend.name.encode(), isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.closed_with = (code, reason)


class FakeBackend:
    """A WebSocket backend at one address, with switches for how it behaves."""

    def __init__(self, name: str, host: str, port: int = 9000) -> None:
        self.name, self.host, self.port = name, host, port
        self.url = f"ws://{host}:{port}"
        self.subprotocols: tuple[str, ...] = ("v1",)
        self.deny: int | None = None  # answer the handshake with this status
        self.gated = False  # hold each handshake until `release()`
        self.echo = True
        self.close_on_open: int | None = None  # close every session with this code at once
        self.gates: list[Deferred[None]] = []
        self.handshakes: list[Any] = []
        self.peers: list[BackendPeer] = []
        self.received: list[bytes] = []
        factory: Any = WebSocketServerFactory(self.url)
        factory.protocol = BackendPeer
        factory.backend = self
        self.factory = factory

    def build(self) -> BackendPeer:
        peer: BackendPeer = self.factory.buildProtocol(None)
        return peer

    def release(self) -> None:
        gates, self.gates = self.gates, []
        for gate in gates:
            gate.callback(None)

    @property
    def peer(self) -> BackendPeer:
        """The latest connection."""
        return self.peers[-1]


class Client(WebSocketClientProtocol):  # type: ignore[misc]
    """The client: records what it gets."""

    pipe: Pipe
    opened = False
    closed_with: tuple[bool, int | None, str | None] | None = None

    def onOpen(self) -> None:
        self.opened = True
        self.messages: list[bytes] = []

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.messages.append(payload)

    def onCloseFrame(self, code: Any, reasonRaw: Any) -> Any:
        if code != BAD_GATEWAY:
            return super().onCloseFrame(code, reasonRaw)
        # Autobahn checks codes against WebSocketProtocol's own list, whatever a subclass
        # allows: for this one call, the client takes 1014 as browsers do.
        allowed = WebSocketProtocol.CLOSE_STATUS_CODES_ALLOWED
        WebSocketProtocol.CLOSE_STATUS_CODES_ALLOWED = [*allowed, BAD_GATEWAY]
        try:
            return super().onCloseFrame(code, reasonRaw)
        finally:
            WebSocketProtocol.CLOSE_STATUS_CODES_ALLOWED = allowed

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.closed_with = (wasClean, code, reason)

    @property
    def answer(self) -> bytes:
        """The balancer's answer to the handshake (its status line and headers)."""
        head, _, _ = bytes(self.pipe.sent_to_client).partition(b"\r\n\r\n")
        return head


class Events(SessionListener):
    """A session listener that writes down what it hears."""

    def __init__(self) -> None:
        self.log: list[tuple[Any, ...]] = []

    def session_opened(self, session: RelaySession) -> None:
        assert session.backend_state is not None
        self.log.append(("opened", session.id, session.backend_state.id))

    def backend_picked(self, session: RelaySession, backend_id: str) -> None:
        self.log.append(("picked", session.id, backend_id))

    def failed_over(
        self, session: RelaySession, old_backend: str | None, new_backend: str | None, reason: str
    ) -> None:
        self.log.append(("failed_over", session.id, old_backend, new_backend))

    def session_closed(self, session: RelaySession) -> None:
        self.log.append(("closed", session.id, session.backend_id, session.close_code))

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [event for event in self.log if event[0] == kind]


class Rig:
    """A balancer, its backends and the in-memory network between them and the clients."""

    def __init__(self, reactor: MemoryReactorClock, names: tuple[str, ...], **settings: str):
        self.net = Network(reactor)
        self.backends = {
            name: FakeBackend(name, f"10.0.0.{i}") for i, name in enumerate(names, start=1)
        }
        for backend in self.backends.values():
            self.net.listen(backend.host, backend.port, backend.build)
        overrides = [("balancing.strategy", "round-robin", "test")]  # b1 first, then b2, ...
        overrides += [(key.replace("__", "."), value, "test") for key, value in settings.items()]
        config = load(
            None,
            environ={},
            overrides=overrides,
            backends=[f"{b.name}={b.url}" for b in self.backends.values()],
        )
        self.balancer = Balancer(config, reactor, rng=random.Random(7))
        self.events = Events()
        self.balancer.listeners.append(self.events)
        self.factory = self.balancer.server_factory()
        self.pool = self.balancer.pool

    def connect(self, path: str = "/echo", protocols: tuple[str, ...] = ("v1",)) -> Client:
        """A client opening a WebSocket on the balancer (pumped as far as it goes)."""
        factory: Any = WebSocketClientFactory(f"ws://lb.test{path}", protocols=list(protocols))
        factory.protocol = Client
        client: Client = factory.buildProtocol(None)
        client.pipe = self.net.connect(client, self.factory.buildProtocol(None), LISTEN)
        self.net.pump()
        return client

    def send(self, client: Client, *payloads: bytes) -> None:
        for payload in payloads:
            client.sendMessage(payload, isBinary=False)
        self.net.pump()

    @property
    def session(self) -> RelaySession:
        (session,) = self.balancer.sessions.values()
        return session

    def state(self, name: str) -> Any:
        return self.pool.backends[name]

    def kill(self, name: str) -> None:
        """The backend's connections are cut and it refuses new ones (it crashed)."""
        backend = self.backends[name]
        self.net.answer(backend.host, backend.port, REFUSE)
        for pipe in self.net.pipes:
            if pipe.server.protocol in backend.peers and not pipe.closed:
                pipe.drop()
        self.net.pump()

    def attempts(self, name: str) -> int:
        """Connections the balancer tried to open to a backend (refused ones included)."""
        backend = self.backends[name]
        return self.net.dials[(backend.host, backend.port)]

    def metric(self, name: str, **labels: str) -> float:
        value = self.balancer.metrics.registry.get_sample_value(name, labels)
        return value or 0.0


@pytest.fixture
def reactor() -> Iterator[MemoryReactorClock]:
    """A memory reactor that is also the clock of Autobahn's timers while the test runs."""
    clock = MemoryReactorClock()
    config: Any = txaio.config  # type: ignore[attr-defined]
    saved, config.loop = config.loop, clock
    try:
        yield clock
    finally:
        config.loop = saved


@pytest.fixture
def rig(reactor: MemoryReactorClock) -> Any:
    """`rig(names, **settings)`: a `Rig` with these backends and dotted settings (`__`)."""

    def make(names: tuple[str, ...] = ("b1", "b2"), **settings: str) -> Rig:
        return Rig(reactor, names, **settings)

    return make


def outcome_of(d: Deferred[str]) -> list[str]:
    """What a Deferred fires with, once it has (empty until then)."""
    out: list[str] = []
    d.addCallback(out.append)
    return out
