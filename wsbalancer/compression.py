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
    _stored_sent = False  # stored bytes went out since the main compressor last ran
    _current: Any = None
    _probe_in = 0
    _probe_out = 0

    def start_compress_message(self) -> None:
        pass  # the compressor is chosen in compress_message_data, once the size is known

    def _window_bits(self) -> tuple[bool, int]:
        if self._is_server:
            return self.server_no_context_takeover, self.server_max_window_bits
        return self.client_no_context_takeover, self.client_max_window_bits

    def compress_message_data(self, data: bytes) -> bytes:
        takeover_off, bits = self._window_bits()
        size = len(data)
        if size >= WATCH_BYTES and self.skip:
            self.skip -= 1
            if self._stored is None:
                self._stored = zlib.compressobj(0, zlib.DEFLATED, -bits, 1)
            self._current, self._stored_sent, self._probe_in = self._stored, True, 0
            out: bytes = self._stored.compress(data)
            return out
        # The peer's window now holds the stored bytes too, so a compressor that has
        # history from before them would refer to the wrong distances: start afresh.
        if self._compressor is None or takeover_off or self._stored_sent:
            self._compressor = zlib.compressobj(self.level, zlib.DEFLATED, -bits, self.mem_level)
            self._stored_sent = False
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
    large messages that do not compress."""
    pmce = protocol._perMessageCompress
    if type(pmce) is PerMessageDeflate:
        tuned: Any = pmce
        tuned.__class__ = TunedDeflate
        tuned.level = level
