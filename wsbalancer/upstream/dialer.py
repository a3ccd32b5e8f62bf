"""Opening the backend leg: endpoint (TCP or TLS), the handshake request, its outcome."""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory
from autobahn.websocket.compress import PerMessageDeflateOffer
from twisted.internet import defer, error, ssl
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import ClientFactory
from twisted.python.failure import Failure

from wsbalancer.config import BackendConfig, Config, PoolConfig
from wsbalancer.wire.compression import accept_deflate_response
from wsbalancer.wire.lean import bake_options
from wsbalancer.wire.options import leg_options


class BackendHandshakeError(Exception):
    """The backend answered the handshake with something other than 101."""

    def __init__(self, status: int | None, reason: str) -> None:
        super().__init__(f"HTTP {status} {reason}" if status else reason)
        self.status = status
        self.reason = reason


class BackendConnectError(Exception):
    """The backend leg could not be opened (connect failure, timeout, lost mid-handshake)."""


class BackendTimeoutError(BackendConnectError):
    """The backend did not connect, or did not answer the handshake, in time."""


def backend_resource(backend_url: str, client_uri: str) -> str:
    """The request target on the backend: its URL's path as a prefix of the client's."""
    prefix = urlsplit(backend_url).path.rstrip("/")
    target = client_uri if client_uri.startswith("/") else "/" + client_uri
    return prefix + target


def client_certificate(config: PoolConfig) -> Any:
    """The certificate presented to backends (tls.client_cert/client_key), or None."""
    if not (config.tls_client_cert and config.tls_client_key):
        return None
    with open(config.tls_client_cert, "rb") as cert, open(config.tls_client_key, "rb") as key:
        return ssl.PrivateCertificate.loadPEM(cert.read() + b"\n" + key.read())


def tls_options(hostname: str, config: PoolConfig) -> Any:
    """Client TLS options for a wss:// backend: verified (service-identity) unless turned off,
    with the configured client certificate if any."""
    client = client_certificate(config)
    if not config.tls_verify:
        if client is None:
            return ssl.CertificateOptions(verify=False)
        return ssl.CertificateOptions(
            verify=False, privateKey=client.privateKey.original, certificate=client.original
        )
    trust_root: Any = None
    if config.tls_ca_file:
        with open(config.tls_ca_file, "rb") as f:
            pem = f.read()
        certs = [
            ssl.Certificate.loadPEM(b"-----BEGIN CERTIFICATE-----" + chunk)
            for chunk in pem.split(b"-----BEGIN CERTIFICATE-----")[1:]
        ]
        trust_root = ssl.trustRootFromCertificates(certs)
    return ssl.optionsForClientTLS(hostname, trustRoot=trust_root, clientCertificate=client)


class _DialFactory(ClientFactory):
    """Builds the one protocol of one dial and hands it the dial it belongs to; told of a
    connection that failed when it was given to `connectTCP` directly (an endpoint's
    wrapper reports that instead)."""

    noisy = False

    def __init__(self, ws_factory: WebSocketClientFactory, dial: BackendDial) -> None:
        self.ws_factory: WebSocketClientFactory | None = ws_factory
        self.dial = dial

    def buildProtocol(self, addr: Any) -> Any:
        assert self.ws_factory is not None
        protocol: Any = self.ws_factory.buildProtocol(addr)
        # The connector keeps this factory as long as the connection lasts; the dial's
        # factory copy is the protocol's alone from here (see BackendDial.shared_factory).
        self.ws_factory = None
        protocol.dial = self.dial
        self.dial.protocol = protocol
        return protocol

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        dial = self.dial
        if dial.cancelled:
            return  # stopped by us (the client left, the dial budget ran out)
        if reason.check(error.TimeoutError):
            dial.failed(BackendTimeoutError("connect timed out"))
        elif reason.value is not None:
            dial.failed(BackendConnectError(_reason(reason.value)))


class BackendDial:
    """One attempt at the backend leg; `deferred` fires with the open protocol."""

    def __init__(self) -> None:
        self.deferred: defer.Deferred[Any] = defer.Deferred(self._cancel)
        self.protocol: Any = None
        self.connecting: defer.Deferred[Any] | None = None  # an endpoint's connect
        self.connector: Any = None  # or connectTCP's, for plain TCP to an address
        self.cancelled = False
        # The backend's own factory, which the open leg takes instead of the dial's copy:
        # the copy's request fields (path, headers, offers) are the handshake's only, and
        # the copy is about 1.5 KiB of every idle session.
        self.shared_factory: Any = None
        self.backend_id: str | None = None  # the backend dialled (admission paces it)

    @property
    def pending(self) -> bool:
        """Whether the outcome is still unknown."""
        return not self.deferred.called

    def opened(self, protocol: Any) -> None:
        """The backend answered 101."""
        if self.pending:
            self.deferred.callback(protocol)

    def failed(self, error: Exception) -> None:
        """The dial ended without an open leg."""
        if self.pending:
            if getattr(self.protocol, "wasOpenHandshakeTimeout", False):
                # Autobahn's backend handshake timer dropped the connection.
                error = BackendTimeoutError("handshake timed out")
            self.deferred.errback(error)

    def _cancel(self, _: Any) -> None:
        self.cancelled = True
        if self.connecting is not None and not self.connecting.called:
            self.connecting.cancel()
        if self.connector is not None and self.protocol is None:
            try:
                self.connector.stopConnecting()
            except error.NotConnectingError:
                pass
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.abortConnection()


Endpoint = IStreamClientEndpoint


