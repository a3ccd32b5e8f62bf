"""Splice fast path (`relay.mode: splice`, per pool): frames forwarded byte-for-byte.

Once both handshakes are done and both legs negotiated the same extensions (or none), a
client's masked frames are valid toward the backend as they are, and a backend's unmasked
frames toward the client. Each direction then only parses frame headers: data frames
(opcodes 0-2), pings and pongs are written to the other leg as they arrive, several per
write when a read carried several, and their payload is never unmasked, inflated or
validated: that becomes the backend's job (and the client's, for what the backend sends);
the far end answers pings. Closes, reserved opcodes, oversized control frames and the pong
answering a leg's own keepalive ping go to that leg's Autobahn protocol, which validates
them and runs the close handshake exactly as in message mode.

Failover keeps working at message boundaries: a backend lost while it was sending a message
ends the session (the client cannot be handed the rest of a message from elsewhere); a
client message cut by a backend's loss is dropped, counted as lost, and the session moves
on. With permessage-deflate, failover needs `client_no_context_takeover` (otherwise the
client's compressor refers to history only the dead backend had).

A session whose legs negotiated different extensions (say the backend refused compression
the client asked for) stays in message mode, which translates.
"""

from __future__ import annotations

from typing import Any

from autobahn.websocket.compress_deflate import (
    PerMessageDeflate,
    PerMessageDeflateOffer,
    PerMessageDeflateOfferAccept,
)

from wsbalancer.relay.interfaces import IRelaySession
from wsbalancer.wire.lean import restart_ping_timeout, write_now
from wsbalancer.wire.states import OPEN

_DEFLATE_PARAMS = (
    "server_no_context_takeover",
    "client_no_context_takeover",
    "server_max_window_bits",
    "client_max_window_bits",
)


