"""permessage-deflate on the relay: stored blocks for incompressible data, and compressed
messages forwarded as received when the other leg's peer can inflate them as they are."""

from __future__ import annotations

import os
import random
import zlib
from typing import Any

import pytest_twisted
import websockets
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

from wsbalancer.extensions import SessionListener
from wsbalancer.wire.compression import SKIP_AFTER_INCOMPRESSIBLE, TunedDeflate

from .helpers import aio, start_backend, start_balancer

TEXT = b"".join(b"line %d of a log that repeats itself a lot\n" % (i % 50) for i in range(4000))


def _sender(takeover: bool = True, bits: int = 15) -> Any:
    deflate = TunedDeflate.__new__(TunedDeflate)  # the state Autobahn's negotiation sets
    deflate._is_server = True
    deflate.server_no_context_takeover = not takeover
    deflate.server_max_window_bits = bits
    deflate.mem_level = 8
    deflate._compressor = None
    return deflate


def _compress(deflate: Any, message: bytes) -> bytes:
    deflate.start_compress_message()
    return bytes(deflate.compress_message_data(message) + deflate.end_compress_message())


def test_incompressible_messages_go_stored_and_the_stream_stays_valid() -> None:
    rng = random.Random(7)
    for takeover in (True, False):
        sender = _sender(takeover)
        inflater = zlib.decompressobj(-15)
        stored = 0
        for _ in range(400):
            if rng.random() < 0.5:
                message = rng.randbytes(rng.choice([100, 5000, 70000]))
            else:
                start = rng.randrange(len(TEXT) // 2)
                message = TEXT[start : start + rng.choice([200, 5000, 20000])]
            wire = _compress(sender, message)
            if len(message) >= 4096 and len(wire) < len(message) + 64:
                stored += wire[:1] == b"\x00"  # a stored block header (BFINAL 0, BTYPE 00)
            if not takeover:
                inflater = zlib.decompressobj(-15)
            assert inflater.decompress(wire + b"\x00\x00\xff\xff") == message
        assert stored > 50  # random payloads after the first were not run through deflate


def test_a_compressible_message_is_probed_again_after_the_stored_run() -> None:
    sender = _sender()
    _compress(sender, os.urandom(8192))  # incompressible: the next ones are stored
    assert sender.skip == SKIP_AFTER_INCOMPRESSIBLE
    for _ in range(SKIP_AFTER_INCOMPRESSIBLE):
        assert len(_compress(sender, TEXT[:8192])) > 8192  # stored, though it would shrink
    assert len(_compress(sender, TEXT[:8192])) < 2048  # probed: compressed again
    assert sender.skip == 0


class _Opened(SessionListener):
    """Keeps each opened session's two legs."""

    def __init__(self, into: list[Any]) -> None:
        self.into = into

    def session_opened(self, session: Any) -> None:
        self.into.append((session.client, session.backend))


def _messages() -> list[str | bytes]:
    rng = random.Random(11)
    out: list[str | bytes] = []
    for i in range(60):
        kind = i % 4
        if kind == 0:
            out.append(TEXT[: rng.randrange(100, 60000)].decode())  # refers to earlier ones
        elif kind == 1:
            out.append(rng.randbytes(rng.randrange(1, 40000)))
        elif kind == 2:
            out.append("")
        else:
            out.append("ünïcödé " * rng.randrange(1, 3000))
    return out


async def _echo_all(url: str, deflate: ClientPerMessageDeflateFactory) -> None:
    ws = await aio(websockets.connect(url, extensions=[deflate], compression=None, max_size=None))
    try:
        assert "permessage-deflate" in ws.response.headers["Sec-WebSocket-Extensions"]
        for message in _messages():
            await aio(ws.send(message))
            assert await aio(ws.recv()) == message
    finally:
        await aio(ws.close())


@pytest_twisted.ensureDeferred
async def test_compressed_messages_are_forwarded_as_received_when_both_peers_can_inflate_them() -> (
    None
):
    backend = start_backend("b1", compression_level=1)
    lb = await start_balancer([backend.url], compression__backend="mirror")
    try:
        # (offer, forwarded client->backend, forwarded backend->client)
        cases = [
            (ClientPerMessageDeflateFactory(), True, True),
            # The client inflates with a 1 KiB window: the backend's 32 KiB stream cannot
            # reach it as it is, so that direction is recompressed; the other is forwarded.
            (ClientPerMessageDeflateFactory(server_max_window_bits=10), True, False),
            # The client resets its compressor per message: forwardable whatever happened.
            (ClientPerMessageDeflateFactory(client_no_context_takeover=True), True, True),
        ]
        for deflate, upstream, downstream in cases:
            opened: list[Any] = []
            lb.balancer.listeners.append(_Opened(opened))
            try:
                await _echo_all(lb.ws_url(), deflate)
            finally:
                lb.balancer.listeners.pop()
            client_leg, backend_leg = opened[0]
            assert (backend_leg._perMessageCompress.forwarded > 0) is upstream
            assert (client_leg._perMessageCompress.forwarded > 0) is downstream
    finally:
        await lb.stop()
        await backend.stop()


@pytest_twisted.ensureDeferred
async def test_hooks_see_and_change_compressed_messages_which_are_then_recompressed() -> None:
    backend = start_backend("b1", compression_level=1)
    lb = await start_balancer(
        [backend.url],
        compression__backend="mirror",
        extensions__hooks="tests.extension_examples.UpperCase,tests.extension_examples.DropSecrets",
    )
    try:
        ws = await aio(websockets.connect(lb.ws_url(), max_size=None))
        texts = [TEXT[:n].decode() for n in (3000, 9000, 20000)]
        for text in texts[:2]:
            await aio(ws.send(text))
            assert await aio(ws.recv()) == text.upper()
        await aio(ws.send("a secret " * 500))  # dropped: the stream the backend saw skips it
        await aio(ws.send(texts[2]))  # refers back to the dropped one in the client's stream
        assert await aio(ws.recv()) == texts[2].upper()
        await aio(ws.close())
    finally:
        await lb.stop()
        await backend.stop()
