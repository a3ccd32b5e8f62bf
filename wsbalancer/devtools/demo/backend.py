"""The demo backend: echo and broadcast WebSockets, a `/metric` count, a chat page.

WebSocket upgrades are accepted on any path: paths under `/chat` broadcast every message to
every client of this backend (prefixed with the backend's name, like HAProxy's demo);
any other path echoes each message back to its sender unchanged (what the Autobahn cases
need), after `--reply-delay` seconds if given. `GET /metric` answers the seed plugin's JSON;
`GET /` serves the chat page. With `--close-on-stop CODE` (1012, 1001) a SIGTERM closes
every session with that code before the process exits, as a backend restarting
gracefully does.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from collections import deque
from importlib import resources
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import defer
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from wsbalancer.wire.compression import tune_compression


class DemoProtocol(WebSocketServerProtocol):
    """One client of the demo backend."""

    def onConnect(self, request: Any) -> Any:
        backend: DemoBackend = self.factory.backend
        if backend.deny_status:
            raise ConnectionDeny(backend.deny_status, "denied by demo backend")
        self.chat = request.path.startswith("/chat")
        chosen = next((p for p in backend.subprotocols if p in request.protocols), None)
        backend.handshakes.append(
            {
                "path": request.path,
                "params": dict(request.params),
                "headers": dict(request.headers),
                "protocols": list(request.protocols),
            }
        )
        return chosen

    def onOpen(self) -> None:
        backend: DemoBackend = self.factory.backend
        tune_compression(self, backend.compression_level)
        backend.clients.add(self)
        if self.chat:
            self.sendMessage(f"connected to {backend.name}".encode())

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        backend: DemoBackend = self.factory.backend
        if self.state != self.STATE_OPEN:
            return  # it arrived after our close frame: no more data may be sent (RFC 6455)
        if not self.chat:
            if backend.reply_delay:  # a backend slow per message (dashboards, tests)
                self.factory.reactor.callLater(backend.reply_delay, self._echo, payload, isBinary)
                return
            self.sendMessage(payload, isBinary)
            return
        if not isBinary:
            text = f"{backend.name}: {payload.decode('utf-8')}".encode()
            for client in list(backend.clients):
                if client.chat:
                    client.sendMessage(text)

    def _echo(self, payload: bytes, is_binary: bool) -> None:
        if self.state == self.STATE_OPEN:
            self.sendMessage(payload, is_binary)

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        backend: DemoBackend = self.factory.backend
        backend.clients.discard(self)
        backend.closes.append((code, reason))
        if not backend.clients:
            waiting, backend.all_closed = backend.all_closed, []
            for d in waiting:
                if not d.called:  # not timed out already
                    d.callback(None)


def _accept_deflate(offers: list[Any]) -> Any:
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            return PerMessageDeflateOfferAccept(offer)
    return None


class DemoBackend:
    """State of one demo backend process (or of one in-process test backend)."""

    def __init__(
        self,
        name: str,
        subprotocols: tuple[str, ...] = (),
        compression: bool = True,
        deny_status: int = 0,
        protocol: type[DemoProtocol] = DemoProtocol,
        compression_level: int = 6,
        reply_delay: float = 0.0,
    ) -> None:
        self.name = name
        self.reply_delay = reply_delay  # seconds each echo waits
        self.subprotocols = subprotocols
        self.deny_status = deny_status
        self.compression_level = compression_level
        self.clients: set[DemoProtocol] = set()
        self.closes: deque[tuple[Any, Any]] = deque(maxlen=100)  # (code, reason) seen
        self.handshakes: deque[dict[str, Any]] = deque(maxlen=100)  # for tests to inspect
        self.all_closed: list[defer.Deferred[None]] = []  # fired once no client is left
        self.factory = WebSocketServerFactory()
        self.factory.protocol = protocol
        self.factory.backend = self  # type: ignore[attr-defined]
        self.factory.setProtocolOptions(
            maxMessagePayloadSize=64 * 1024 * 1024,
            failByDrop=False,
            echoCloseCodeReason=True,
            perMessageCompressionAccept=_accept_deflate if compression else (lambda o: None),
        )
        self.factory.noisy = False

    def metric(self) -> dict[str, Any]:
        """The seed's metric document."""
        return {
            "agentsConnections": len(self.clients),
            "podName": os.environ.get("POD_NAME", self.name),
            "podIP": os.environ.get("POD_IP", "127.0.0.1"),
            "nodeName": os.environ.get("NODE_NAME", socket.gethostname()),
        }

    def close_all(self, code: int, reason: str, timeout: float, clock: Any) -> defer.Deferred[Any]:
        """Close every session with `code` (a graceful restart: 1012, 1001); fires once all
        are closed, or after `timeout` seconds with whatever is still open."""
        if not self.clients:
            return defer.succeed(None)
        gone: defer.Deferred[None] = defer.Deferred()
        self.all_closed.append(gone)
        for client in list(self.clients):
            client.sendCloseFrame(code, reason.encode())  # sendClose refuses 1012
        return gone.addTimeout(timeout, clock, onTimeoutCancel=lambda *_: None)

    def site(self) -> Site:
        """A twisted.web site serving the page, `/metric` and WebSocket upgrades anywhere."""
        site = Site(_Root(self))
        site.noisy = False
        return site


