"""Trimming Autobahn's per-connection and per-write costs, without changing its behaviour.

A naive Autobahn relay was measured at several times HAProxy's CPU per message and per
session; part of it is work done for features a relay does not use (debug formatting with
debug off, per-instance copies of the factory's options, traffic statistics nobody reads).
"""

from __future__ import annotations

import pprint
import types
from typing import Any

import autobahn.websocket.protocol as autobahn_protocol


class _LazyFormat:
    """pprint.pformat, deferred until the text is wanted."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __str__(self) -> str:
        return pprint.pformat(self.value)

    __repr__ = __str__


# Autobahn pretty-prints a connection's whole configuration (and, on every dial, its
# transport details) for a debug line, even with debug off: measured at a quarter of the
# CPU of a short session. Render it only if a debug line is actually written.
autobahn_protocol.pformat = _LazyFormat  # type: ignore[assignment]


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
_native_masker = autobahn_protocol.create_xor_masker


def create_xor_masker(mask: bytes, length: int | None = None) -> Any:
    """Autobahn's masker factory, with small frames masked by `SmallFrameMasker`."""
    if length is not None and length <= SMALL_FRAME:
        return SmallFrameMasker(mask)
    return _native_masker(mask, length)


autobahn_protocol.create_xor_masker = create_xor_masker


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
    return type(base.__name__, (base,), attrs)


class LeanSend:
    """The common write path without Autobahn's per-write debug formatting and statistics."""

    transport: Any
    send_queue: Any
    # Spliced sessions (splice.py): the direction reading this leg, and the one writing
    # to it, whose half-written frame this leg's own frames must wait for.
    splice_out: Any = None
    splice_in: Any = None

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        splice = self.splice_in
        if splice is not None and splice.mid_frame():
            splice.hold_write(self.transport, data)
            return
        if sync or chopsize or self.send_queue:
            super().sendData(data, sync, chopsize)  # type: ignore[misc]
        else:
            self.transport.write(data)