class SpliceDirection:
    """One direction of a spliced session: what `source` reads goes to the other leg."""

    __slots__ = (
        "session",
        "source",
        "to_backend",
        "pending",
        "remaining",
        "in_message",
        "discarding",
        "held_writes",
        "forwarding",
        "drop_after",
    )

    def __init__(self, session: IRelaySession, source: Any, to_backend: bool) -> None:
        self.session = session
        self.source = source
        self.to_backend = to_backend
        self.pending = b""  # a frame header (or a whole control frame) not yet complete
        self.remaining = 0  # payload bytes of the current data frame still to come
        self.in_message = False  # a fragmented message has begun and not ended
        self.discarding = False  # dropping the rest of a message cut by a failover
        # Frames the receiving leg wants to send itself (ping, close) while a forwarded
        # frame is only partly written: they go out once it is complete.
        self.held_writes: list[tuple[Any, bytes]] = []
        self.forwarding = False  # the frame in progress was begun on the receiving leg
        self.drop_after: Any = None  # a leg to disconnect once the frame is complete

    def at_boundary(self) -> bool:
        """Whether the other leg has been sent whole messages only."""
        return not self.remaining and not self.in_message

    def mid_frame(self) -> bool:
        """Whether the receiving leg's stream ends inside a forwarded frame."""
        return bool(self.remaining) and self.forwarding and not self.discarding

    def hold_write(self, leg: Any, data: bytes) -> None:
        self.held_writes.append((leg, data))

    def drop_when_frame_ends(self, leg: Any) -> None:
        """The receiving leg would disconnect now: let the frame in progress end first, so
        the close it sent can follow it (bounded by the leg's close timeout)."""
        self.drop_after = leg
        timeout = getattr(leg, "closeHandshakeTimeout", 0) or 5
        leg.factory._batched_timer.call_later(timeout, self._drop_now)

    def _drop_now(self) -> None:
        leg, self.drop_after = self.drop_after, None
        if leg is not None:
            self.forwarding = False  # whatever is left of the frame goes nowhere now
            leg.dropConnection()

    def _target(self) -> Any:
        session = self.session
        if self.to_backend:
            return session.backend
        return session.client if session.backend is self.source else None

    def _write(self, chunk: bytes, continuing: bool = False) -> bool:
        """Forward `chunk`; True when it went to the receiving leg (or was held for the
        next backend). A frame begun on a leg is finished even once that leg is closing,
        so that the close it is sending can follow the frame."""
        if not chunk:
            return False
        target = self._target()
        if target is not None:
            transport = target.transport
            if transport is not None and (target.state == OPEN or continuing):
                write_now(transport, chunk)
                return True
        elif self.to_backend and self.session.reconnecting:
            self.session.hold(chunk, None)  # failing over: sent to the next backend first
            return True
        return False  # the other leg is closing or gone: what it would not take is dropped

    def _frame_ended(self) -> None:
        writes, self.held_writes = self.held_writes, []
        for leg, data in writes:
            transport = leg.transport
            if transport is not None:
                transport.write(data)
                restart_ping_timeout(leg)  # its keepalive ping has only now gone out
        if self.drop_after is not None:
            self._drop_now()

    def feed(self, data: bytes) -> None:
        """Bytes read on the source leg."""
        if self.pending:
            data = self.pending + data
            self.pending = b""
        session = self.session
        size = len(data)
        pos = start = 0
        remaining = self.remaining
        discarding = self.discarding
        if remaining and not discarding:
            # The rest of a frame begun in an earlier read.
            pos = start = min(remaining, size)
            if self.forwarding:
                self._write(data[:pos], continuing=True)
            remaining -= pos
            if remaining:
                self.remaining = remaining
                return
            if self.held_writes or self.drop_after is not None:
                self._frame_ended()
        while pos < size:
            if remaining:
                step = size - pos
                if step < remaining:
                    remaining -= step
                    pos = size
                    if discarding:
                        start = pos
                    break
                pos += remaining
                remaining = 0
                if discarding:
                    start = pos
                    if not self.in_message:
                        discarding = False
                if self.held_writes or self.drop_after is not None:
                    self._write(data[start:pos])
                    start = pos
                    self._frame_ended()
                continue
            if size - pos < 2:
                break
            b0 = data[pos]
            b1 = data[pos + 1]
            length = b1 & 0x7F
            head = 6 if b1 & 0x80 else 2
            if length == 126:
                head += 2
                if size - pos < head:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
            elif length == 127:
                head += 8
                if size - pos < head:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
            elif size - pos < head:
                break
            opcode = b0 & 0x0F
            if opcode > 2:
                end = pos + head + length
                if opcode >= 8 and length <= 125 and end > size:
                    break  # a control frame not complete yet: wait for the rest
                if (opcode == 9 or opcode == 10) and length <= 125:
                    # Pings cross, so the far end answers them (or, having failed the
                    # connection on an earlier frame, does not); pongs cross too, except
                    # the answer to this leg's own keepalive ping.
                    if opcode == 9 or not self._own_pong(data, pos, head, length):
                        pos = end
                        continue
                # Closes (and what Autobahn must fail: reserved opcodes, oversized
                # control frames, which it does on the header) are the leg's own business.
                self._write(data[start:pos])
                self.remaining = 0
                self.discarding = discarding
                source = self.source
                if opcode < 8 or length > 125:
                    self.stop(data[pos:])
                    return
                source._dataReceived(data[pos:end])
                pos = start = end
                if source.state != OPEN or source.splice_out is not self:
                    self.stop(data[pos:])  # closing: the rest is Autobahn's to handle
                    return
                discarding = self.discarding  # a failover may have begun meanwhile
                continue
            if opcode:
                self.in_message = not b0 & 0x80
            elif b0 & 0x80:
                self.in_message = False
            if discarding:
                self._write(data[start:pos])
                pos += head
                start = pos
                if not length and not self.in_message:
                    discarding = False
                remaining = length
                continue
            if self.to_backend:
                session.bytes_in += length
                if b0 & 0x80:
                    session.msgs_in += 1
                    session.unanswered += 1
            else:
                session.bytes_out += length
                if b0 & 0x80:
                    session.msgs_out += 1
                    session.unanswered = 0
            pos += head
            remaining = length
        self.remaining = remaining
        self.discarding = discarding
        wrote = self._write(data[start:pos])
        if remaining:
            self.forwarding = wrote  # the trailing frame's header went out with this write
        if pos < size:
            self.pending = data[pos:]

    def _own_pong(self, data: bytes, pos: int, head: int, length: int) -> bool:
        expected = getattr(self.source, "autoPingPending", None)
        if not expected or length != len(expected):
            return False
        payload = data[pos + head : pos + head + length]
        if head == 6:  # masked (a small frame's header is 2 bytes, then the 4-byte key)
            key = data[pos + head - 4 : pos + head]
            payload = bytes(b ^ key[i & 3] for i, b in enumerate(payload))
        return bool(payload == expected)

    def stop(self, rest: bytes) -> None:
        """Hand the source leg back to Autobahn (its close, or a frame it must fail)."""
        if self.source.splice_out is self:
            self.source.splice_out = None
        self.pending = b""
        if rest:
            self.source._dataReceived(rest)

    def backend_lost(self) -> None:
        """The session's backend leg is gone (client-to-backend direction): a message
        partly sent to it cannot be completed elsewhere, so its rest is dropped."""
        self.held_writes.clear()
        if self.session.reconnecting:
            return  # a candidate refused during the failover: nothing of it was sent there
        if not self.at_boundary():
            self.discarding = True
            self.session.lost += 1


