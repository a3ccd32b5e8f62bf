"""Message-mode fast path: whole, simple data frames read and written without Autobahn's
per-frame machinery.

Autobahn parses a frame as a series of events (frame begin, frame data, frame end, message
begin, message end), each with state updates, traffic statistics and a masker object; for a
32-byte message that is most of a relay's user-space CPU. Most messages are one frame that
arrived whole in one read, so this module handles exactly that case itself and leaves every
other to Autobahn:

- received: an unfragmented text or binary frame (FIN set, no RSV bits, 7- or minimal
  16-bit length within the leg's size limits), masked exactly as the leg's role requires,
  arriving while Autobahn is between messages, on a leg without compression. Text is
  checked to be valid UTF-8 (Python's strict decoder rejects what RFC 3629 forbids:
  overlong forms, surrogates, code points past U+10FFFF). Anything else, from that frame
  on, goes to Autobahn, which accepts it or fails the connection exactly as before.
- sent: a whole message on an open, uncompressed leg that is not mid-message, within the
  leg's size and fragmentation limits; framed and masked as Autobahn would frame it.

A frame whose header passed but whose payload has not all arrived is left in the leg's
Autobahn buffer (`data`), from where either path resumes: the state is the one Autobahn is
in between two frames.
"""

from __future__ import annotations

import random
from typing import Any

from autobahn.websocket.protocol import WebSocketProtocol

from .lean import SMALL_FRAME, _native_masker

OPEN = WebSocketProtocol.STATE_OPEN
GROUND = WebSocketProtocol.SEND_STATE_GROUND
FAST_FRAME_MAX = 0xFFFF  # 7- and 16-bit lengths; longer frames stream through Autobahn
# A frame still arriving is kept whole (one bytes object per read) only while it is small;
# a larger one streams through Autobahn's parser instead of being copied read after read.
HOLD_MAX = 16 * 1024


def xor_mask(data: bytes, key: bytes) -> bytes:
    """`data` XORed with the 4-byte masking `key` (the same operation masks and unmasks)."""
    size = len(data)
    if size > SMALL_FRAME:
        return bytes(_native_masker(key, size).process(data))
    pad = (key * ((size + 3) >> 2))[:size]
    value = int.from_bytes(data, "little") ^ int.from_bytes(pad, "little")
    return value.to_bytes(size, "little")


def _smallest(limit: int, *others: int) -> int:
    for other in others:
        if 0 < other < limit:
            limit = other
    return limit


def prepare(leg: Any) -> None:
    """Decide, once the leg is open, whether its messages may take the fast path."""
    plain = (
        leg._perMessageCompress is None
        and not leg.logFrames
        and not leg.logOctets
        and not leg.trackedTimings
    )
    server = bool(leg.factory.isServer)
    leg.fast_in = plain and (not server or leg.requireMaskedClientFrames)
    leg.fast_in_max = _smallest(FAST_FRAME_MAX, leg.maxFramePayloadSize, leg.maxMessagePayloadSize)
    # What the peer must send: masked frames to a server, unmasked ones to a client (a
    # client that accepts masked server frames takes the ordinary path for those).
    leg.fast_in_mask = 0x80 if server else 0
    leg.fast_out = plain
    leg.fast_out_max = _smallest(1 << 62, leg.autoFragmentSize, leg.maxMessagePayloadSize)
    leg.fast_out_masked = bool(leg.maskServerFrames if server else leg.maskClientFrames)


def receive(leg: Any, data: bytes) -> None:
    """Bytes read on an open leg whose Autobahn parser is between messages."""
    if leg.data:
        data = leg.data + data  # the start of a frame an earlier read left
        leg.data = b""
    size = len(data)
    pos = 0
    want_mask = leg.fast_in_mask
    limit = leg.fast_in_max
    validate = leg.utf8validateIncoming
    while True:
        if size - pos < 2:
            if pos < size:
                leg.data = data[pos:]
            return
        b0 = data[pos]
        if b0 != 0x82 and b0 != 0x81:
            break  # fragmented, compressed, control or invalid: Autobahn's
        b1 = data[pos + 1]
        if b1 & 0x80 != want_mask:
            break
        length = b1 & 0x7F
        head = 6 if want_mask else 2
        if length == 126:
            head += 2
            if size - pos < head:
                leg.data = data[pos:]
                return
            length = (data[pos + 2] << 8) | data[pos + 3]
            if length < 126:
                break  # not the minimal encoding: Autobahn fails it
        elif length == 127:
            break
        if length > limit:
            break
        start = pos + head
        end = start + length
        if end > size:
            if length > HOLD_MAX:
                break
            leg.data = data[pos:]
            return
        payload = data[start:end]
        if want_mask and length:
            payload = xor_mask(payload, data[start - 4 : start])
        if b0 == 0x81 and validate:
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                break  # Autobahn fails the connection with 1007
        pos = end
        if leg.autoPingTimeoutCall and leg.autoPingRestartOnAnyTraffic:
            leg._cancelAutoPingTimeoutCall()
        leg.onMessage(payload, b0 == 0x82)
        if leg.state != OPEN or leg.splice_out is not None:
            # Closing (or spliced) meanwhile: the rest takes the leg's ordinary path.
            if pos < size:
                leg.dataReceived(data[pos:])
            return
    leg._dataReceived(data[pos:])


def send(leg: Any, payload: bytes, binary: bool) -> bool:
    """Send one message as one frame; False when it must take Autobahn's path."""
    size = len(payload)
    if not leg.fast_out or leg.state != OPEN or leg.send_state != GROUND:
        return False
    if size > leg.fast_out_max:
        return False
    b0 = b"\x82" if binary else b"\x81"
    if leg.fast_out_masked:
        key = random.getrandbits(32).to_bytes(4, "big")
        body = xor_mask(payload, key) if size else b""
        mask_bit = 0x80
    else:
        key = b""
        body = payload
        mask_bit = 0
    if size <= 125:
        header = b0 + bytes((mask_bit | size,))
    elif size <= 0xFFFF:
        header = b0 + bytes((mask_bit | 126,)) + size.to_bytes(2, "big")
    else:
        header = b0 + bytes((mask_bit | 127,)) + size.to_bytes(8, "big")
    leg.sendData(header + key + body)
    return True


class FastFrames:
    """Mixed into both legs: the fast paths' per-leg settings (off until `prepare`) and
    the send side."""

    fast_in = False
    fast_out = False

    def sendMessage(
        self,
        payload: bytes,
        isBinary: bool = False,
        fragmentSize: int | None = None,
        sync: bool = False,
        doNotCompress: bool = False,
    ) -> None:
        if fragmentSize is None and not sync and not doNotCompress:
            if send(self, payload, isBinary):
                return
        super().sendMessage(payload, isBinary, fragmentSize, sync, doNotCompress)  # type: ignore[misc]