class _Root(Resource):
    def __init__(self, backend: DemoBackend) -> None:
        super().__init__()
        self.backend = backend
        self.websocket = WebSocketResource(backend.factory)

    def getChildWithDefault(self, path: bytes, request: Request) -> Any:
        upgrade = (request.getHeader(b"upgrade") or b"").lower()
        if upgrade == b"websocket":
            return self.websocket
        return self

    def render_GET(self, request: Request) -> bytes:
        if request.path == b"/metric":
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(self.backend.metric()).encode()
        if request.path in (b"/", b"/index.html"):
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            return chat_page()
        request.setResponseCode(404)
        return b"not found\n"


def chat_page() -> bytes:
    """The demo chat page (connects to the balancer named in ?ws=, else this host's /chat)."""
    return resources.files("wsbalancer.devtools.demo").joinpath("chat.html").read_bytes()


def main(argv: list[str] | None = None) -> None:
    """`wsbalancer-demo-backend --port 9001 --name backend-1`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--interface", default="127.0.0.1")
    parser.add_argument("--name", default=None)
    parser.add_argument("--subprotocols", default="", help="comma-separated, in preference order")
    parser.add_argument("--no-compression", action="store_true")
    parser.add_argument("--compression-level", type=int, default=6, choices=range(1, 10))
    parser.add_argument(
        "--deny-status",
        type=int,
        default=0,
        help="answer every handshake with this HTTP status (testing)",
    )
    parser.add_argument(
        "--reply-delay",
        type=float,
        default=0.0,
        help="seconds each echo waits (a backend slow per message)",
    )
    parser.add_argument(
        "--close-on-stop",
        type=int,
        default=0,
        metavar="CODE",
        help="on SIGTERM, stop listening and close every session with CODE (e.g. 1012) first",
    )
    args = parser.parse_args(argv)
    from twisted.internet import reactor

    backend = DemoBackend(
        args.name or f"backend-{args.port}",
        tuple(p for p in args.subprotocols.split(",") if p),
        compression=not args.no_compression,
        deny_status=args.deny_status,
        compression_level=args.compression_level,
        reply_delay=args.reply_delay,
    )
    port = reactor.listenTCP(args.port, backend.site(), interface=args.interface)  # type: ignore
    address: Any = port.getHost()
    if args.close_on_stop:

        def close_sessions() -> defer.Deferred[Any]:
            listening = defer.maybeDeferred(port.stopListening)
            closed = backend.close_all(args.close_on_stop, "service restart", 10.0, reactor)
            return defer.gatherResults([listening, closed])

        # Shutdown waits for a "before" trigger's Deferred: the close handshakes finish first.
        reactor.addSystemEventTrigger("before", "shutdown", close_sessions)  # type: ignore
    sys.stdout.write(f"{backend.name} listening on {address.port}\n")
    sys.stdout.flush()
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