def splice_compatible(client: Any, backend: Any) -> bool:
    """Whether two open legs can exchange frames as they are."""
    ours = client.websocket_extensions_in_use or []
    theirs = backend.websocket_extensions_in_use or []
    if len(ours) != len(theirs) or len(ours) > 1:
        return False
    if ours:
        a, b = ours[0], theirs[0]
        if not (isinstance(a, PerMessageDeflate) and isinstance(b, PerMessageDeflate)):
            return False
        if any(getattr(a, name) != getattr(b, name) for name in _DEFLATE_PARAMS):
            return False
    # Frames the backend leg's parser has already taken in belong to message mode.
    return backend.current_frame is None and not backend.inside_message and not backend.queued


def fails_over_cleanly(client: Any) -> bool:
    """Whether a spliced session can move to another backend: the client's compressor, if
    any, must not refer to history the next backend never saw."""
    pmce = client._perMessageCompress
    return pmce is None or bool(pmce.client_no_context_takeover)


def engage(session: IRelaySession) -> bool:
    """Splice a session whose legs are both open; False (message mode stays) when they
    negotiated different extensions."""
    client, backend = session.client, session.backend
    if backend is None or not splice_compatible(client, backend):
        return False
    session.spliced = True
    outward = SpliceDirection(session, client, to_backend=True)
    client.splice_out = outward
    backend.splice_in = outward
    attach_backend(session, backend)
    # Frames that arrived with the handshakes are still in Autobahn's buffers.
    early, client.data = client.data, b""
    if early:
        outward.feed(early)
    return True


def attach_backend(session: IRelaySession, backend: Any) -> None:
    """Splice a (new) backend leg into a spliced session."""
    inward = SpliceDirection(session, backend, to_backend=False)
    backend.splice_out = inward
    session.client.splice_in = inward
    backend.splice_in = session.client.splice_out
    early, backend.data = backend.data, b""
    if early:
        inward.feed(early)


def client_offers(extensions: list[tuple[str, dict[str, Any]]]) -> list[PerMessageDeflateOffer]:
    """The client's permessage-deflate offers, parsed, to be made to the backend as they
    are (so that what the backend accepts can be accepted for the client too)."""
    offers = []
    for name, params in extensions:
        if name == "permessage-deflate":
            try:
                offers.append(PerMessageDeflateOffer.parse(params))
            except Exception:
                continue  # a malformed offer: the client leg refuses it the same way
    return offers


def mirror_accept(backend: Any) -> Any:
    """A `perMessageCompressionAccept` for the client leg that accepts exactly what the
    backend leg negotiated, or nothing when the backend negotiated nothing."""
    pmce = backend._perMessageCompress

    def accept(offers: list[Any]) -> Any:
        if not isinstance(pmce, PerMessageDeflate):
            return None
        default = PerMessageDeflate.DEFAULT_WINDOW_BITS
        for offer in offers:
            if not isinstance(offer, PerMessageDeflateOffer):
                continue
            try:
                return PerMessageDeflateOfferAccept(
                    offer,
                    request_no_context_takeover=pmce.client_no_context_takeover,
                    request_max_window_bits=(
                        0 if pmce.client_max_window_bits == default else pmce.client_max_window_bits
                    ),
                    no_context_takeover=pmce.server_no_context_takeover,
                    window_bits=pmce.server_max_window_bits,
                )
            except Exception:
                continue  # this offer cannot carry the backend's terms
        return None

    return accept
