"""Unit: the splice parser on fake legs, reads cut at every possible byte."""

from __future__ import annotations

import os
from typing import Any

from wsbalancer.relay.splice import SpliceDirection

from .helpers import frame

OPEN = 3  # WebSocketProtocol.STATE_OPEN


class Transport:
    def __init__(self) -> None:
        self.out = bytearray()

    def write(self, data: bytes) -> None:
        self.out += data


class Leg:
    def __init__(self) -> None:
        self.state = OPEN
        self.transport = Transport()
        self.splice_out: Any = None
        self.splice_in: Any = None
        self.control: list[bytes] = []

    def _dataReceived(self, data: bytes) -> None:  # Autobahn's entry, for control frames
        self.control.append(data)


class Session:
    def __init__(self) -> None:
        self.client, self.backend = Leg(), Leg()
        self.msgs_in = self.msgs_out = self.bytes_in = self.bytes_out = 0
        self.unanswered = self.lost = 0
        self.reconnecting = False
        self.held: list[tuple[bytes, Any]] = []

    def hold(self, payload: bytes, is_binary: Any) -> None:
        self.held.append((payload, is_binary))


def outward(session: Session) -> SpliceDirection:
    direction = SpliceDirection(session, session.client, to_backend=True)  # type: ignore[arg-type]
    session.client.splice_out = direction
    session.backend.splice_in = direction
    return direction


def test_every_cut_of_a_stream_forwards_it_byte_for_byte_and_counts_messages() -> None:
    stream = (
        frame(1, b"hello")
        + frame(2, os.urandom(300))  # 16-bit length
        + frame(1, b"frag", fin=False)
        + frame(0, b"ment", fin=False)
        + frame(0, b"ed")
        + frame(2, os.urandom(70000))  # 64-bit length
        + frame(2, b"")
    )
    for cut in (1, 2, 3, 7, 13, 1000, len(stream)):
        session = Session()
        direction = outward(session)
        for start in range(0, len(stream), cut):
            direction.feed(stream[start : start + cut])
        assert bytes(session.backend.transport.out) == stream
        assert session.msgs_in == 5 and session.unanswered == 5
        assert session.bytes_in == 5 + 300 + 10 + 70000
        assert direction.at_boundary()


def test_pings_and_pongs_cross_and_closes_go_to_the_source_leg() -> None:
    session = Session()
    direction = outward(session)
    session.client.autoPingPending = b"k33p4l1v"  # type: ignore[attr-defined]
    a, ping, b, pong, c = (
        frame(1, b"a"),
        frame(9, b"p"),
        frame(1, b"b", fin=False),
        frame(10, b"someone else's"),
        frame(0, b"c"),
    )
    own_pong, close = frame(10, b"k33p4l1v"), frame(8, b"\x03\xe8")
    for value in a + ping + b + pong + own_pong + c + close:
        direction.feed(bytes([value]))
    # The far end answers pings; only the answer to this leg's keepalive and the close
    # stay with the leg's own protocol.
    assert bytes(session.backend.transport.out) == a + ping + b + pong + c
    assert session.client.control == [own_pong, close]
    assert session.msgs_in == 2


def test_the_receiving_legs_own_frames_wait_for_a_half_written_frame() -> None:
    session = Session()
    direction = outward(session)
    big, small = frame(2, os.urandom(1000)), frame(1, b"x")
    direction.feed(big[:500])
    assert direction.mid_frame()
    direction.hold_write(session.backend, b"PING")  # the backend leg's own frame
    assert bytes(session.backend.transport.out) == big[:500]
    direction.feed(big[500:] + small)
    assert bytes(session.backend.transport.out) == big + b"PING" + small


def test_a_message_cut_by_a_lost_backend_is_dropped_up_to_its_end() -> None:
    session = Session()
    direction = outward(session)
    direction.feed(frame(1, b"one", fin=False))
    session.backend = None  # type: ignore[assignment]
    direction.backend_lost()  # as the session detaches the leg, before it re-dials
    session.reconnecting = True
    direction.backend_lost()  # a refused candidate of the re-dial: nothing more is lost
    assert session.lost == 1
    after = frame(1, b"next")
    direction.feed(frame(0, b"two", fin=False) + frame(0, b"three") + after)
    # Only the next whole message is held for the new backend.
    assert b"".join(chunk for chunk, _ in session.held) == after
    assert not direction.discarding


def test_an_oversized_control_frame_is_handed_to_the_leg_to_fail() -> None:
    session = Session()
    direction = outward(session)
    ok, bad = frame(1, b"ok"), frame(9, b"x" * 126)
    direction.feed(ok + bad)
    assert session.client.control == [bad]
    assert session.client.splice_out is None  # the leg's own protocol has it from here
    assert bytes(session.backend.transport.out) == ok


def test_a_frame_begun_on_a_leg_that_starts_closing_is_finished_before_its_close() -> None:
    session = Session()
    direction = outward(session)
    big, after = frame(2, os.urandom(1000)), frame(1, b"too late")
    direction.feed(big[:300])
    direction.hold_write(session.backend, b"CLOSE")  # the leg's close, held behind the frame
    session.backend.state = 2  # CLOSING: no new frame may start on it
    direction.feed(big[300:] + after)
    assert bytes(session.backend.transport.out) == big + b"CLOSE"
