"""The client-facing factory: the legs' options, the connection limits, and where the
legs open their sessions and route their requests (what the balancer hands it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from autobahn.twisted.websocket import WebSocketServerFactory

from wsbalancer.relay.interfaces import IRelaySession
from wsbalancer.relay.protocols import FrontendProtocol, HookedFrontendProtocol
from wsbalancer.wire.compression import accept_deflate_offer, refuse_compression
from wsbalancer.wire.lean import bake_options
from wsbalancer.wire.options import leg_options
from wsbalancer.wire.peers import peer_host

if TYPE_CHECKING:
    from wsbalancer.config import Config
    from wsbalancer.upstream.routing import Lane


class RelayFactory(WebSocketServerFactory):
    """The client-facing factory; shared by every listen endpoint.

    Its protocols read their options here and open their sessions through it; what it is
    given (`open_session`, `route`, `handshake_outcome`, `make_http_site`) is wired by the
    balancer, so a leg never reaches past its factory."""

    protocol = FrontendProtocol

    def __init__(
        self,
        open_session: Callable[[FrontendProtocol], IRelaySession],
        route: Callable[[str, str | None], Lane | None],
        handshake_outcome: Callable[[str], None],
        make_http_site: Callable[[], Any],
    ) -> None:
        super().__init__()
        self.open_session = open_session
        self.route = route
        self.handshake_outcome = handshake_outcome
        self.make_http_site = make_http_site
        self.noisy = False
        self.max_header_bytes = 0
        self.compression_level = 0
        self.max_connections = 0
        self.max_connections_per_ip = 0
        # Clients admitted under the limits: sessions open plus handshakes in flight (their
        # request read, the backend being dialled), in all and by address. Connections still
        # sending their request are not counted: a burst is admitted up to the limit, in the
        # order its requests arrive, and a request that never ends takes no slot (the
        # client handshake timeout drops it).
        self.admitted = 0
        self.per_ip: dict[str, int] = {}
        self._http_site: Any = None

    def configure(self, config: Config, hooked: bool = False) -> None:
        """Take the options the legs read from `config` (at start and on each reload);
        `hooked`: message hooks are configured, so client legs are HookedFrontendProtocol."""
        self.setProtocolOptions(
            **leg_options(config, config.client_handshake_timeout, config.client_keepalive),
            maxConnections=0,  # admit() counts against limits.max_connections instead
            webStatus=False,
            perMessageCompressionAccept=(
                accept_deflate_offer if config.compression else refuse_compression
            ),
        )
        base = HookedFrontendProtocol if hooked else FrontendProtocol
        self.protocol = bake_options(base, self)  # type: ignore[assignment]
        self.max_header_bytes = config.max_header_bytes
        self.compression_level = config.compression_level
        self.max_connections = config.max_connections
        self.max_connections_per_ip = config.max_connections_per_ip

    def http_site(self) -> Any:
        """The twisted.web site that proxies plain-HTTP requests (built on first use)."""
        if self._http_site is None:
            self._http_site = self.make_http_site()
        return self._http_site

    def admit(self, protocol: FrontendProtocol) -> tuple[int, str] | None:
        """Count a client whose request head is complete under `limits.max_connections` and
        `limits.max_connections_per_ip`; (status, reason) instead when it is over one."""
        host = peer_host(protocol)
        per_ip = self.max_connections_per_ip
        if per_ip and self.per_ip.get(host, 0) >= per_ip:
            return 429, "too many connections from this address"
        if self.max_connections and self.admitted >= self.max_connections:
            return 503, "maximum number of connections reached"
        self.admitted += 1
        self.per_ip[host] = self.per_ip.get(host, 0) + 1
        return None

    def release(self, protocol: FrontendProtocol) -> None:
        """An admitted client's connection ended: its slot is free."""
        self.admitted -= 1
        host = peer_host(protocol)
        left = self.per_ip.get(host, 1) - 1
        if left > 0:
            self.per_ip[host] = left
        else:
            self.per_ip.pop(host, None)
