"""Message-mode fast path: whole, simple data frames read and written without Autobahn's
per-frame machinery.

Autobahn parses a frame as a series of events (frame begin, frame data, frame end, message
begin, message end), each with state updates, traffic statistics and a masker object; for a
32-byte message that is most of a relay's user-space CPU. Most messages are one frame that
arrived whole in one read, so this module handles exactly that case itself and leaves every
other to Autobahn:

- received: an unfragmented text or binary frame (FIN set, 7- or minimal 16-bit length
  within the leg's size limits), masked exactly as the leg's role requires, arriving while
  Autobahn is between messages; with no RSV bit, or with RSV1 on a leg that negotiated
  permessage-deflate, in which case it is inflated through the leg's own extension object
  (the same calls, limits and errors as Autobahn's). Text is checked to be valid UTF-8
  (Python's strict decoder rejects what RFC 3629 forbids: overlong forms, surrogates,
  code points past U+10FFFF). Anything else, from that frame on, goes to Autobahn, which
  accepts it or fails the connection as before; a compressed message that fails after
  inflating began is failed here with Autobahn's own close code and reason.
- sent: a whole message on an open leg that is not mid-message, within the leg's size and
  fragmentation limits; compressed through the leg's extension when it has one, framed and
  masked as Autobahn would frame it.

A small binary frame whose header passed but whose payload has not all arrived is left in
the leg's Autobahn buffer (`data`), from where either path resumes: the state is the one
Autobahn is in between two frames. Frames relayed from one read are written to the other
leg together, in one send.
"""

from __future__ import annotations

import random
from typing import Any

from autobahn.exception import PayloadCorruptError, PayloadExceededError
from autobahn.websocket.compress_deflate import PerMessageDeflate
from autobahn.websocket.protocol import WebSocketProtocol

from wsbalancer.observe.logs import logger
from wsbalancer.wire.lean import SMALL_FRAME, _native_masker, queued_bytes, write_now
from wsbalancer.wire.states import OPEN

_log = logger("wsbalancer.relay")

GROUND = WebSocketProtocol.SEND_STATE_GROUND
FAST_FRAME_MAX = 0xFFFF  # 7- and 16-bit lengths; longer frames stream through Autobahn
# A frame still arriving is kept whole (one bytes object per read) only while it is small;
# a larger one streams through Autobahn's parser instead of being copied read after read.
HOLD_MAX = 16 * 1024
POLICY_VIOLATION = WebSocketProtocol.CLOSE_STATUS_CODE_POLICY_VIOLATION  # 1008
# Pongs a leg may have written since its peer last took everything sent to it: past this,
# the peer sends pings faster than it reads the answers (a flood, each pong a buffer of
# this process's memory), and the leg is closed with 1008.
CONTROL_BACKLOG_MAX = 64 * 1024


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
    pmce = leg._perMessageCompress
    deflate = pmce if isinstance(pmce, PerMessageDeflate) else None
    plain = (
        (pmce is None or deflate is not None)
        and leg.applyMask  # (only a fuzzer turns masking off)
        and not leg.logFrames
        and not leg.logOctets
        and not leg.trackedTimings
    )
    leg.fast_deflate = deflate
    server = bool(leg.factory.isServer)
    leg.fast_in = plain and (not server or leg.requireMaskedClientFrames)
    leg.fast_in_max = _smallest(FAST_FRAME_MAX, leg.maxFramePayloadSize, leg.maxMessagePayloadSize)
    # What the peer must send: masked frames to a server, unmasked ones to a client (a
    # client that accepts masked server frames takes the ordinary path for those).
    leg.fast_in_mask = 0x80 if server else 0
    leg.fast_out = plain
    leg.fast_out_max = _smallest(1 << 62, leg.autoFragmentSize, leg.maxMessagePayloadSize)
    leg.fast_out_masked = bool(leg.maskServerFrames if server else leg.maskClientFrames)


# Frames relayed while one read is being parsed, by the leg they go to: written together
# once the read is done (one send instead of one per frame, when a read carried several).
# The last frame of a read with nothing batched before it is written at once.
_batching = False
_batch: dict[Any, list[bytes]] = {}
_last_of_read = True


def receive(leg: Any, data: bytes) -> None:
    """Bytes read on an open leg whose Autobahn parser is between messages."""
    global _batching
    if _batching:
        _receive(leg, data)
        return
    _batching = True
    try:
        _receive(leg, data)
    finally:
        _batching = False
        if _batch:
            pending = list(_batch.items())
            _batch.clear()
            for target, chunks in pending:
                if chunks:
                    target.sendData(chunks[0] if len(chunks) == 1 else b"".join(chunks))


