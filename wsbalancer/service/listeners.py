"""The listening sockets: the client-facing and admin endpoints as services, with the
listen backlog a reconnect wave needs, and the frontends as the admin API pauses them."""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred

from wsbalancer.observe import logs
from wsbalancer.service.tlsreload import server_endpoint

log = logs.logger("wsbalancer")

# Twisted's endpoints listen with a backlog of 50, which a reconnect wave (thousands of
# clients at once after a deploy) overflows into dropped SYNs and 1-3 s client retries. The
# kernel caps it at net.core.somaxconn; a `backlog=` in the description still wins.
LISTEN_BACKLOG = 1024


def with_default_backlog(description: str) -> str:
    """The listen description with `backlog=LISTEN_BACKLOG` unless it sets one."""
    kind = description.split(":", 1)[0]
    parts = description.split(":")
    if kind in ("tcp", "tcp6", "ssl", "unix") and not any(p.startswith("backlog=") for p in parts):
        return f"{description}:backlog={LISTEN_BACKLOG}"
    return description


class ListenerService(StreamServerEndpointService):
    """A listening endpoint; a taken port fails start-up loudly."""

    def __init__(self, reactor: Any, description: str, factory: Any) -> None:
        try:
            endpoint, self.tls = server_endpoint(reactor, with_default_backlog(description))
        except TypeError:
            # A backlog given by position (`tcp:8080:0.0.0.0:128`): "multiple values for
            # argument 'backlog'" with ours added. The description as written has its own.
            endpoint, self.tls = server_endpoint(reactor, description)
        super().__init__(endpoint, factory)
        self.description = description
        self._raiseSynchronously = True
        self.port: Any = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self.listening().addCallback(lambda port: setattr(self, "port", port))

    def listening(self) -> Deferred[Any]:
        """Fires with the IListeningPort once listening (to learn a port-0 address)."""
        waiting = self._waitingForPort
        if waiting is None:
            raise RuntimeError("the listener has not been started")
        result: Deferred[Any] = Deferred()

        def fire(port: Any) -> Any:
            result.callback(port)
            return port

        waiting.addCallback(fire)
        return result


class Frontends:
    """The client-facing listeners, as the admin API pauses and resumes them."""

    def __init__(self, listeners: list[ListenerService]) -> None:
        self.listeners = listeners
        self.paused = False

    def pause(self) -> None:
        """Stop accepting new connections (open sessions are untouched)."""
        for listener in self.listeners:
            if listener.port is not None:
                listener.port.stopReading()
        self.paused = True
        log.warn("frontends paused: no new connections are accepted")

    def resume(self) -> None:
        """Accept new connections again."""
        for listener in self.listeners:
            if listener.port is not None:
                listener.port.startReading()
        self.paused = False
        log.info("frontends resumed")
