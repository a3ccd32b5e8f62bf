"""Trimming Autobahn's per-connection and per-write costs, without changing its behaviour.

A naive Autobahn relay was measured at several times HAProxy's CPU per message and per
session; part of it is work done for features a relay does not use (debug formatting with
debug off, per-instance copies of the factory's options, traffic statistics nobody reads).

Two kinds of trims live here. Subclass mix-ins and helpers (`LeanSend`, `LeanReceive`,
`bake_options`, `write_now`, ...) change nothing outside the balancer's own classes. The
others (`_LazyFormat`, `create_xor_masker`, `_ReactorLog`, ...) are the replacements of
Autobahn and Twisted module globals and class attributes that `wsbalancer.wire.patches`
puts in place when the service assembly calls its `install()`: importing this module
changes nothing.
"""

from __future__ import annotations

import pprint
import types
from collections import deque
from typing import Any

from autobahn.websocket import xormasker
from twisted.internet import abstract, tcp
from twisted.python import log as legacy_log

from wsbalancer.observe import logs

_log = logs.logger("wsbalancer.lean")


# Autobahn pretty-prints a connection's whole configuration (and, on every dial, its
# transport details) for a debug line, even with debug off: measured at a quarter of the
# CPU of a short session. `install()` makes it render only if a debug line is written.
class _LazyFormat:
    """pprint.pformat, deferred until the text is wanted."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __str__(self) -> str:
        return pprint.pformat(self.value)

    __repr__ = __str__


# The same for the highlighted type names of the debug lines around every connection,
# handshake and close (click.style per call: a few per cent of a short session's CPU).
class _LazyCall:
    """A formatting function's result, computed only if a log line is written."""

    __slots__ = ("func", "args")

    def __init__(self, func: Any, *args: Any) -> None:
        self.func = func
        self.args = args

    def __str__(self) -> str:
        return str(self.func(*self.args))

    __repr__ = __str__
    __format__ = lambda self, spec: format(str(self), spec)  # noqa: E731


def _lazy(func: Any) -> Any:
    return lambda *args: _LazyCall(func, *args)


class SmallFrameMasker:
    """XOR (un)masking of a small frame with Python's big integers.

    Autobahn's native masker costs about 11 us to set up (CFFI allocations) before it masks a
    single byte, which is most of the cost of a small message: every client frame is
    unmasked on the client leg and masked again on the backend leg. For up to a kilobyte one
    integer XOR is several times cheaper; larger frames keep the native masker."""

    __slots__ = ("mask", "offset")

    def __init__(self, mask: bytes) -> None:
        self.mask = mask
        self.offset = 0

    def pointer(self) -> int:
        return self.offset

    def reset(self) -> None:
        self.offset = 0

    def process(self, data: bytes) -> bytes:
        size = len(data)
        if not size:
            return b""
        shift = self.offset & 3
        mask = self.mask[shift:] + self.mask[:shift] if shift else self.mask
        self.offset += size
        key = (mask * ((size + 3) >> 2))[:size]
        value = int.from_bytes(data, "little") ^ int.from_bytes(key, "little")
        return value.to_bytes(size, "little")


SMALL_FRAME = 1024
_native_masker = xormasker.create_xor_masker  # Autobahn's own, whatever install() did


def create_xor_masker(mask: bytes, length: int | None = None) -> Any:
    """Autobahn's masker factory, with small frames masked by `SmallFrameMasker`."""
    if length is not None and length <= SMALL_FRAME:
        return SmallFrameMasker(mask)
    return _native_masker(mask, length)


def bake_options(base: type, factory: Any, per_connection: frozenset[str] = frozenset()) -> type:
    """A subclass of `base` carrying the factory's protocol options as class attributes.

    Autobahn copies some forty options from the factory onto every protocol instance when
    it connects (CPU per session, and a dict entry each per idle session) unless the
    instance already has them; class attributes count, so the copies are skipped.
    """
    attrs: dict[str, Any] = {}
    for name in base.CONFIG_ATTRS:  # type: ignore[attr-defined]
        if name in per_connection:
            continue
        value = getattr(factory, name)
        attrs[name] = staticmethod(value) if isinstance(value, types.FunctionType) else value
    attrs["lean_setup"] = True  # every option is here but the per-connection ones
    attrs["per_connection"] = tuple(
        name
        for name in base.CONFIG_ATTRS  # type: ignore[attr-defined]
        if name in per_connection
    )
    return type(base.__name__, (base,), attrs)


# Plain TCP transports, whose socket a write may go to at once (TLS ones keep their path).
_DIRECT_TRANSPORTS = (tcp.Server, tcp.Client)


