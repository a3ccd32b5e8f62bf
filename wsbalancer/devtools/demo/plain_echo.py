"""An ordinary WebSocket echo server: Autobahn's own protocol with its default options and
nothing else, no `/metric` (a plain GET gets Autobahn's status page), as most backends that
were never written for a count-polling balancer are. Run it with
`python -m wsbalancer.devtools.demo.plain_echo --port 9001`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol


class PlainEchoProtocol(WebSocketServerProtocol):
    """Sends every message back as it came."""

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.sendMessage(payload, isBinary)


def plain_echo_factory() -> WebSocketServerFactory:
    """The server's factory: listen on it with any stream endpoint."""
    factory = WebSocketServerFactory()
    factory.protocol = PlainEchoProtocol
    factory.noisy = False
    return factory


def main(argv: list[str] | None = None) -> None:
    """`python -m wsbalancer.devtools.demo.plain_echo --port 9001`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--interface", default="127.0.0.1")
    args = parser.parse_args(argv)
    from twisted.internet import reactor

    port = reactor.listenTCP(args.port, plain_echo_factory(), interface=args.interface)  # type: ignore
    address: Any = port.getHost()
    sys.stdout.write(f"plain echo server listening on {address.port}\n")
    sys.stdout.flush()
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