def flush_batched(leg: Any) -> None:
    """Write what is batched for `leg` now: something else is about to be written to it."""
    chunks = _batch.get(leg)
    if chunks:
        _batch[leg] = []
        leg.sendData(b"".join(chunks))


def _receive(leg: Any, data: bytes) -> None:
    global _last_of_read
    resumed = bool(leg.data)
    if resumed:
        data = leg.data + data  # the start of a frame an earlier read left
        leg.data = b""
    size = len(data)
    pos = 0
    want_mask = leg.fast_in_mask
    limit = leg.fast_in_max
    validate = leg.utf8validateIncoming
    deflate = leg.fast_deflate
    while True:
        if size - pos < 2:
            if pos < size:
                leg.data = data[pos:]
            return
        b0 = data[pos]
        if b0 != 0x82 and b0 != 0x81:
            # fragmented, control or invalid: Autobahn's; compressed (RSV1): ours when the
            # leg negotiated permessage-deflate
            if deflate is None or (b0 != 0xC2 and b0 != 0xC1):
                break
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
            # Not all here yet. A small binary frame waits whole; text goes to Autobahn,
            # whose streaming validator fails invalid UTF-8 as soon as it arrives rather
            # than at the frame's end (conformance cases 6.4.*), and so does compressed
            # data (inflated, and size-checked, as it arrives).
            # A frame still short after a second read goes to Autobahn too, which takes it
            # as it comes instead of copying it whole again on every read.
            if length > HOLD_MAX or b0 != 0x82 or (resumed and not pos):
                break
            leg.data = data[pos:]
            return
        payload = data[start:end]
        out = None  # the frame as relayed straight to the partner, when it is
        text = not b0 & 0x02
        if want_mask and length and (text or b0 & 0x40 or not leg.forwards_as_is):
            payload = xor_mask(payload, data[start - 4 : start])
            masked = False
        else:
            masked = bool(want_mask and length)  # still masked: see the direct relay below
        if b0 & 0x40:
            # The inflater's state moves with each compressed message, so from here on a
            # fault is failed here, as Autobahn fails it, rather than handed back.
            inflated = inflate(leg, deflate, payload)
            if inflated is None or (text and validate and not valid_utf8(leg, inflated)):
                # Failed (closing): what followed in this read, the peer's close say, is
                # Autobahn's to read; having failed, it delivers no more messages.
                if end < size:
                    leg._dataReceived(data[end:])
                return
            payload = inflated
            leg._isMessageCompressed = True
        else:
            if text and validate:
                try:
                    payload.decode("utf-8")
                except UnicodeDecodeError:
                    break  # Autobahn fails the connection with 1007
            if deflate is not None:
                leg._isMessageCompressed = False
            partner: Any = leg.partner if leg.forwards_as_is else None
            if (
                partner is not None
                and partner.state == OPEN
                and partner.fast_out
                and partner.fast_deflate is None
                and partner.send_state == GROUND
                and length <= partner.fast_out_max
                and partner.fast_out_masked == bool(want_mask)
            ):
                # Relayed as it came: a backend's frame is already what the client must
                # get; a client's is given a fresh key, re-masked in one pass.
                if want_mask:
                    key = random.getrandbits(32)
                    if masked:
                        old_key = int.from_bytes(data[start - 4 : start], "big")
                        payload = xor_mask(payload, (old_key ^ key).to_bytes(4, "big"))
                    elif length:
                        payload = xor_mask(payload, key.to_bytes(4, "big"))
                    out = data[pos : start - 4] + key.to_bytes(4, "big") + payload
                else:
                    out = data[pos:end]
            elif masked:
                payload = xor_mask(payload, data[start - 4 : start])
        pos = end
        if leg.autoPingTimeoutCall and leg.autoPingRestartOnAnyTraffic:
            leg._cancelAutoPingTimeoutCall()  # a data frame came, as Autobahn counts it
        if out is not None:
            leg.relayed(length)
            if pos < size or (_batch and _batch.get(partner)):
                emit(partner, out, pos == size)
            elif partner.queued or partner.splice_in is not None:
                partner.sendData(out)
            else:
                write_now(partner.transport, out)  # what LeanSend.sendData comes to
            continue
        _last_of_read = pos == size
        try:
            leg.onMessage(payload, not text)
        finally:
            _last_of_read = True
        if leg.state != OPEN or leg.splice_out is not None:
            # Closing (or spliced) meanwhile: the rest takes the leg's ordinary path.
            if pos < size:
                leg.dataReceived(data[pos:])
            return
    leg._dataReceived(data[pos:])


