"""Unit: the message-mode fast path against Autobahn's own parser, on real Autobahn
protocols over in-memory transports. Every stream is fed twice, once with the fast path and
once without, cut at many points; what each leg delivers and how it fails must agree."""

from __future__ import annotations

import base64
import hashlib
import os
import struct
import zlib
from typing import Any

import pytest
from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.testing import StringTransport

from wsbalancer.wire import frames
from wsbalancer.wire.compression import accept_deflate_offer

from .helpers import frame

OPEN = WebSocketProtocol.STATE_OPEN
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Transport(StringTransport):
    def unregisterProducer(self) -> None:  # Autobahn unregisters what it never registered
        self.producer = None


class Recording:
    """What a leg did: the messages it delivered."""

    fast = True

    def onOpen(self) -> None:
        self.messages: list[tuple[bytes, bool]] = []
        frames.prepare(self)
        if not self.fast:
            self.fast_in = self.fast_out = False

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.messages.append((payload, isBinary))

    def dataReceived(self, data: bytes) -> None:  # as relay.py's legs dispatch
        if self.fast_in and self.state == OPEN and self.current_frame is None:
            if not self.inside_message:
                frames.receive(self, data)
                return
        self._dataReceived(data)


class Server(Recording, frames.FastFrames, WebSocketServerProtocol):  # type: ignore[misc]
    splice_out = None


class Client(Recording, frames.FastFrames, WebSocketClientProtocol):  # type: ignore[misc]
    splice_out = None


