"""In-memory connections for socket-free tests, after twisted.test.iosim: protocols joined by
`StringTransport`s and pumped by hand, with a `MemoryReactorClock` as reactor and clock.

What iosim leaves out and these keep: a reader whose transport was paused
(`pauseProducing`) takes no bytes, and no close, until it is resumed (a paused TCP
transport stops reading); an aborted or dropped connection is lost with `ConnectionLost`,
not `ConnectionDone`; and the outbound connections a program makes with `connectTCP` on the
memory reactor (endpoints included) are answered by `Network` from the servers listed with
`listen`: joined, refused, or left unanswered.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

# How a listed server answers a connection attempt.
ACCEPT, REFUSE, IGNORE = "accept", "refuse", "ignore"


class Transport(StringTransport):
    """One end of an in-memory connection; bytes go to `protocol` (which may be swapped,
    as Twisted's endpoint wrapper lets a protocol take its reads directly)."""

    def __init__(self, protocol: Any, host: IPv4Address, peer: IPv4Address) -> None:
        # lenient: pausing or resuming a closing transport is allowed, as on real TCP
        super().__init__(hostAddress=host, peerAddress=peer, lenient=True)
        self.protocol = protocol
        self.aborted = False
        self.lost = False  # connectionLost was delivered

    def write(self, data: bytes) -> None:
        if not self.lost and not self.aborted:
            super().write(data)

    def unregisterProducer(self) -> None:
        self.producer = None  # as a TCP transport does, whether or not one was registered

    def abortConnection(self) -> None:
        self.aborted = True
        self.clear()  # nothing written and not yet sent goes out
        self.loseConnection()

    @property
    def reading(self) -> bool:
        return self.producerState == "producing"


class Pipe:
    """A connection between a connecting protocol and an accepting one."""

    def __init__(
        self,
        client: Any,
        server: Any,
        client_address: IPv4Address,
        server_address: IPv4Address,
    ) -> None:
        self.client = Transport(client, client_address, server_address)
        self.server = Transport(server, server_address, client_address)
        # Bytes written by one end that the other has not read yet (it may be paused).
        self._to_server = bytearray()
        self._to_client = bytearray()
        self._reason: Failure | None = None  # why the connection is going (once it is)
        self.sent_to_client = bytearray()  # everything the accepting side wrote, for asserts

    def start(self) -> None:
        self.server.protocol.makeConnection(self.server)
        self.client.protocol.makeConnection(self.client)

    @property
    def closed(self) -> bool:
        return self.client.lost and self.server.lost

    def drop(self) -> None:
        """The network loses the connection: both ends see `ConnectionLost`, whatever was
        in flight is gone."""
        self._reason = Failure(ConnectionLost("dropped by the test"))
        self._to_server.clear()
        self._to_client.clear()
        self.client.clear()
        self.server.clear()
        for end in (self.client, self.server):
            self._lose(end)

    def step(self) -> bool:
        """Move what can move; True when anything did."""
        moved = False
        for source, target, flight in (
            (self.client, self.server, self._to_server),
            (self.server, self.client, self._to_client),
        ):
            data = source.value()
            if data:
                source.clear()
                flight += data
                if source is self.server:
                    self.sent_to_client += data
            if flight and target.reading and not target.lost:
                chunk = bytes(flight)
                flight.clear()
                target.protocol.dataReceived(chunk)
                moved = True
        if moved:
            return True
        for end in (self.client, self.server):
            if end.disconnecting and not end.lost and self._reason is None:
                aborted = end.aborted
                self._reason = Failure(
                    ConnectionLost("aborted") if aborted else ConnectionDone("closed")
                )
        if self._reason is not None:
            for end, flight in ((self.client, self._to_client), (self.server, self._to_server)):
                # A paused reader sees the close only once it reads again, after the data.
                if not end.lost and end.reading and not flight:
                    self._lose(end)
                    moved = True
        return moved

    def _lose(self, end: Transport) -> None:
        if end.lost:
            return
        end.lost = True
        end.disconnecting = True
        assert self._reason is not None
        end.protocol.connectionLost(self._reason)


class Network:
    """The connections of one test and the servers its program may connect to."""

    def __init__(self, reactor: MemoryReactorClock | None = None) -> None:
        self.reactor = reactor or MemoryReactorClock()
        self.pipes: list[Pipe] = []
        # (host, port) -> (how it answers, a callable building the accepting protocol)
        self.servers: dict[tuple[str, int], list[Any]] = {}
        self.unanswered: list[tuple[Any, Any]] = []  # (connector, factory) left hanging
        self.dials: Counter[tuple[str, int]] = Counter()  # connection attempts by address
        self._ports = iter(range(40000, 60000))

    def listen(self, host: str, port: int, build: Callable[[], Any], answer: str = ACCEPT) -> None:
        """A server at host:port; `build()` makes the protocol of each connection."""
        self.servers[(host, port)] = [answer, build]

    def answer(self, host: str, port: int, answer: str) -> None:
        """Change how host:port answers new connections (ACCEPT, REFUSE, IGNORE)."""
        self.servers[(host, port)][0] = answer

    def connect(self, client: Any, server: Any, server_address: IPv4Address) -> Pipe:
        """Join two protocols directly (a client connecting to a listening program)."""
        client_address = IPv4Address("TCP", "203.0.113.7", next(self._ports))
        pipe = Pipe(client, server, client_address, server_address)
        self.pipes.append(pipe)
        pipe.start()
        return pipe

    def _answer_dials(self) -> bool:
        reactor = self.reactor
        moved = False
        while reactor.tcpClients:
            host, port, factory, _timeout, _bind = reactor.tcpClients.pop(0)
            connector = reactor.connectors.pop(0)
            moved = True
            self.dials[(host, port)] += 1
            answer, build = self.servers.get((host, port), (REFUSE, None))
            if answer == REFUSE or build is None:
                factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
                continue
            if answer == IGNORE:
                self.unanswered.append((connector, factory))
                continue
            server_address = IPv4Address("TCP", host, port)
            client_address = IPv4Address("TCP", "10.255.0.1", next(self._ports))
            client = factory.buildProtocol(server_address)
            pipe = Pipe(client, build(), client_address, server_address)
            self.pipes.append(pipe)
            pipe.start()
        return moved

    def pump(self, rounds: int = 1000) -> None:
        """Deliver bytes, closes and dials, and run what is due now, until nothing moves."""
        for _ in range(rounds):
            self.reactor.advance(0)
            moved = self._answer_dials()
            for pipe in list(self.pipes):
                moved = pipe.step() or moved
            if not moved:
                return
        raise AssertionError(f"the network was still busy after {rounds} rounds")

    def advance(self, seconds: float) -> None:
        """Let time pass (in one step), then pump."""
        self.reactor.advance(seconds)
        self.pump()

    def run(self, seconds: float, step: float = 1 / 64) -> None:
        """Let time pass in steps (exact in binary), pumping after each: what is scheduled
        meanwhile runs at its time, not at the end."""
        for _ in range(round(seconds / step)):
            self.advance(step)