class BackendDialer:
    """Dials backends; one Autobahn client factory per backend, copied per dial."""

    def __init__(
        self,
        reactor: Any,
        config: PoolConfig,
        protocol_class: type,
        clock: Any = None,
        *,
        process: Config,
    ) -> None:
        self.reactor = reactor
        self.clock = clock or reactor
        self.config = config
        # The close timeout and message and frame limits are the whole process's, the same
        # on both legs; the rest is the pool's.
        self.process = process
        self.protocol_class = protocol_class
        self._factories: dict[str, tuple[BackendConfig, WebSocketClientFactory, Any]] = {}

    def reconfigure(self, config: PoolConfig, process: Config) -> None:
        """Use a new configuration for the next dials."""
        self.config, self.process = config, process
        self._factories.clear()

    def _prepared(self, backend: BackendConfig) -> tuple[WebSocketClientFactory, Any]:
        """The backend's factory, and where to connect: an endpoint, or (host, port) for
        plain TCP to an address, dialled with `connectTCP` itself (no per-dial wrapper
        protocol, connecting Deferred and canceller)."""
        cached = self._factories.get(backend.id)
        if cached is not None and cached[0] == backend:
            return cached[1], cached[2]
        config, process = self.config, self.process
        factory = WebSocketClientFactory(backend.url)
        factory.setProtocolOptions(
            **leg_options(process, config.backend_handshake_timeout, config.backend_keepalive),
            perMessageCompressionAccept=accept_deflate_response,
        )
        factory.useragent = None  # the client's own User-Agent is forwarded instead
        # Options as class attributes; the offers are set per dial on the factory copy.
        factory.protocol = bake_options(  # type: ignore[assignment]
            self.protocol_class, factory, frozenset({"perMessageCompressionOffers"})
        )
        factory.noisy = False
        parts = urlsplit(backend.url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "wss" else 80)

        # Built once per backend: reading and parsing the CA bundle is no per-session work.
        tls = tls_options(backend.server_name or host, config) if parts.scheme == "wss" else None

        # One endpoint per backend, reused for every dial: connect() keeps no state in it
        # (a host name is resolved again on each connect), and parsing the address once
        # keeps that out of every session's set-up.
        timeout = config.backend_connect_timeout
        target: Any
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            ep: IStreamClientEndpoint = HostnameEndpoint(self.reactor, host, port, timeout)
        else:
            if tls is None:
                target = (host, port)
                self._factories[backend.id] = (backend, factory, target)
                return factory, target
            cls = TCP6ClientEndpoint if address.version == 6 else TCP4ClientEndpoint
            ep = cls(self.reactor, host, port, timeout)
        if tls is not None:
            ep = wrapClientTLS(tls, ep)
        target = ep
        self._factories[backend.id] = (backend, factory, target)
        return factory, target

    def dial(
        self,
        backend: BackendConfig,
        resource: str,
        headers: dict[str, str],
        origin: str | None,
        protocols: list[str],
        offer_deflate: bool | list[Any],
        session: Any,
        limit: float | None = None,
    ) -> defer.Deferred[Any]:
        """Open the backend leg; fires with the open protocol, or fails with
        BackendHandshakeError / BackendConnectError (BackendTimeoutError when it took too
        long; defer.TimeoutError when `limit`, shorter than the dial's own time, ran out)."""
        base, target = self._prepared(backend)
        # A shallow copy, as copy.copy makes it, without its generic protocol steps.
        factory = object.__new__(type(base))
        factory.__dict__.update(base.__dict__)
        factory.resource = resource
        factory.headers = headers
        factory.origin = origin
        factory.protocols = protocols
        if isinstance(offer_deflate, list):
            offers = offer_deflate  # the client's own offers, for a spliced session
        else:
            offers = [PerMessageDeflateOffer()] if offer_deflate else []
        factory.perMessageCompressionOffers = offers
        dial = BackendDial()
        dial.shared_factory = base
        dial.session = session  # type: ignore[attr-defined]
        dial.backend_id = backend.id
        if type(target) is tuple:
            host, port = target
            timeout = self.config.backend_connect_timeout
            dial.connector = self.reactor.connectTCP(
                host, port, _DialFactory(factory, dial), timeout=timeout
            )
            return self._bounded(dial, limit)
        connecting = target.connect(_DialFactory(factory, dial))
        dial.connecting = connecting

        def connect_failed(failure: Any) -> None:
            if failure.check(error.TimeoutError):
                dial.failed(BackendTimeoutError("connect timed out"))
            # Cancelled by us (the client left, the dial budget ran out): not the backend's
            # failure. While TCP is still connecting, the endpoint says so with its own error.
            elif not failure.check(defer.CancelledError, error.ConnectingCancelledError):
                dial.failed(BackendConnectError(_reason(failure.value)))

        connecting.addErrback(connect_failed)
        return self._bounded(dial, limit)

    def _bounded(self, dial: BackendDial, limit: float | None) -> defer.Deferred[Any]:
        timeout = self.dial_timeout
        if limit is not None and limit < timeout:
            dial.deferred.addTimeout(limit, self.clock)  # the caller's budget, not the backend's
        else:
            dial.deferred.addTimeout(timeout, self.clock, self._timed_out)
        return dial.deferred

    @property
    def dial_timeout(self) -> float:
        """The longest one dial may take: connect, then the handshake."""
        return self.config.backend_connect_timeout + self.config.backend_handshake_timeout

    @staticmethod
    def _timed_out(result: Any, timeout: float) -> Any:
        # addTimeout's onTimeoutCancel: the backend's own time ran out.
        if isinstance(result, Failure) and result.check(defer.CancelledError):
            raise BackendTimeoutError("timed out")
        return result


def _reason(error: BaseException) -> str:
    text = str(error).strip() or error.__class__.__name__
    return text.splitlines()[0][:200]
