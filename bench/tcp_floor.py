#!/usr/bin/env python3
"""The floor under wsbalancer: a Twisted TCP relay that does no WebSocket work at all.

    python bench/tcp_floor.py PORT BACKEND_PORT [BACKEND_PORT ...]

Each accepted connection goes to the backend with the fewest open connections, and bytes
are copied both ways as they arrive (the handshake, frames and closes pass through
untouched, as HAProxy's tunnel does). It runs on the same reactor with the same trims
wsbalancer installs (`wsbalancer.lean`: the leaner epoll loop, no logging context around
reads, writes sent at once when nothing is queued), so what it costs per message and per
session is what Twisted's connection machinery costs on this machine before any parsing,
validation, balancing or bookkeeping. `bench/run.py --floor` runs it as a reference path.
It is a measuring instrument, not a product: no TLS, no health checks, no failover.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import protocol, reactor  # Linux's default: the epoll reactor
from twisted.internet.endpoints import TCP4ClientEndpoint

from wsbalancer.lean import write_now  # and with it the reactor trims wsbalancer runs with


class Leg(protocol.Protocol):
    """One side of a relayed connection; `peer` is the other side once both are up."""

    peer: Leg | None = None

    def dataReceived(self, data: bytes) -> None:
        assert self.peer is not None
        write_now(self.peer.transport, data)

    def connectionLost(self, reason: Any = None) -> None:
        if self.peer is not None:
            self.peer.transport.loseConnection()
            self.peer.peer = None


class ClientLeg(Leg):
    """The accepted connection: reads wait until the backend connection is up."""

    def connectionMade(self) -> None:
        self.transport.pauseProducing()
        self.backend = self.factory.pick()
        connecting = self.factory.endpoints[self.backend].connect(BackendFactory())
        connecting.addCallbacks(self.paired, self.unreachable)

    def paired(self, backend: Leg) -> None:
        if not self.transport.connected:
            backend.transport.loseConnection()
            return
        self.peer, backend.peer = backend, self
        # A slow reader on either side pauses the other side's reads (as Twisted's
        # producer/consumer API does for any relay), so memory stays bounded.
        self.transport.registerProducer(backend.transport, True)
        backend.transport.registerProducer(self.transport, True)
        self.transport.resumeProducing()

    def unreachable(self, failure: Any) -> None:
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.open[self.backend] -= 1
        super().connectionLost(reason)


class BackendFactory(protocol.Factory):
    protocol = Leg


class FloorFactory(protocol.Factory):
    """Least connections over the backends, counted locally."""

    protocol = ClientLeg

    def __init__(self, backend_ports: list[int]) -> None:
        self.endpoints = [TCP4ClientEndpoint(reactor, "127.0.0.1", p) for p in backend_ports]
        self.open = [0] * len(backend_ports)

    def pick(self) -> int:
        index = min(range(len(self.open)), key=self.open.__getitem__)
        self.open[index] += 1
        return index


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        sys.exit(__doc__)
    port, *backend_ports = (int(a) for a in argv)
    reactor.listenTCP(port, FloorFactory(backend_ports), backlog=1024, interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(sys.argv[1:])