def write_now(transport: Any, data: bytes) -> None:
    """`transport.write`, but sent at once when nothing is queued ahead of it.

    Twisted's write only queues: the reactor registers the socket for writability, wakes,
    sends, and unregisters it, which on a link carrying one small message at a time is two
    epoll_ctl calls and a loop round per message. When the transport's buffer is empty the
    bytes go straight to the socket; whatever the kernel does not take is queued as usual,
    so ordering, flow control and error handling stay Twisted's."""
    if (
        type(transport) in _DIRECT_TRANSPORTS
        and not transport._tempDataLen
        and not transport.dataBuffer
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
    ):
        try:
            sent = transport.socket.send(data)
        except OSError:
            sent = 0  # would block, or an error the queued write's doWrite will report
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def queued_bytes(transport: Any) -> int:
    """How much of what was written to `transport` this process still holds unsent (the
    peer, or the network, has not taken it yet); 0 for a transport it cannot tell of."""
    for _ in range(4):  # a socket's transport, or TLS over one (or two)
        if isinstance(transport, abstract.FileDescriptor):
            return len(transport.dataBuffer) - transport.offset + transport._tempDataLen
        transport = getattr(transport, "transport", None)
    return 0


# What Autobahn keeps of a finished handshake on the protocol: the raw request and response
# and the parsed request headers, about 1.5 KiB an idle session that nothing reads again
# (the session takes what it needs, path and headers for re-dials, before they go).
_HANDSHAKE_LEFTOVERS = (
    "http_headers",
    "http_request_data",
    "http_response_data",
    "request_pairs",
    "response_pairs",
)


def shed_handshake(leg: Any) -> None:
    """Let go of a leg's handshake text once the session no longer needs it."""
    state = leg.__dict__
    for name in _HANDSHAKE_LEFTOVERS:
        if name in state:
            state[name] = None


def restart_ping_timeout(leg: Any) -> None:
    """Give a leg's keepalive ping its whole pong timeout from now."""
    if getattr(leg, "autoPingTimeoutCall", None) is None:
        return
    leg.autoPingTimeoutCall.cancel()
    leg.autoPingTimeoutCall = leg.factory._batched_timer.call_later(
        leg.autoPingTimeout, leg.onAutoPingTimeout
    )


class _ReactorLog:
    """The `log` module as the epoll reactor sees it, minus the legacy logging context it
    pushes around every read and write (about a tenth of a busy relay's CPU): the call
    is made directly, and an exception is still logged, as Twisted's own wrapper does."""

    def __getattr__(self, name: str) -> Any:
        return getattr(legacy_log, name)

    @staticmethod
    def callWithLogger(logger: Any, func: Any, *args: Any, **kw: Any) -> Any:
        try:
            return func(*args, **kw)
        except KeyboardInterrupt:
            raise
        except BaseException:
            legacy_log.err(system=getattr(logger, "logstr", "-"))
            return None


class LeanReceive:
    """The end of a received message without Autobahn's observer event: it fires "message"
    to listeners (a Future and two callbacks per message) that a relay never registers."""

    failedByMe: bool
    message_data: Any
    message_is_binary: bool

    def onMessageEnd(self) -> None:
        if not self.failedByMe:
            self._onMessage(b"".join(self.message_data), self.message_is_binary)  # type: ignore[attr-defined]
        self.message_data = None


class LeanSend:
    """The common write path without Autobahn's per-write debug formatting and statistics."""

    transport: Any
    # Autobahn's queue of delayed writes (sync or chopped sends), made when first used:
    # an empty deque per leg is about 0.7 KiB of every idle session. The relay's own
    # checks read `queued` (None or the deque), which never makes one.
    queued: Any = None

    @property
    def send_queue(self) -> Any:
        queue = self.queued
        if queue is None:
            queue = self.queued = deque()
        return queue

    @send_queue.setter
    def send_queue(self, value: Any) -> None:
        self.queued = value if value else None  # the empty one each connection starts with

    # Spliced sessions (splice.py): the direction reading this leg, and the one writing
    # to it, whose half-written frame this leg's own frames must wait for.
    splice_out: Any = None
    splice_in: Any = None

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        splice = self.splice_in
        if splice is not None and splice.mid_frame():
            splice.hold_write(self, data)
            return
        if sync or chopsize or self.queued:
            super().sendData(data, sync, chopsize)  # type: ignore[misc]
        else:
            write_now(self.transport, data)

    def dropConnection(self, abort: bool = False) -> None:
        splice = self.splice_in
        if splice is not None and not abort and splice.mid_frame():
            splice.drop_when_frame_ends(self)  # the close this leg sent follows the frame
            return
        super().dropConnection(abort)  # type: ignore[misc]

    def onAutoPingTimeout(self) -> None:
        splice = self.splice_in
        if splice is not None and any(leg is self for leg, _ in splice.held_writes):
            restart_ping_timeout(self)  # the ping still waits behind a forwarded frame
            return
        super().onAutoPingTimeout()  # type: ignore[misc]
