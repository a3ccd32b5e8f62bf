#!/usr/bin/env python3
"""The floor under wsbalancer: a Twisted TCP relay that does no WebSocket work at all.

    python bench/tcp_floor.py PORT BACKEND_PORT [BACKEND_PORT ...]

Each accepted connection goes to the backend with the fewest open connections, and bytes
are copied both ways as they arrive (the handshake, frames and closes pass through
untouched, as HAProxy's tunnel does). It runs on the same reactor with the same trims
wsbalancer installs (`wsbalancer.wire.patches.install()`: the leaner epoll loop, no logging
context around reads; and `write_now`: writes sent at once when nothing is queued), so what
it costs per message and per session is what Twisted's connection machinery costs on this
machine before any parsing, validation, balancing or bookkeeping. `bench/run.py --floor`
runs it as a reference path. It is a measuring instrument, not a product: no TLS, no health
checks, no failover.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import protocol, reactor  # Linux's default: the epoll reactor

from wsbalancer.wire.lean import write_now
from wsbalancer.wire.patches import install


class Leg(protocol.Protocol):
    """One side of a relayed connection; `peer` is the other side once both are up."""

    peer: Leg | None = None

    def dataReceived(self, data: bytes) -> None:
        if self.peer is not None:  # (a read in the same wake-up as the other side's close)
            write_now(self.peer.transport, data)

    def connectionLost(self, reason: Any = None) -> None:
        if self.peer is not None:
            self.peer.transport.loseConnection()
            self.peer.peer = None


class ClientLeg(Leg):
    """The accepted connection. What it sends before the backend connection is up (the
    handshake) is held and written once it is; the client sends nothing more until the
    backend's answer, so that is all that is ever held."""

    held: list[bytes] | None = None

    def connectionMade(self) -> None:
        self.held = []
        self.backend = self.factory.pick()
        host, port = self.factory.backends[self.backend]
        reactor.connectTCP(host, port, BackendConnector(self))  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        if self.held is not None:
            self.held.append(data)
        else:
            super().dataReceived(data)

    def paired(self, backend: Leg) -> None:
        self.peer, backend.peer = backend, self
        # A slow reader on either side pauses the other side's reads (as Twisted's
        # producer/consumer API does for any relay), so memory stays bounded.
        self.transport.registerProducer(backend.transport, True)
        backend.transport.registerProducer(self.transport, True)
        held, self.held = self.held or [], None
        if held:
            write_now(backend.transport, b"".join(held))

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.open[self.backend] -= 1
        super().connectionLost(reason)


class BackendLeg(Leg):
    """The connection to the backend: paired with its client once it is up."""

    def connectionMade(self) -> None:
        client = self.factory.client
        if client.transport.connected:
            client.paired(self)
        else:
            self.transport.loseConnection()


class BackendConnector(protocol.ClientFactory):
    """Dials one backend for one client connection (reactor.connectTCP: Twisted's
    cheapest way to dial, no endpoint or Deferred in between)."""

    protocol = BackendLeg

    def __init__(self, client: ClientLeg) -> None:
        self.client = client

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self.client.transport.loseConnection()


class FloorFactory(protocol.Factory):
    """Least connections over the backends, counted locally."""

    protocol = ClientLeg

    def __init__(self, backend_ports: list[int]) -> None:
        self.backends = [("127.0.0.1", p) for p in backend_ports]
        self.open = [0] * len(backend_ports)

    def pick(self) -> int:
        index = min(range(len(self.open)), key=self.open.__getitem__)
        self.open[index] += 1
        return index


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        sys.exit(__doc__)
    port, *backend_ports = (int(a) for a in argv)
    install()  # the reactor trims wsbalancer runs with (build_service installs them there)
    reactor.listenTCP(port, FloorFactory(backend_ports), backlog=1024, interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(sys.argv[1:])
