"""What an idle session's legs keep: a compact instance dict.

Autobahn sets some seventy attributes on every connection, most of them flags at their
starting value (`wasClean = False`, `localCloseCode = None`, ...), and a few objects only a
busy or closing connection uses (its traffic statistics, the UTF-8 validator, the open and
closed futures). Python gives an instance with that many attributes a dict of its own of
1.5 KiB; the objects add about 1.5 KiB more, per leg. On the balancer's legs the starting
values are class attributes (`IdleState`), the objects are made again on first use, and
`compact()` rebuilds the dict of an open, idle leg with only what differs: an attribute
Autobahn sets later goes back into the dict as it would have anyway.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from autobahn.websocket.protocol import TrafficStats
from autobahn.websocket.utf8validator import Utf8Validator
from twisted.internet import defer

# Per-connection flags and fields at the values Autobahn starts every connection with.
STARTING_VALUES: dict[str, Any] = {
    "_perMessageCompress": None,
    "trackedTimings": None,
    "send_state": 0,
    "data": b"",
    "queued": None,
    "triggered": False,
    "wasMaxFramePayloadSizeExceeded": False,
    "wasMaxMessagePayloadSizeExceeded": False,
    "closedByMe": False,
    "failedByMe": False,
    "droppedByMe": False,
    "wasClean": False,
    "wasNotCleanReason": None,
    "wasServerConnectionDropTimeout": False,
    "wasOpenHandshakeTimeout": False,
    "wasCloseHandshakeTimeout": False,
    "wasServingFlashSocketPolicyFile": False,
    "localCloseCode": None,
    "localCloseReason": None,
    "remoteCloseCode": None,
    "remoteCloseReason": None,
    "serverConnectionDropTimeoutCall": None,
    "openHandshakeTimeoutCall": None,
    "closeHandshakeTimeoutCall": None,
    "autoPingTimeoutCall": None,
    "autoPingPending": None,
    "autoPingPendingCall": None,
    "autoPingPendingSeq": 0,
    "autoPingPendingSent": None,
    "inside_message": False,
    "current_frame": None,
    "websocket_protocol_in_use": None,
    "fast_deflate": None,
    "_handshake_pending": False,
    "websocket_origin": "",
}

# What only the opening handshake reads; the session took what it needs before (the path
# and headers for re-dials). Read later, they are None.
HANDSHAKE_ONLY = (
    "http_headers",
    "http_request_data",
    "http_response_data",
    "request_pairs",
    "response_pairs",
    "http_status_line",
    "http_request_params",
    "_wskey",
    "websocket_key",
    "websocket_protocols",
    "websocket_extensions",
)

_EVENTS = ["message"]  # Autobahn's set_valid_events, the same for every connection


class _Opened:
    """What `is_open` is on a compacted leg: an opened connection's future, shared. Autobahn
    resolves `is_open` just after onOpen, where the client leg is compacted; resolving it
    again does nothing, and a callback added to it runs at once, as on a fired Deferred."""

    called = True
    callbacks: tuple[Any, ...] = ()

    def callback(self, result: Any = None) -> None:
        pass

    def addCallbacks(self, callback: Any, errback: Any = None, *args: Any, **kw: Any) -> Any:
        return defer.succeed(None).addCallbacks(callback, errback, *args, **kw)

    def addCallback(self, callback: Any, *args: Any, **kw: Any) -> Any:
        return defer.succeed(None).addCallback(callback, *args, **kw)

    def addBoth(self, callback: Any, *args: Any, **kw: Any) -> Any:
        return defer.succeed(None).addBoth(callback, *args, **kw)


class IdleState:
    """Mixed into both legs ahead of Autobahn's classes: the starting values as class
    attributes, and the objects an idle leg does without made on first use."""

    locals().update(STARTING_VALUES)
    locals().update(dict.fromkeys(HANDSHAKE_ONLY))
    # Counted into by Autobahn's slow paths; nothing reads them: one for all legs.
    trafficStats = TrafficStats()
    websocket_extensions_in_use: Any = ()  # (a list when some were agreed)
    _valid_events = _EVENTS
    _results: dict[str, Any] = {"message": None}  # what fire() last gave (never read)

    @cached_property
    def utf8validator(self) -> Any:
        """Reset by Autobahn at the start of each text message it validates."""
        return Utf8Validator()

    @cached_property
    def is_closed(self) -> Any:
        """Resolved by Autobahn when the connection closes."""
        return defer.Deferred()  # what txaio.create_future() makes on Twisted

    is_open: Any = _Opened()  # (a connection is compacted once open)


# Dropped from a compacted leg whatever their value: the handshake's leftovers, and the
# per-connection objects the class makes again on first use.
_DROPPED = frozenset(HANDSHAKE_ONLY) | {"trafficStats", "utf8validator", "is_open"}


def compact(leg: Any) -> None:
    """Rebuild an open leg's dict with only what differs from `IdleState`'s values."""
    if leg.inside_message:
        return  # the validator and the frame state are in use
    cls = type(leg)
    state = leg.__dict__
    kept: dict[str, Any] = {}
    starting = STARTING_VALUES
    for name, value in state.items():
        if name in _DROPPED:
            continue
        if name in starting:
            start = starting[name]
            if value is start or (type(value) is type(start) and value == start):
                continue
        elif name == "websocket_extensions_in_use" and not value:
            continue  # none agreed
        elif name == "is_closed" and not value.called:
            # Nothing in the balancer waits on it; Autobahn resolves it.
            continue
        elif name in ("_valid_events", "_results") and value == getattr(cls, name):
            continue
        kept[name] = value
    leg.__dict__ = kept
    transport = leg.transport
    state = getattr(transport, "__dict__", None)
    if state is not None:
        transport.__dict__ = dict(state)  # it grew and shrank while connecting
