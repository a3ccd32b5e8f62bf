"""permessage-deflate on each leg: what is accepted, and at which zlib level we compress."""

from __future__ import annotations

import zlib
from typing import Any

from autobahn.websocket.compress import (
    PerMessageDeflateOffer,
    PerMessageDeflateOfferAccept,
    PerMessageDeflateResponse,
    PerMessageDeflateResponseAccept,
)
from autobahn.websocket.compress_deflate import PerMessageDeflate


def accept_deflate_offer(offers: list[Any]) -> Any:
    """Accept a client's permessage-deflate offer (the first one we can honour)."""
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            return PerMessageDeflateOfferAccept(offer)
    return None


def refuse_compression(offers: list[Any]) -> None:
    """Accept no compression offer."""
    return None


def accept_deflate_response(response: Any) -> Any:
    """Accept the backend's permessage-deflate answer to our offer."""
    if isinstance(response, PerMessageDeflateResponse):
        return PerMessageDeflateResponseAccept(response)
    return None


# Messages at least this large are watched: when one barely compresses (random or already
# compressed data: media, PDFs, encrypted payloads), the next few large ones are sent as
# stored deflate blocks instead. zlib spends as long on data it cannot shrink as on text
# (about 37 MB/s at level 1 here), so relaying such payloads would otherwise cost most of
# the balancer's CPU for nothing. RFC 7692 would also allow sending them uncompressed, but
# stored blocks keep every message compressed, which some peers expect.
WATCH_BYTES = 4096
INCOMPRESSIBLE_RATIO = 0.9
SKIP_AFTER_INCOMPRESSIBLE = 15  # then one large message is compressed again as a probe


class TunedDeflate(PerMessageDeflate):
    """permessage-deflate compressing at the configured zlib level (Autobahn's is fixed at
    the default, 6): the balancer compresses every message it relays, so level 1 keeps the
    CPU cost per message several times lower for a modestly larger output. Large messages
    after an incompressible one go out as stored blocks (see above)."""

    level = 1
    skip = 0  # large messages still to send stored before probing again
    _stored: Any = None  # a level-0 compressor: never refers back, so it is reusable
    # Bytes not made by the main compressor (stored, or forwarded as received) went into the
    # peer's window since it last ran, so its history no longer matches the peer's.
    _window_moved = False
    _current: Any = None
    _probe_in = 0
    _probe_out = 0
    # Receiving: compressed messages started so far, and the current one as it came (kept
    # only on a leg that may forward it: elsewhere nobody takes it and it would linger).
    received = 0
    keep_raw = False
    _raw: list[bytes] | None = None
    # Sending: the leg whose compressed stream our peer's window holds byte for byte (None
    # until decided, False once it cannot be so), which makes forwarding as received valid.
    mirrors: Any = None
    forwarded = 0  # messages sent as they were received

    def start_compress_message(self) -> None:
        pass  # the compressor is chosen in compress_message_data, once the size is known

    def _window_bits(self) -> tuple[bool, int]:
        """(no context takeover, window bits) of what we send: what our peer inflates with."""
        if self._is_server:
            return self.server_no_context_takeover, self.server_max_window_bits
        return self.client_no_context_takeover, self.client_max_window_bits

    def peer_window_bits(self) -> tuple[bool, int]:
        """(no context takeover, window bits) of what our peer sends us."""
        if self._is_server:
            return self.client_no_context_takeover, self.client_max_window_bits
        return self.server_no_context_takeover, self.server_max_window_bits

    def start_decompress_message(self) -> None:
        super().start_decompress_message()
        self.received += 1
        self._raw = [] if self.keep_raw else None

    def decompress_message_data(self, data: bytes, max_output_len: int | None = None) -> bytes:
        raw = self._raw
        if raw is not None:
            raw.append(data)
        out: bytes = super().decompress_message_data(data, max_output_len=max_output_len)
        return out

    def take_raw(self) -> list[bytes] | None:
        """The compressed frames of the message just received (once)."""
        raw, self._raw = self._raw, None
        return raw

    def compress_message_data(self, data: bytes) -> bytes:
        takeover_off, bits = self._window_bits()
        size = len(data)
        if size >= WATCH_BYTES and self.skip:
            self.skip -= 1
            if self._stored is None:
                self._stored = zlib.compressobj(0, zlib.DEFLATED, -bits, 1)
            self._current, self._window_moved, self._probe_in = self._stored, True, 0
            self.mirrors = False
            out: bytes = self._stored.compress(data)
            return out
        # The peer's window now holds bytes this compressor did not make, so its history
        # would refer to the wrong distances: start afresh.
        if self._compressor is None or takeover_off or self._window_moved:
            self._compressor = zlib.compressobj(self.level, zlib.DEFLATED, -bits, self.mem_level)
            self._window_moved = False
        self.mirrors = False
        self._current = self._compressor
        out = self._compressor.compress(data)
        self._probe_in, self._probe_out = size, len(out)
        return out

    def end_compress_message(self) -> bytes:
        tail: bytes = self._current.flush(zlib.Z_SYNC_FLUSH)
        size = self._probe_in
        if size >= WATCH_BYTES and self._probe_out + len(tail) - 4 > size * INCOMPRESSIBLE_RATIO:
            self.skip = SKIP_AFTER_INCOMPRESSIBLE
        return tail[:-4]