def server_leg(
    fast: bool, deflate: bool = False, protocol: type = Server, **options: Any
) -> Server:
    factory = WebSocketServerFactory("ws://127.0.0.1:9000")
    if deflate:
        options["perMessageCompressionAccept"] = accept_deflate_offer
    factory.setProtocolOptions(**options)
    factory.protocol = protocol
    leg = factory.buildProtocol(None)
    leg.fast = fast
    leg.makeConnection(Transport())
    key = base64.b64encode(os.urandom(16))
    offer = b"Sec-WebSocket-Extensions: permessage-deflate\r\n" if deflate else b""
    leg.dataReceived(
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1:9000\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\n" + offer + b""
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    assert leg.state == OPEN
    assert (leg._perMessageCompress is not None) == deflate
    leg.transport.clear()
    return leg


def client_leg(fast: bool, protocol: type = Client) -> Client:
    factory = WebSocketClientFactory("ws://127.0.0.1:9000")
    factory.protocol = protocol
    leg = factory.buildProtocol(None)
    leg.fast = fast
    transport = Transport()
    leg.makeConnection(transport)
    request = transport.value()
    key = request.split(b"Sec-WebSocket-Key: ")[1].split(b"\r\n")[0]
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    transport.clear()
    leg.dataReceived(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )
    assert leg.state == OPEN
    return leg


def outcome(leg: Any) -> tuple[Any, ...]:
    return (leg.messages, leg.state, leg.localCloseCode, leg.failedByMe)


def feed(leg: Any, stream: bytes, cuts: list[int]) -> None:
    last = 0
    for cut in [*cuts, len(stream)]:
        if cut > last:
            leg.dataReceived(stream[last:cut])
            last = cut


GOOD = (
    frame(1, "héllo wörld".encode())
    + frame(2, os.urandom(125))
    + frame(2, os.urandom(126))  # the 16-bit length starts here
    + frame(1, b"")
    + frame(9, b"ping")  # a control frame between messages: Autobahn's
    + frame(2, os.urandom(3000))
    + frame(1, b"frag", fin=False)
    + frame(0, b"ment", fin=False)
    + frame(0, b"ed")
    + frame(2, os.urandom(70000))  # 64-bit length: Autobahn's
    + frame(2, os.urandom(20000))  # longer than a frame held whole while it arrives
    + frame(1, b"after")
)

BAD = {
    # a surrogate (ED A0 80) after valid text
    "invalid UTF-8": frame(1, b"ok") + frame(1, b"\xce\xba\xed\xa0\x80") + frame(1, b"x"),
    "truncated UTF-8": frame(1, b"ok") + frame(1, b"\xe2\x82") + frame(1, b"x"),
    "unmasked from a client": frame(2, b"ok") + frame(2, b"bad", mask=False),
    "RSV without an extension": frame(2, b"ok") + frame(2, b"bad", rsv=4),
    "reserved opcode": frame(2, b"ok") + frame(3, b"bad"),
    "continuation outside a message": frame(2, b"ok") + frame(0, b"bad"),
    "non-minimal length": frame(2, b"ok")
    + bytes([0x82, 0x80 | 126])
    + struct.pack("!H", 5)
    + b"\x00\x00\x00\x00"
    + b"hello",
    "close": frame(2, b"ok") + frame(8, struct.pack("!H", 1000)) + frame(2, b"after close"),
}


def cuts_of(stream: bytes) -> list[list[int]]:
    size = len(stream)
    return (
        [[]]
        + [[cut] for cut in (1, 2, 3, 5, 7, 11, 130, 200, size // 2, size - 1)]
        + [list(range(1, size, 97))]
    )


@pytest.mark.parametrize("name", ["good", *BAD])
def test_server_leg_agrees_with_autobahn_on_every_cut(name: str) -> None:
    stream = GOOD if name == "good" else BAD[name]
    for cuts in cuts_of(stream):
        fast, slow = server_leg(True), server_leg(False)
        feed(fast, stream, cuts)
        feed(slow, stream, cuts)
        assert outcome(fast) == outcome(slow), (name, cuts)
        assert fast.transport.value() == slow.transport.value(), (name, cuts)
    if name == "good":
        assert len(fast.messages) == 9 and fast.state == OPEN


def test_client_leg_agrees_with_autobahn_and_refuses_masked_frames() -> None:
    stream = (
        frame(1, b"one", mask=False)
        + frame(2, os.urandom(300), mask=False)
        + frame(1, b"two", mask=False)
        + frame(2, b"masked", mask=True)
    )
    for cuts in cuts_of(stream):
        fast, slow = client_leg(True), client_leg(False)
        feed(fast, stream, cuts)
        feed(slow, stream, cuts)
        assert outcome(fast) == outcome(slow)
        assert len(fast.messages) == 3
        assert fast.state != OPEN  # the masked server frame failed the connection


def test_size_limits_are_autobahns_to_enforce() -> None:
    stream = frame(2, b"small") + frame(2, os.urandom(600))
    fast = server_leg(True, maxMessagePayloadSize=512)
    slow = server_leg(False, maxMessagePayloadSize=512)
    feed(fast, stream, [])
    feed(slow, stream, [])
    assert outcome(fast) == outcome(slow)
    assert fast.messages == [(b"small", True)] and fast.failedByMe and fast.state != OPEN


def test_a_leg_closed_by_a_message_hands_the_rest_to_autobahn() -> None:
    results = []
    for fast in (True, False):
        leg = server_leg(fast)
        deliver = leg.onMessage

        def close_after_first(
            payload: bytes, is_binary: bool, leg: Any = leg, deliver: Any = deliver
        ) -> None:
            deliver(payload, is_binary)
            if leg.state == OPEN:
                leg.sendClose(1000)

        leg.onMessage = close_after_first  # type: ignore[method-assign]
        feed(leg, frame(2, b"first") + frame(2, b"second") + frame(8, struct.pack("!H", 1000)), [])
        results.append((outcome(leg), leg.transport.value()))
    assert results[0] == results[1]
    (messages, state, code, _), _ = results[0]
    assert messages[0] == (b"first", True) and code == 1000


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 100000])
@pytest.mark.parametrize("binary", [True, False])
def test_sent_frames_parse_as_the_same_message(size: int, binary: bool) -> None:
    payload = os.urandom(size) if binary else ("é" * size).encode()[:size].ljust(size, b"a")
    if not binary:
        payload = payload.decode("utf-8", "ignore").encode()
    sender, receiver = client_leg(True), server_leg(False, maxMessagePayloadSize=0)
    sender.transport.clear()
    sender.sendMessage(payload, binary)
    wire = sender.transport.value()
    assert wire[1] & 0x80, "a client's frames are masked"
    receiver.dataReceived(wire)
    assert receiver.messages == [(payload, binary)]
    back = server_leg(True)
    back.sendMessage(payload, binary)
    assert not back.transport.value()[1] & 0x80, "a server's frames are not"


def test_send_defers_to_autobahn_when_fragmenting() -> None:
    leg = server_leg(True, autoFragmentSize=10)
    leg.sendMessage(b"x" * 25, True)
    wire = leg.transport.value()
    assert wire[0] == 0x02 and wire[1] == 10  # a first fragment, no FIN
    leg.transport.clear()
    leg.sendMessage(b"short", True)
    assert leg.transport.value() == b"\x82\x05short"


def test_simple_frames_never_reach_autobahns_parser() -> None:
    leg = server_leg(True)
    calls: list[bytes] = []
    leg._dataReceived = calls.append  # type: ignore[method-assign]
    first = frame(1, b"a") + frame(2, os.urandom(200))
    stream = first + frame(2, os.urandom(5000))
    feed(leg, stream, [len(first) - 100, len(first) + 1000])  # binary frames cut across reads
    assert len(leg.messages) == 3 and calls == []
    leg.dataReceived(frame(9, b"ping"))  # a control frame is Autobahn's
    assert len(calls) == 1


def test_a_frame_trickling_in_goes_to_autobahn_after_a_second_read() -> None:
    leg = server_leg(True)
    parsed = leg._dataReceived
    calls: list[bytes] = []

    def autobahn(data: bytes) -> None:
        calls.append(data)
        parsed(data)

    leg._dataReceived = autobahn  # type: ignore[method-assign]
    payload = os.urandom(5000)
    feed(leg, frame(2, payload), [100, 200, 300])
    assert leg.messages == [(payload, True)]
    assert len(calls[0]) == 200  # the first two reads, handed over whole at the second


class Deflater:
    """A client's permessage-deflate stream (context kept between messages)."""

    def __init__(self) -> None:
        self.z = zlib.compressobj(6, zlib.DEFLATED, -15)

    def message(self, payload: bytes) -> bytes:
        data = self.z.compress(payload) + self.z.flush(zlib.Z_SYNC_FLUSH)
        return data[:-4]


def deflated_stream(*parts: tuple[str, Any]) -> bytes:
    z = Deflater()
    out = b""
    for kind, payload in parts:
        if kind == "text" or kind == "binary":
            out += frame(1 if kind == "text" else 2, z.message(payload), rsv=4)
        elif kind == "plain":
            out += frame(2, payload)
        else:
            out += payload  # raw bytes, as given
    return out


DEFLATED = {
    "good": deflated_stream(
        ("text", "héllo wörld".encode()),
        ("text", b"hello hello hello hello"),  # refers back to earlier messages
        ("binary", os.urandom(2000)),
        ("plain", b"uncompressed on a compressing leg"),
        ("binary", b"x" * 50000),  # inflates far beyond its frame
        ("raw", frame(9, b"ping")),
        ("text", b"after"),
    ),
    "invalid UTF-8 inside": deflated_stream(
        ("text", b"ok"), ("text", b"\xce\xba\xed\xa0\x80"), ("text", b"x")
    ),
    "corrupt deflate data": deflated_stream(("text", b"ok"))
    + frame(2, b"\xff\xff\xff\xff", rsv=4)
    + frame(8, struct.pack("!H", 1000)),
    "too large once inflated": deflated_stream(("binary", b"ok"), ("binary", b"y" * 100000)),
    "compressed continuation": frame(1, b"x", fin=False, rsv=4) + frame(0, b"y", rsv=4),
}


@pytest.mark.parametrize("name", list(DEFLATED))
def test_compressed_leg_agrees_with_autobahn_on_every_cut(name: str) -> None:
    stream = DEFLATED[name]
    for cuts in cuts_of(stream):
        # failByDrop off, as the balancer runs: a failed leg sends its close and waits
        fast = server_leg(True, deflate=True, maxMessagePayloadSize=60000, failByDrop=False)
        slow = server_leg(False, deflate=True, maxMessagePayloadSize=60000, failByDrop=False)
        feed(fast, stream, cuts)
        feed(slow, stream, cuts)
        if name == "good":
            assert outcome(fast) == outcome(slow), cuts
            assert fast.transport.value() == slow.transport.value(), cuts
            continue
        # The same messages delivered and the same close sent. What follows may differ:
        # after failing a compressed message Autobahn's parser stays inside that frame
        # (it never reads the peer's close reply, and fails invalid UTF-8 twice, dropping
        # the connection), while the fast path goes on to read the reply (checked below).
        assert outcome(fast)[0] == outcome(slow)[0], (name, cuts)
        assert fast.localCloseCode == slow.localCloseCode and fast.failedByMe, (name, cuts)
        assert fast.transport.value()[:4] == slow.transport.value()[:4], (name, cuts)
    if name == "corrupt deflate data":  # its close followed in the same read
        fast = server_leg(True, deflate=True, failByDrop=False)
        feed(fast, stream, [])
        assert fast.localCloseCode == 1007 and fast.remoteCloseCode == 1000
    if name == "good":
        assert len(fast.messages) == 6 and fast.state == OPEN
    else:
        assert fast.state != OPEN


def test_compressed_sends_match_autobahns_bytes() -> None:
    fast, slow = server_leg(True, deflate=True), server_leg(False, deflate=True)
    for payload, binary in [
        (b"hello", False),
        (b"hello hello", False),
        (os.urandom(3000), True),
        (b"z" * 70000, True),
    ]:
        fast.sendMessage(payload, binary)
        slow.sendMessage(payload, binary)
    assert fast.transport.value() == slow.transport.value()
    assert fast.transport.value()[0] == 0xC1  # FIN, RSV1, text
    fast.transport.clear()
    fast.sendMessage(b"as it is", True, doNotCompress=True)
    assert fast.transport.value() == b"\x82\x08as it is"


def relay_pair(**backend_options: Any) -> tuple[Server, Client, list[bytes]]:
    """A client-facing leg whose messages go to a backend-facing leg, as in the relay; the
    backend leg's transport writes are recorded one by one."""
    front = server_leg(True)
    back = client_leg(True)
    for name, value in backend_options.items():
        setattr(back, name, value)
    frames.prepare(back)
    writes: list[bytes] = []
    back.transport.write = writes.append  # type: ignore[method-assign]
    front.onMessage = lambda payload, is_binary: back.sendMessage(payload, is_binary)  # type: ignore[method-assign]
    return front, back, writes


def parse_sent(writes: list[bytes]) -> list[tuple[bytes, bool]]:
    """What a server would receive from those writes."""
    peer = server_leg(False, maxMessagePayloadSize=0)
    peer.dataReceived(b"".join(writes))
    return peer.messages


def test_frames_relayed_from_one_read_go_out_in_one_write() -> None:
    front, _, writes = relay_pair()
    front.dataReceived(frame(2, b"one") + frame(2, b"two") + frame(1, b"three"))
    assert len(writes) == 1
    assert parse_sent(writes) == [(b"one", True), (b"two", True), (b"three", False)]
    front.dataReceived(frame(2, b"four"))
    assert len(writes) == 2


def test_a_write_by_autobahn_in_the_middle_keeps_the_order() -> None:
    # Messages over 100 bytes are fragmented by Autobahn on the backend leg, so its own
    # writes interleave with the batched ones.
    front, _, writes = relay_pair(autoFragmentSize=100)
    big = os.urandom(300)
    front.dataReceived(frame(2, b"a") + frame(2, b"b") + frame(2, big) + frame(2, b"c"))
    assert parse_sent(writes) == [(b"a", True), (b"b", True), (big, True), (b"c", True)]


class Relaying:
    """A leg whose frames may be relayed straight to `partner`, as relay.py's legs are;
    whatever takes the ordinary path is relayed by onMessage, as relay.py does it."""

    forwards_as_is = True
    partner: Any = None

    def onOpen(self) -> None:
        super().onOpen()  # type: ignore[misc]
        self.direct = 0

    def relayed(self, size: int) -> None:
        self.direct += 1

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        super().onMessage(payload, isBinary)  # type: ignore[misc]
        if self.partner.state == OPEN:
            self.partner.sendMessage(payload, isBinary)


class RelayingServer(Relaying, Server):  # type: ignore[misc]
    pass


class RelayingClient(Relaying, Client):  # type: ignore[misc]
    pass


def direct_pair() -> tuple[RelayingServer, RelayingClient, list[bytes], list[bytes]]:
    """A client leg and a backend leg relaying to each other; the writes toward the backend
    and toward the client, one list each."""
    front = server_leg(True, protocol=RelayingServer)
    back = client_leg(True, protocol=RelayingClient)
    front.partner, back.partner = back, front
    to_backend: list[bytes] = []
    to_client: list[bytes] = []
    back.transport.write = to_backend.append  # type: ignore[method-assign]
    front.transport.write = to_client.append  # type: ignore[method-assign]
    return front, back, to_backend, to_client


def test_direct_relay_delivers_what_autobahn_would_on_every_cut() -> None:
    for cuts in cuts_of(GOOD):
        front, _, to_backend, _ = direct_pair()
        slow = server_leg(False)
        feed(front, GOOD, cuts)
        feed(slow, GOOD, cuts)
        assert parse_sent(to_backend) == slow.messages, cuts
    front, _, to_backend, _ = direct_pair()
    feed(front, GOOD, [])
    # The four simple frames before the ping; Autobahn's parser reads the rest of that read.
    assert front.direct == 4 and len(front.messages) == 5


def test_direct_relay_gives_each_client_frame_a_fresh_key() -> None:
    front, back, to_backend, _ = direct_pair()
    sent = frame(2, b"x" * 40) + frame(1, "ünï".encode())
    front.dataReceived(sent)
    assert front.direct == 2 and len(to_backend) == 1
    out = to_backend[0]
    assert out[:2] == sent[:2] and out[2:6] != sent[2:6]  # same header, another key
    assert parse_sent(to_backend) == [(b"x" * 40, True), ("ünï".encode(), False)]


def test_direct_relay_fails_invalid_text_as_autobahn_does() -> None:
    stream = BAD["invalid UTF-8"]
    for cuts in cuts_of(stream):
        front, _, to_backend, _ = direct_pair()
        slow = server_leg(False)
        feed(front, stream, cuts)
        feed(slow, stream, cuts)
        assert outcome(front)[1:] == outcome(slow)[1:] and front.failedByMe
        assert parse_sent(to_backend) == [(b"ok", False)]


def test_backend_frames_reach_the_client_byte_for_byte() -> None:
    _, back, _, to_client = direct_pair()
    stream = frame(2, os.urandom(300), mask=False) + frame(1, b"text", mask=False)
    back.dataReceived(stream)
    assert back.direct == 2 and b"".join(to_client) == stream


def test_direct_relay_steps_aside_while_the_partner_is_mid_message() -> None:
    front, back, to_backend, _ = direct_pair()
    back.send_state = WebSocketProtocol.SEND_STATE_INSIDE_MESSAGE  # sending a fragmented one
    front.dataReceived(frame(2, b"waits its turn"))
    assert front.direct == 0 and front.messages == [(b"waits its turn", True)]
    back.send_state = WebSocketProtocol.SEND_STATE_GROUND
    back.sendClose(1000)  # a closing partner takes no relayed frames either
    to_backend.clear()
    front.dataReceived(frame(2, b"too late"))
    assert front.direct == 0 and front.messages[-1] == (b"too late", True) and not to_backend