def inflate(leg: Any, deflate: Any, payload: bytes) -> bytes | None:
    """A whole compressed message inflated as Autobahn does it (its size limit counts the
    inflated bytes); None when the leg has been failed for it."""
    limit = leg.maxMessagePayloadSize
    deflate.start_decompress_message()
    try:
        out: bytes = deflate.decompress_message_data(payload, max_output_len=limit or None)
        deflate.end_decompress_message()
    except PayloadExceededError:
        leg.wasMaxMessagePayloadSizeExceeded = True
        leg._max_message_size_exceeded(
            limit,
            limit,
            f"received WebSocket message exceeds payload limit of {limit} octets "
            "after decompression",
        )
        return None
    except PayloadCorruptError as e:
        leg._invalid_payload(f"received WebSocket message cannot be decompressed: {e}")
        return None
    if 0 < limit < len(out):
        leg.wasMaxMessagePayloadSizeExceeded = True
        leg._max_message_size_exceeded(
            len(out), limit, f"received WebSocket message size {len(out)} exceeds {limit}"
        )
        return None
    return out


def valid_utf8(leg: Any, payload: bytes) -> bool:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError as e:
        leg._invalid_payload(
            f"encountered invalid UTF-8 while processing text message at payload octet "
            f"index {e.start}"
        )
        return False
    return True


# A compressed message may come out a little longer than it went in (stored blocks, for
# data that does not compress): messages this close to a size limit keep Autobahn's path,
# which checks the compressed size (the compressor's state cannot be rewound afterwards).
DEFLATE_SLACK = 1024


def send(leg: Any, payload: bytes, binary: bool, compress: bool = True) -> bool:
    """Send one message as one frame; False when it must take Autobahn's path."""
    size = len(payload)
    if not leg.fast_out or leg.state != OPEN or leg.send_state != GROUND:
        return False
    deflate = leg.fast_deflate
    if deflate is not None and compress:
        if size + (size >> 6) + DEFLATE_SLACK > leg.fast_out_max:
            return False
        deflate.start_compress_message()
        payload = deflate.compress_message_data(payload) + deflate.end_compress_message()
        size = len(payload)
        b0 = b"\xc2" if binary else b"\xc1"
    elif size > leg.fast_out_max:
        return False
    else:
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
    emit(leg, header + key + body, _last_of_read)
    return True


def emit(leg: Any, frame: bytes, last_of_read: bool) -> None:
    """Write a frame to `leg`, batched with the others relayed from the same read."""
    if _batching:
        chunks = _batch.get(leg)
        if chunks:
            chunks.append(frame)
            return
        if not last_of_read:
            _batch[leg] = [frame]
            return
    leg.sendData(frame)


class FastFrames:
    """Mixed into both legs: the fast paths' per-leg settings (off until `prepare`) and
    the send side."""

    fast_in = False
    fast_out = False
    # Whether received frames may be relayed to `partner` without the onMessage and
    # sendMessage round (legs whose messages nothing inspects or changes); such legs
    # have `partner` and `relayed`.
    forwards_as_is = False
    # Bytes of pongs written since the transport was last seen with nothing unsent.
    control_backlog = 0

    def onPing(self, payload: bytes) -> None:
        leg: Any = self
        if leg.state != OPEN:
            return
        if not queued_bytes(leg.transport):
            if self.control_backlog:
                self.control_backlog = 0  # the peer took every earlier pong
        else:
            self.control_backlog += len(payload) + 6
            if self.control_backlog > CONTROL_BACKLOG_MAX:
                self.refuse_ping_flood()
                return
        leg.sendPong(payload)

    def refuse_ping_flood(self) -> None:
        """Close a leg whose peer keeps pinging without reading the pongs (1008): no more
        pongs are queued for it, and it is dropped at the close timeout unless it reads."""
        leg: Any = self
        _log.warn(
            "{side} {peer} pings without reading the pongs ({queued} bytes unsent); "
            "closing with 1008",
            side="client" if leg.factory.isServer else "backend",
            peer=leg.peer,
            queued=queued_bytes(leg.transport),
        )
        leg.sendCloseFrame(code=POLICY_VIOLATION, reasonUtf8=b"pongs not read", isReply=False)
        leg.transport.pauseProducing()  # and the rest of its flood waits in its own socket

    def sendMessage(
        self,
        payload: bytes,
        isBinary: bool = False,
        fragmentSize: int | None = None,
        sync: bool = False,
        doNotCompress: bool = False,
    ) -> None:
        if fragmentSize is None and not sync:
            if send(self, payload, isBinary, not doNotCompress):
                return
        super().sendMessage(payload, isBinary, fragmentSize, sync, doNotCompress)  # type: ignore[misc]

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        if _batch and _batch.get(self):
            flush_batched(self)  # frames batched for this leg go first
        super().sendData(data, sync, chopsize)  # type: ignore[misc]

    def dropConnection(self, abort: bool = False) -> None:
        if _batch and _batch.get(self) and not abort:
            flush_batched(self)
        super().dropConnection(abort)  # type: ignore[misc]
