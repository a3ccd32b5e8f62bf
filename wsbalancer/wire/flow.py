"""Flow control between a session's two legs: a full write buffer on one side pauses
reads on the other, so a slow peer costs bounded memory, never a dropped message."""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer


@implementer(IPushProducer)
class Pacer:
    """Lets one leg's full write buffer pause the other leg's reads.

    A transport registered directly would be stopped (disconnected) when its consumer's
    connection ends; the session decides how the other leg ends, so stop does nothing."""

    __slots__ = ("transport",)

    def __init__(self, transport: Any) -> None:
        self.transport = transport

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        pass


def pair_flow(client: Any, backend: Any) -> None:
    """Register each leg's reads as the producer for the other leg's writes."""
    for consumer_side, producer_side in ((client, backend), (backend, client)):
        consumer, producer = consumer_side.transport, producer_side.transport
        if consumer is None or producer is None:
            continue
        try:
            consumer.registerProducer(Pacer(producer), True)
        except RuntimeError:
            pass  # already disconnecting, or paired: nothing to add


def resume(protocol: Any) -> None:
    """Let a leg read again: one paused because its partner could not keep up must see
    its close."""
    transport = protocol.transport
    if transport is not None:
        try:
            transport.resumeProducing()
        except Exception:
            pass


def unpair(protocol: Any) -> None:
    """Forget the producer paired with this leg's writes, and let it read again."""
    transport = protocol.transport
    if transport is not None:
        try:
            transport.unregisterProducer()
        except Exception:
            pass
        resume(protocol)
