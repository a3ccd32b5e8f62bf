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


class TunedDeflate(PerMessageDeflate):
    """permessage-deflate compressing at the configured zlib level (Autobahn's is fixed at
    the default, 6): the balancer compresses every message it relays, so level 1 keeps the
    CPU cost per message several times lower for a modestly larger output."""

    level = 1

    def start_compress_message(self) -> None:
        if self._is_server:
            takeover_off, bits = self.server_no_context_takeover, self.server_max_window_bits
        else:
            takeover_off, bits = self.client_no_context_takeover, self.client_max_window_bits
        if self._compressor is None or takeover_off:
            self._compressor = zlib.compressobj(self.level, zlib.DEFLATED, -bits, self.mem_level)


def tune_compression(protocol: Any, level: int) -> None:
    """Switch a leg's negotiated permessage-deflate to the configured level."""
    pmce = protocol._perMessageCompress
    if type(pmce) is PerMessageDeflate and level != 6:
        tuned: Any = pmce
        tuned.__class__ = TunedDeflate
        tuned.level = level