def tune_compression(protocol: Any, level: int) -> None:
    """Switch a leg's negotiated permessage-deflate to the configured level and to storing
    large messages that do not compress; a relay leg that forwards compressed messages
    (`forwards_as_is`) also keeps each one as it came."""
    pmce = protocol._perMessageCompress
    if type(pmce) is PerMessageDeflate:
        tuned: Any = pmce
        tuned.__class__ = TunedDeflate
        tuned.level = level
        tuned.keep_raw = getattr(protocol, "forwards_as_is", False)


def forward_compressed(source: Any, leg: Any, is_binary: bool) -> bool:
    """Send the compressed message `source` has just received (already inflated, size-checked
    and UTF-8-validated there) on `leg` exactly as it came, when `leg`'s peer can inflate those
    bytes as they are: no recompression, which is most of the relay's cost for large messages.
    False when it must be recompressed; the caller then sends the inflated payload."""
    src, dst = source._perMessageCompress, leg._perMessageCompress
    if type(src) is not TunedDeflate:
        return False
    raw = src.take_raw()
    inflater: Any = src._decompressor
    if not raw or type(dst) is not TunedDeflate or inflater is None or inflater.eof:
        return False  # (a final deflate block would end the inflater of a peer that keeps it)
    sender_resets, sender_bits = src.peer_window_bits()
    receiver_resets, receiver_bits = dst._window_bits()
    if sender_bits > receiver_bits:
        return False  # it may refer further back than the receiving peer keeps
    if not sender_resets:
        # The message may refer to earlier messages of the sender's stream: valid only if
        # the receiving peer's window holds that same stream, every compressed message of it
        # forwarded from the start.
        if dst.mirrors is None:
            first = src.received == 1 and dst._compressor is None and not dst._window_moved
            dst.mirrors = src if first else False
        if dst.mirrors is not src or receiver_resets:
            return False
    payload = raw[0] if len(raw) == 1 else b"".join(raw)
    if 0 < leg.maxMessagePayloadSize < len(payload):
        return False  # Autobahn's own send refuses it with its error
    dst._window_moved = True
    dst.forwarded += 1
    opcode = 2 if is_binary else 1
    size = leg.autoFragmentSize
    if size <= 0 or len(payload) <= size:
        leg.sendFrame(opcode=opcode, payload=payload, rsv=4)
        return True
    end = len(payload)
    for start in range(0, end, size):
        last = start + size >= end
        if start == 0:
            leg.sendFrame(opcode=opcode, payload=payload[:size], fin=last, rsv=4)
        else:
            leg.sendFrame(opcode=0, payload=payload[start : start + size], fin=last)
    return True
