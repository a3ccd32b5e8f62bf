"""Integration: the splice fast path (`relay.mode: splice`) with real clients and backends."""

from __future__ import annotations

import os
from typing import Any

import pytest_twisted
import websockets
from websockets.frames import Frame, Opcode

from .helpers import aio, recv, start_backend, start_balancer, wait_for
from .test_failover import Tagging


def _session(lb: Any) -> Any:
    return next(iter(lb.balancer.sessions.values()))


@pytest_twisted.ensureDeferred
async def test_spliced_session_relays_text_binary_fragmented_and_large_messages() -> None:
    backend = start_backend("b0", compression=False)
    lb = await start_balancer([backend.url], relay__mode="splice")
    try:
        ws = await aio(websockets.connect(lb.ws_url(), compression=None, max_size=None))
        session = _session(lb)
        assert session.spliced
        await aio(ws.send("héllo"))
        assert await recv(ws) == "héllo"
        blob = os.urandom(3 * 1024 * 1024)  # many reads, each streamed on as it arrives
        await aio(ws.send(blob))
        assert await recv(ws) == blob
        await aio(ws.send(["frag", "ment", "ed"]))  # three frames, one message
        assert await recv(ws) == "fragmented"
        await aio(ws.ping(b"p"))  # answered by the balancer's client leg, as in message mode
        await aio(ws.send("last"))
        assert await recv(ws) == "last"
        assert session.msgs_in == 4 and session.msgs_out == 4
        assert session.bytes_in == len("héllo".encode()) + len(blob) + 10 + 4
        await aio(ws.close(4000, "done"))
        await wait_for(lambda: session.ended, what="the session to end")
        assert (session.close_code, session.close_reason, session.closed_by) == (
            4000,
            "done",
            "client",
        )
    finally:
        await lb.stop()
        await backend.stop()


@pytest_twisted.ensureDeferred
async def test_compressed_frames_pass_as_they_are_when_both_legs_negotiated_the_same() -> None:
    backend = start_backend("b0")  # accepts permessage-deflate
    lb = await start_balancer([backend.url], relay__mode="splice")
    try:
        ws = await aio(websockets.connect(lb.ws_url()))
        session = _session(lb)
        assert session.spliced
        assert ws.response.headers["Sec-WebSocket-Extensions"].startswith("permessage-deflate")
        text = "compress me " * 2000
        for _ in range(3):  # context takeover across messages, on both sides
            await aio(ws.send(text))
            assert await recv(ws) == text
        # On the wire the message was far smaller than its text: nothing was inflated.
        assert session.bytes_in < len(text)
        assert session.client._perMessageCompress is not None
        assert session.client._perMessageCompress._decompressor is None  # never used
        await aio(ws.close())
    finally:
        await lb.stop()
        await backend.stop()


@pytest_twisted.ensureDeferred
async def test_a_client_asking_for_compression_gets_only_what_the_backend_accepted() -> None:
    backend = start_backend("b0", compression=False)
    # In message mode the client leg would compress and translate; spliced, it must not.
    lb = await start_balancer([backend.url], relay__mode="splice")
    try:
        ws = await aio(websockets.connect(lb.ws_url()))
        session = _session(lb)
        # The client was granted only what the backend accepted: no compression, spliced.
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        assert session.spliced
        await aio(ws.send("x" * 5000))
        assert await recv(ws) == "x" * 5000
        await aio(ws.close())
    finally:
        await lb.stop()
        await backend.stop()


@pytest_twisted.ensureDeferred
async def test_bad_frames_are_the_backends_to_judge_and_its_close_reaches_the_client() -> None:
    backend = start_backend("b0", compression=False)
    lb = await start_balancer([backend.url], relay__mode="splice")
    try:
        ws = await aio(websockets.connect(lb.ws_url(), compression=None))
        session = _session(lb)
        # Invalid UTF-8 in a text frame: not inspected by the splice, failed by the backend.
        ws.protocol.send_frame(Frame(Opcode.TEXT, b"\xff\xfe"))
        await aio(ws.send(b""))  # flush the frame out
        await wait_for(lambda: session.ended, what="the session to end")
        assert session.close_code == 1007 and session.closed_by == "backend"
    finally:
        await lb.stop()
        await backend.stop()


@pytest_twisted.ensureDeferred
async def test_spliced_session_fails_over_at_a_message_boundary() -> None:
    backends = [start_backend(f"b{i}", protocol=Tagging, compression=False) for i in range(2)]
    lb = await start_balancer([b.url for b in backends], relay__mode="splice")
    try:
        ws = await aio(websockets.connect(lb.ws_url(), compression=None))
        session = _session(lb)
        assert session.spliced
        await aio(ws.send("0"))
        first = (await recv(ws)).split(":")[1]
        victim = next(b for b in backends if b.backend.name == first)
        await victim.stop()
        await wait_for(lambda: session.reconnects == 1, what="the failover")
        assert session.spliced and session.backend.splice_out is not None
        answers = []
        for n in range(1, 6):
            await aio(ws.send(str(n)))
            answers.append(await recv(ws))
        assert [a.split(":")[0] for a in answers] == ["1", "2", "3", "4", "5"]
        assert {a.split(":")[1] for a in answers} == {"b0", "b1"} - {first}
        await aio(ws.close())
    finally:
        await lb.stop()
        for b in backends:
            await b.stop()
