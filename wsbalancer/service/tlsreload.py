"""Certificate reload for `ssl:` listen endpoints: new handshakes get the re-read certificate.

Twisted asks the endpoint's TLS options for a new connection on every accepted socket, so an
object that forwards that call to options it can swap changes the certificate of the next
handshakes only; open sessions keep the TLS state they negotiated.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.endpoints import SSL4ServerEndpoint, serverFromString
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from wsbalancer.observe.logs import logger


def _options(endpoint: Any) -> Any:
    # Twisted's ssl: parser puts the options it built (key, certificate, chain, DH parameters)
    # here; rebuilding them with serverFromString reuses that parsing instead of copying it.
    return endpoint._sslContextFactory


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableServerTLS:
    """The TLS options of one `ssl:` listener, swappable while it listens."""

    log = logger("wsbalancer.tls")

    def __init__(self, reactor: Any, description: str, options: Any) -> None:
        self.reactor = reactor
        self.description = description
        self.options = options

    @property
    def name(self) -> str:
        """The endpoint without its options (file paths stay out of short messages)."""
        return ":".join(self.description.split(":")[:2])

    def serverConnectionForTLS(self, tlsProtocol: Any) -> Any:
        return self.options.serverConnectionForTLS(tlsProtocol)

    def reload(self) -> str | None:
        """Re-read the certificate and key; on any error keep the old ones and log one line.
        Returns an error text, or None when the new certificate is in use."""
        try:
            fresh = _options(serverFromString(self.reactor, self.description))
            fresh.getContext()  # a key that does not match the certificate fails here
        except Exception as e:
            error = (str(e).strip() or e.__class__.__name__).splitlines()[0][:300]
            self.log.error(
                "TLS certificate reload for {endpoint} failed, the old certificate stays: {error}",
                endpoint=self.name,
                error=error,
            )
            return error
        self.options = fresh
        self.log.info("TLS certificate reloaded for {endpoint}", endpoint=self.name)
        return None


def server_endpoint(reactor: Any, description: str) -> tuple[Any, ReloadableServerTLS | None]:
    """The endpoint for a listen description; for `ssl:` also its reloadable TLS options."""
    endpoint = serverFromString(reactor, description)
    if not isinstance(endpoint, SSL4ServerEndpoint):
        return endpoint, None
    tls = ReloadableServerTLS(reactor, description, _options(endpoint))
    endpoint._sslContextFactory = tls
    return endpoint, tls


def reload_certificates(listeners: Any) -> list[str]:
    """Reload every `ssl:` listener's certificate; what happened, for the reload summary."""
    changes = []
    for listener in listeners:
        tls = getattr(listener, "tls", None)
        if tls is not None:
            error = tls.reload()
            changes.append(
                f"certificate of {tls.name} "
                + ("reloaded" if error is None else f"kept (reload failed: {error})")
            )
    return changes
