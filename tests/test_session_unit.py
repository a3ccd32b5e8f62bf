"""Unit: `RelaySession` without sockets: opening, relaying, closing, failover, moves, splice.

Everything is real but the network: the balancer (built from a `Config`, its pools, dialer,
listeners and metrics), both legs (`FrontendProtocol`, `BackendProtocol`), a client and the
backends (Autobahn's own client and server protocols). They are joined in memory by
`tests/memory.py`, whose memory reactor also answers the dialer's `connectTCP` calls, and
time is that reactor's clock (Autobahn's timers included, through txaio), so each test runs
in milliseconds and waits on nothing.
"""

from __future__ import annotations

from typing import Any

import pytest

from wsbalancer.upstream.pool import DOWN

from .helpers import frame
from .memory import IGNORE, REFUSE
from .rig import BAD_GATEWAY, OPEN, outcome_of

pytestmark = pytest.mark.timeout(20)


# --- opening ------------------------------------------------------------------------------


def test_the_client_gets_its_101_only_once_the_backend_answered(rig: Any) -> None:
    r = rig(("b1",))
    r.backends["b1"].gated = True
    client = r.connect()
    front = client.pipe.server.protocol
    assert not client.opened and client.pipe.sent_to_client == b""
    assert r.state("b1").dialing == 1 and r.state("b1").local_sessions == 0
    assert r.balancer.sessions == {} and not front.session.opened
    r.backends["b1"].release()
    r.net.pump()
    assert client.opened and front.session.opened
    assert r.state("b1").dialing == 0 and r.state("b1").local_sessions == 1
    assert list(r.balancer.sessions.values()) == [front.session]


def test_a_session_opens_on_the_picked_backend_with_the_clients_request(rig: Any) -> None:
    r = rig(("b1", "b2"))
    r.backends["b1"].subprotocols = ("v2", "v1")
    client = r.connect("/stream/room?x=1&y=%20z", protocols=("v2", "v1"))
    assert client.opened and client.websocket_protocol_in_use == "v2"
    (request,) = r.backends["b1"].handshakes
    assert r.backends["b2"].handshakes == []
    assert request.path == "/stream/room" and request.params == {"x": ["1"], "y": [" z"]}
    assert request.protocols == ["v2", "v1"]
    assert request.headers["x-forwarded-for"] == client.pipe.client.getHost().host
    assert "x-balancer-reconnect" not in request.headers
    # The backend's 101 headers come back filtered: cookies yes, its own headers no.
    assert b"Set-Cookie: app=1; Path=/" in client.answer
    assert b"X-Internal" not in client.answer
    session = r.session
    assert session.backend_id == "b1" and session.subprotocol == "v2"
    assert r.events.log == [("picked", session.id, "b1"), ("opened", session.id, "b1")]
    assert r.state("b1").local_sessions == 1 and r.state("b2").local_sessions == 0
    assert r.metric("wsbalancer_sessions_opened_total", backend="b1") == 1
    assert r.metric("wsbalancer_handshakes_total", outcome="ok") == 1


def test_dials_in_flight_count_so_a_burst_spreads(rig: Any) -> None:
    r = rig(("b1", "b2"), balancing__strategy="least-loaded")
    for backend in r.backends.values():
        backend.gated = True
    first, second = r.connect(), r.connect()
    # Neither has answered: each backend was picked once, because the first dial counted.
    assert [len(b.handshakes) for b in r.backends.values()] == [1, 1]
    assert [r.state(n).dialing for n in ("b1", "b2")] == [1, 1]
    for backend in r.backends.values():
        backend.release()
    r.net.pump()
    assert first.opened and second.opened
    assert [r.state(n).local_sessions for n in ("b1", "b2")] == [1, 1]
    assert [r.state(n).dialing for n in ("b1", "b2")] == [0, 0]


# --- relaying and closing -----------------------------------------------------------------


def test_messages_are_relayed_each_way_and_counted(rig: Any) -> None:
    r = rig(("b1",))
    client = r.connect()
    big = b"\x00\xff" * 40000  # longer than the fast path takes: through Autobahn's parser
    client.sendMessage(b"hello")
    client.sendMessage(big, isBinary=True)
    r.net.pump()
    assert r.backends["b1"].received == [b"hello", big]
    assert client.messages == [b"hello:b1", big + b":b1"]
    r.backends["b1"].peer.sendMessage(b"pushed")
    r.net.pump()
    assert client.messages[-1] == b"pushed"
    session = r.session
    assert (session.msgs_in, session.bytes_in) == (2, 5 + len(big))
    assert (session.msgs_out, session.bytes_out) == (3, 8 + len(big) + 3 + 6)
    assert session.unanswered == 0


def test_a_client_close_reaches_the_backend_and_the_session_ends_once(rig: Any) -> None:
    r = rig(("b1",))
    client = r.connect()
    r.send(client, b"one", b"two")
    session = r.session
    client.sendClose(4001, "bye")
    r.net.pump()
    assert r.backends["b1"].peer.closed_with == (4001, "bye")
    assert client.closed_with == (True, 4001, "bye")
    assert (session.close_code, session.close_reason, session.closed_by) == (4001, "bye", "client")
    # Both legs' ends reached the session; it was accounted once, on its backend.
    assert r.events.of("closed") == [("closed", session.id, "b1", 4001)]
    assert r.balancer.sessions == {} and session.backend_state is None
    assert r.state("b1").local_sessions == 0
    assert r.balancer.traffic_totals() == (2, 2, 6, 12)
    assert r.metric("wsbalancer_sessions_closed_total", backend="b1", code="4001") == 1


def test_a_backend_close_reaches_the_client_with_its_code_and_reason(rig: Any) -> None:
    r = rig(("b1", "b2"))
    client = r.connect()
    session = r.session
    r.backends["b1"].peer.sendClose(4000, "the application says bye")
    r.net.pump()
    assert client.closed_with == (True, 4000, "the application says bye")
    assert (session.close_code, session.closed_by) == (4000, "backend")
    assert r.backends["b2"].handshakes == []  # an application's own close: no failover
    assert r.events.of("closed") == [("closed", session.id, "b1", 4000)]


def test_a_backends_1014_reaches_the_client_as_it_is(rig: Any) -> None:
    r = rig(("b1",))
    client = r.connect()
    session = r.session
    leg = session.backend
    r.backends["b1"].peer.sendCloseFrame(BAD_GATEWAY, b"upstream down")
    r.net.pump()
    assert client.closed_with == (True, BAD_GATEWAY, "upstream down")
    # The backend's close is echoed as sent (the peer here, Autobahn itself, then refuses the
    # 1014 it gets back; real backends take it): no 1002 for a protocol violation.
    assert session.close_code == BAD_GATEWAY and session.closed_by == "backend"
    assert leg.localCloseCode == BAD_GATEWAY


def test_a_client_that_vanishes_closes_the_backend_leg_with_1001(rig: Any) -> None:
    r = rig(("b1",))
    client = r.connect()
    session = r.session
    client.pipe.drop()
    r.net.pump()
    assert r.backends["b1"].peer.closed_with == (1001, "client went away")
    assert (session.close_code, session.closed_by) == (1006, "client")
    assert r.events.of("closed") == [("closed", session.id, "b1", 1006)]
    assert r.state("b1").local_sessions == 0


def test_terminate_closes_both_legs_with_the_code_given(rig: Any) -> None:
    r = rig(("b1",))
    client = r.connect()
    session = r.session
    session.terminate(4003, "terminated by the operator")
    r.net.pump()
    assert client.closed_with == (True, 4003, "terminated by the operator")
    assert r.backends["b1"].peer.closed_with == (4003, "terminated by the operator")
    assert session.closed_by == "balancer"
    assert r.metric("wsbalancer_sessions_closed_total", backend="b1", code="4003") == 1


def test_a_backend_message_over_the_limit_closes_the_client_with_1009(rig: Any) -> None:
    r = rig(("b1", "b2"), limits__max_message_size="1KiB")
    client = r.connect()
    session = r.session
    r.backends["b1"].peer.sendMessage(b"x" * 2048, isBinary=True)
    r.net.pump()
    # The backend leg failed the backend (1009); no other backend would make it smaller.
    assert r.backends["b1"].peer.closed_with is not None
    assert r.backends["b1"].peer.closed_with[0] == 1009
    assert client.closed_with == (True, 1009, "backend message too big")
    assert client.messages == [] and r.backends["b2"].handshakes == []
    assert (session.close_code, session.closed_by) == (1009, "backend")


@pytest.mark.parametrize(
    ("end", "expected"),
    [("close 1012", (1012, "restarting")), ("drop", (1014, "backend connection lost"))],
)
def test_without_failover_the_backends_end_reaches_the_client(
    rig: Any, end: str, expected: tuple[int, str]
) -> None:
    r = rig(("b1", "b2"), failover__enabled="false")
    client = r.connect()
    session = r.session
    if end == "drop":
        r.kill("b1")
    else:
        r.backends["b1"].peer.sendCloseFrame(1012, b"restarting")
        r.net.pump()
    assert client.closed_with == (True, *expected)
    assert (session.close_code, session.closed_by) == (expected[0], "backend")
    assert r.backends["b2"].handshakes == []
    assert r.events.of("closed") == [("closed", session.id, "b1", expected[0])]


# --- dial failures ------------------------------------------------------------------------


@pytest.mark.parametrize("refusal", ["connection refused", "HTTP 502"])
def test_a_backend_that_refuses_is_passed_over_and_charged(rig: Any, refusal: str) -> None:
    r = rig(("b1", "b2"))
    if refusal == "HTTP 502":
        r.backends["b1"].deny = 502
    else:
        r.net.answer("10.0.0.1", 9000, REFUSE)
    client = r.connect()
    assert client.opened and r.session.backend_id == "b2"
    assert r.attempts("b1") == 1
    assert len(r.backends["b1"].handshakes) == (1 if refusal == "HTTP 502" else 0)
    assert r.state("b1").connect_failures == 1  # towards its breaker
    assert (r.state("b1").dialing, r.state("b1").local_sessions) == (0, 0)
    assert r.metric("wsbalancer_backend_dial_failures_total", backend="b1") == 1
    sid = r.session.id
    assert r.events.of("picked") == [("picked", sid, "b1"), ("picked", sid, "b2")]


def test_a_backend_4xx_is_passed_to_the_client_and_no_other_is_tried(rig: Any) -> None:
    r = rig(("b1", "b2"))
    r.backends["b1"].deny = 403
    client = r.connect()
    assert not client.opened
    assert client.answer.startswith(b"HTTP/1.1 403 ")
    assert r.attempts("b2") == 0
    assert r.state("b1").connect_failures == 0  # an answer its application meant
    assert r.metric("wsbalancer_handshakes_total", outcome="backend_refused") == 1
    assert r.balancer.sessions == {} and r.events.of("closed") == []


def test_no_backend_left_to_try_gives_503(rig: Any) -> None:
    r = rig(("b1", "b2"))
    for backend in r.backends.values():
        r.net.answer(backend.host, backend.port, REFUSE)
    client = r.connect()
    assert not client.opened
    assert client.answer.startswith(b"HTTP/1.1 503 ")
    assert [r.attempts(n) for n in ("b1", "b2")] == [1, 1]  # each tried once
    assert [r.state(n).dialing for n in ("b1", "b2")] == [0, 0]
    assert r.metric("wsbalancer_handshakes_total", outcome="no_backend") == 1
    assert r.balancer.sessions == {}


def test_the_dial_budget_running_out_gives_504(rig: Any) -> None:
    r = rig(("b1", "b2"), timeouts__backend_total="2s")
    r.net.answer("10.0.0.1", 9000, IGNORE)  # the connection attempt is never answered
    client = r.connect()
    r.net.advance(1.9)
    assert client.pipe.sent_to_client == b"" and r.state("b1").dialing == 1
    r.net.advance(0.2)
    assert client.answer.startswith(b"HTTP/1.1 504 ")
    ((connector, _),) = r.net.unanswered
    assert connector.stoppedConnecting  # the hanging connection attempt was given up
    assert r.attempts("b2") == 0  # no dial starts past the budget
    assert r.state("b1").dialing == 0
    assert r.metric("wsbalancer_handshakes_total", outcome="backend_timeout") == 1
    assert r.balancer.sessions == {}


@pytest.mark.parametrize(
    "phase",
    [
        "handshake",
        "connect",
    ],
)
@pytest.mark.parametrize("cut", ["budget", "client leaves"])
def test_a_dial_the_balancer_gives_up_on_is_not_held_against_the_backend(
    rig: Any, cut: str, phase: str
) -> None:
    r = rig(("b1", "b2"), timeouts__backend_total="2s")
    if phase == "connect":
        r.net.answer("10.0.0.1", 9000, IGNORE)  # TCP never connects
    else:
        r.backends["b1"].gated = True  # connected; the backend's 101 never comes
    client = r.connect()
    if cut == "budget":
        r.net.advance(2.1)
        assert client.answer.startswith(b"HTTP/1.1 504 ")
    else:
        client.pipe.drop()
        r.net.pump()
    if phase == "handshake":
        (leg,) = [p for p in r.net.pipes if p is not client.pipe]
        assert leg.closed  # the backend's half-done handshake was aborted
    b1 = r.state("b1")
    assert (b1.dialing, b1.local_sessions, b1.connect_failures) == (0, 0, 0)
    assert r.metric("wsbalancer_backend_dial_failures_total", backend="b1") == 0
    assert r.attempts("b2") == 0  # nothing more is dialled
    assert r.balancer.sessions == {} and r.events.of("opened") == []


# --- failover -----------------------------------------------------------------------------


def test_a_dropped_backend_fails_over_and_held_messages_arrive_in_order(rig: Any) -> None:
    r = rig(("b1", "b2"))
    r.backends["b2"].subprotocols = ("v2", "v1")
    client = r.connect("/stream?room=7", protocols=("v1", "v2"))
    r.send(client, b"0")
    assert client.messages == [b"0:b1"]
    session = r.session
    r.backends["b2"].gated = True  # the re-dial waits until the test lets it answer
    r.kill("b1")
    assert session.reconnecting and session.backend is None
    assert client.state == OPEN and client.closed_with is None
    r.send(client, *[str(n).encode() for n in range(1, 11)])
    assert session.held is not None
    assert [payload for payload, _ in session.held] == [str(n).encode() for n in range(1, 11)]
    assert r.backends["b2"].received == []
    r.backends["b2"].release()
    r.net.pump()
    assert r.backends["b2"].received == [str(n).encode() for n in range(1, 11)]
    assert client.messages[1:] == [f"{n}:b2".encode() for n in range(1, 11)]
    (request,) = r.backends["b2"].handshakes
    assert request.path == "/stream" and request.params == {"room": ["7"]}
    assert request.headers["x-balancer-reconnect"] == "1"
    assert request.protocols == ["v1"]  # only the one the client already speaks
    assert not session.reconnecting and session.held is None and session.held_bytes == 0
    assert (session.reconnects, session.lost) == (1, 0)
    assert [r.state(n).local_sessions for n in ("b1", "b2")] == [0, 1]
    assert r.events.of("failed_over") == [("failed_over", session.id, "b1", "b2")]
    assert r.metric("wsbalancer_failovers_total", backend="b1") == 1


def test_messages_the_dead_backend_never_answered_are_counted_lost(rig: Any) -> None:
    r = rig(("b1", "b2"))
    r.backends["b1"].echo = False
    client = r.connect()
    r.send(client, b"a", b"b", b"c")
    r.backends["b1"].peer.sendMessage(b"answer")  # it answered all three
    r.net.pump()
    r.send(client, b"d", b"e")
    assert r.session.unanswered == 2
    r.kill("b1")
    assert client.messages == [b"answer"]
    assert r.session.lost == 2 and r.session.backend_id == "b2"


def test_the_hold_queue_pauses_the_client_past_failover_buffer(rig: Any) -> None:
    r = rig(("b1", "b2"), failover__buffer="100")
    client = r.connect()
    session = r.session
    r.backends["b2"].gated = True
    r.kill("b1")
    messages = [b"%02d" % n + b"x" * 38 for n in range(6)]  # 40 bytes each
    for message in messages:
        r.send(client, message)  # one read each, as a slow client's would be
    # Three (120 bytes) reached the limit: the client's reads stopped, nothing dropped.
    assert session.held is not None and len(session.held) == 3
    assert session.held_bytes == 120 and session.msgs_in == 3
    assert client.pipe.server.producerState == "paused"
    r.backends["b2"].release()
    r.net.pump()
    assert client.pipe.server.producerState == "producing"
    assert r.backends["b2"].received == messages
    assert session.msgs_in == 6 and session.lost == 0


def test_a_backend_close_with_a_failover_code_is_re_dialled(rig: Any) -> None:
    r = rig(("b1", "b2"))
    client = r.connect()
    r.backends["b1"].peer.sendCloseFrame(1012, b"restarting")
    r.net.pump()
    assert client.state == OPEN and client.closed_with is None
    assert r.backends["b1"].peer.closed_with == (1012, "restarting")
    r.send(client, b"after")
    assert client.messages == [b"after:b2"]
    assert r.session.reconnects == 1


def test_failover_gives_up_with_1013_when_no_backend_can_be_reached(rig: Any) -> None:
    r = rig(("b1",), failover__attempts="3", failover__backoff="250ms")
    client = r.connect()
    session = r.session
    r.kill("b1")
    # Round 1 finds no backend but the dead one; rounds 2 and 3 try it too (the health
    # checks may not have seen it come back); each round is followed by a doubling wait.
    step = 1 / 64
    for _ in range(round(1.75 / step) - 1):  # to just before 0.25 + 0.5 + 1.0 seconds
        r.net.advance(step)
    assert client.state == OPEN and session.reconnecting
    assert r.attempts("b1") == 3  # the first leg and the two re-dials
    r.net.advance(step)
    assert client.closed_with == (True, 1013, "no backend available")
    assert (session.close_code, session.closed_by) == (1013, "backend")
    # The session ended on the backend it was last on.
    assert r.events.of("failed_over") == [("failed_over", session.id, "b1", None)]
    assert r.events.of("closed") == [("closed", session.id, "b1", 1013)]
    assert r.metric("wsbalancer_sessions_closed_total", backend="b1", code="1013") == 1
    assert r.metric("wsbalancer_failover_outcomes_total", outcome="gave_up") == 1


def test_failover_gives_up_with_1014_when_backends_answer_but_refuse(rig: Any) -> None:
    r = rig(("b1", "b2"), failover__attempts="1")
    r.backends["b2"].deny = 503
    client = r.connect()
    session = r.session
    r.kill("b1")
    r.net.advance(0.25)
    assert client.closed_with == (True, 1014, "no backend accepted the session")
    assert len(r.backends["b2"].handshakes) == 1
    assert r.events.of("closed") == [("closed", session.id, "b1", 1014)]


def test_a_re_dialled_backend_with_another_subprotocol_is_let_go(rig: Any) -> None:
    r = rig(("b1", "b2"), failover__attempts="1")
    r.backends["b2"].subprotocols = ("v2",)
    client = r.connect(protocols=("v1", "v2"))
    assert client.websocket_protocol_in_use == "v1"
    r.kill("b1")
    # b2 answered, without the subprotocol the client speaks: its leg is closed at once.
    assert r.backends["b2"].peer.closed_with == (1001, "subprotocol mismatch")
    assert r.state("b2").local_sessions == 0
    r.net.advance(0.25)
    assert client.closed_with == (True, 1014, "no backend accepted the session")


def test_quick_deaths_in_a_row_pass_the_backends_close_on(rig: Any) -> None:
    r = rig(("b1",), failover__max_consecutive="2")
    r.backends["b1"].close_on_open = 1011
    client = r.connect()
    r.net.run(1.0)  # each re-dial waits a backoff: the one backend is the dead one
    assert client.closed_with == (True, 1011, "crashed")
    headers = [h.headers.get("x-balancer-reconnect") for h in r.backends["b1"].handshakes]
    assert headers == [None, "1", "2"]  # the first leg and two reconnects
    assert r.state("b1").local_sessions == 0


def test_a_leg_that_lived_stable_after_resets_the_count_from_its_own_failover_on(
    rig: Any,
) -> None:
    r = rig(("b1", "b2", "b3", "b4"), failover__max_consecutive="2", failover__stable_after="5s")
    client = r.connect()
    r.backends["b1"].peer.sendCloseFrame(1012, b"restarting")  # quick death 1: to b2
    r.net.pump()
    r.net.advance(10)  # the b2 leg is stable: its death starts the count again
    r.backends["b2"].peer.sendCloseFrame(1012, b"restarting")
    r.net.pump()
    assert r.session.backend_id == "b3" and r.session.quick_failovers == 1
    r.backends["b3"].peer.sendCloseFrame(1012, b"restarting")  # quick death 2: still allowed
    r.net.pump()
    assert client.closed_with is None and r.session.backend_id == "b4"


def test_a_stable_legs_death_fails_over_after_max_consecutive_quick_ones(rig: Any) -> None:
    r = rig(("b1", "b2", "b3"), failover__max_consecutive="1", failover__stable_after="5s")
    client = r.connect()
    r.backends["b1"].peer.sendCloseFrame(1012, b"restarting")  # a quick death: fails over to b2
    r.net.pump()
    assert r.session.backend_id == "b2"
    r.net.advance(10)  # the b2 leg is stable
    r.backends["b2"].peer.sendCloseFrame(1012, b"restarting")
    r.net.pump()
    assert client.closed_with is None and r.session.backend_id == "b3"


def test_from_its_second_round_a_failover_tries_backends_marked_down(rig: Any) -> None:
    r = rig(("b1", "b2"), failover__backoff="250ms")
    client = r.connect()
    r.state("b2").health = DOWN  # its health checks have not seen it come back yet
    r.kill("b1")
    r.net.run(0.25 - 1 / 64)
    assert r.attempts("b2") == 0  # round 1: no usable backend
    r.net.run(1 / 64)
    assert r.attempts("b2") == 1 and r.session.backend_id == "b2"
    assert client.closed_with is None
    r.send(client, b"hi")
    assert client.messages == [b"hi:b2"]


def test_a_client_leaving_during_failover_ends_the_session_on_its_last_backend(
    rig: Any,
) -> None:
    r = rig(("b1", "b2"))
    client = r.connect()
    session = r.session
    r.backends["b2"].gated = True
    r.kill("b1")
    (redial,) = [p for p in r.net.pipes if p.server.protocol is r.backends["b2"].peer]
    client.pipe.drop()
    r.net.pump()
    assert redial.closed  # the re-dial was cancelled
    assert (session.close_code, session.closed_by, session.backend_id) == (1006, "client", "b1")
    assert r.events.of("closed") == [("closed", session.id, "b1", 1006)]
    for name in ("b1", "b2"):
        assert (r.state(name).dialing, r.state(name).local_sessions) == (0, 0)
    assert r.balancer.sessions == {}


# --- moving -------------------------------------------------------------------------------


def test_removing_a_backend_moves_its_session_with_1001_and_the_client_stays(rig: Any) -> None:
    r = rig(("b1", "b2"))
    client = r.connect()
    session = r.session
    r.backends["b2"].gated = True
    assert r.balancer.remove_backend(r.state("b1"), "failover") == 1
    r.net.pump()
    assert r.backends["b1"].peer.closed_with == (1001, "backend removed")
    assert "b1" not in r.pool.backends  # drained at once: forgotten
    session.move("again")  # already failing over: no second re-dial
    assert len(r.backends["b2"].handshakes) == 1
    r.send(client, b"held")
    r.backends["b2"].release()
    r.net.pump()
    assert client.messages == [b"held:b2"] and client.closed_with is None
    assert r.backends["b2"].handshakes[0].headers["x-balancer-reconnect"] == "1"
    assert session.reconnects == 1 and session.backend_id == "b2"


# --- splice -------------------------------------------------------------------------------


def test_a_spliced_session_relays_frames_as_they_are(rig: Any) -> None:
    r = rig(("b1",), relay__mode="splice")
    client = r.connect()
    session = r.session
    assert session.spliced
    sent = frame(1, b"frag", fin=False) + frame(0, b"ment")
    client.transport.write(sent)
    r.net.pump()
    (backend_pipe,) = [p for p in r.net.pipes if p is not client.pipe]
    assert r.backends["b1"].received == [b"fragment"]
    assert client.messages == [b"fragment:b1"]
    assert (session.msgs_in, session.bytes_in, session.msgs_out) == (1, 8, 1)
    assert bytes(backend_pipe.sent_to_client).endswith(frame(1, b"fragment:b1", mask=False))


def test_a_spliced_move_waits_for_the_clients_message_to_end(rig: Any) -> None:
    r = rig(("b1", "b2"), relay__mode="splice")
    client = r.connect()
    session = r.session
    client.transport.write(frame(1, b"par", fin=False))
    r.net.pump()
    session.move("rebalance")
    r.net.advance(0.05)
    # The backend has half a message: the move waits (checking every 50 ms).
    assert session.backend_id == "b1" and r.backends["b2"].handshakes == []
    assert r.backends["b1"].peer.state == OPEN
    client.transport.write(frame(0, b"t"))
    r.net.pump()
    assert r.backends["b1"].received == [b"part"] and session.backend_id == "b1"
    r.net.advance(0.05)  # the next check finds both directions between messages
    assert r.backends["b1"].peer.closed_with == (1001, "rebalance")
    r.send(client, b"after")
    assert r.backends["b2"].received == [b"after"]
    assert session.backend_id == "b2" and session.spliced


def test_a_spliced_failover_delivers_held_frames_as_they_were_sent(rig: Any) -> None:
    r = rig(("b1", "b2"), relay__mode="splice")
    client = r.connect()
    session = r.session
    r.backends["b2"].gated = True
    r.kill("b1")
    one, two = frame(1, b"one"), frame(2, b"two")
    client.transport.write(one)
    r.net.pump()
    client.transport.write(two)
    r.net.pump()
    assert session.held is not None
    assert list(session.held) == [(one, None), (two, None)]  # raw frames, as they came
    r.backends["b2"].release()
    r.net.pump()
    assert r.backends["b2"].received == [b"one", b"two"]
    assert client.messages == [b"one:b2", b"two:b2"]
    assert session.spliced and session.reconnects == 1


def test_a_spliced_backend_lost_mid_frame_drops_the_client(rig: Any) -> None:
    r = rig(("b1", "b2"), relay__mode="splice")
    client = r.connect()
    session = r.session
    r.backends["b1"].peer.transport.write(frame(1, b"0123456789", mask=False)[:6])
    r.net.pump()
    r.kill("b1")
    # The client holds half a frame: no close frame can follow it, nor another backend.
    assert client.closed_with is not None and client.closed_with[:2] == (False, 1006)
    assert (session.close_code, session.closed_by) == (1006, "backend")
    assert r.backends["b2"].handshakes == []
    assert r.events.of("closed") == [("closed", session.id, "b1", 1006)]


# --- make-before-break migration ----------------------------------------------------------


def test_a_migration_dials_first_switches_on_the_101_and_drains_the_old_leg(rig: Any) -> None:
    r = rig(("b1", "b2"))
    client = r.connect("/room?x=1")
    session = r.session
    old_peer = r.backends["b1"].peer
    r.send(client, b"m1")
    r.backends["b2"].gated = True
    outcome = outcome_of(session.migrate("rebalance"))
    r.net.pump()
    # Until the new leg's 101, the old one carries everything (make-before-break).
    r.send(client, b"m2")
    assert r.backends["b1"].received == [b"m1", b"m2"] and outcome == []
    (request,) = r.backends["b2"].handshakes
    assert request.path == "/room" and request.headers["x-balancer-reconnect"] == "1"
    assert request.protocols == ["v1"]
    r.backends["b2"].release()
    r.net.pump()
    assert outcome == ["migrated"] and session.backend_id == "b2"
    r.send(client, b"m3")
    assert r.backends["b2"].received == [b"m3"] and r.backends["b1"].received == [b"m1", b"m2"]
    # The old backend may still answer what it was sent: that reaches the client.
    old_peer.sendMessage(b"late answer", False)
    r.net.pump()
    assert client.messages == [b"m1:b1", b"m2:b1", b"m3:b2", b"late answer"]
    assert old_peer.state == OPEN  # not quiet yet
    r.net.advance(1.0)  # heard from in the last period: kept
    assert old_peer.state == OPEN
    r.net.advance(1.0)  # a quiet period: closed with 1001, the client untouched
    assert old_peer.closed_with == (1001, "session migrated")
    assert client.closed_with is None and client.opened
    assert (r.state("b1").local_sessions, r.state("b2").local_sessions) == (0, 1)
    assert r.metric("wsbalancer_migrations_total", outcome="migrated") == 1
    assert r.events.of("closed") == [] and session.reconnects == 1


def test_an_old_leg_that_keeps_talking_is_closed_after_the_longest_drain(rig: Any) -> None:
    r = rig(("b1", "b2"))
    client = r.connect()
    session = r.session
    old_peer = r.backends["b1"].peer
    outcome = outcome_of(session.migrate("rebalance"))
    r.net.pump()
    assert outcome == ["migrated"]
    for second in range(10):
        old_peer.sendMessage(b"tick %d" % second, False)
        r.net.pump()
        assert old_peer.state == OPEN
        r.net.advance(1.0)
    assert old_peer.closed_with == (1001, "session migrated")
    assert len(client.messages) == 10 and client.closed_with is None


def test_a_session_that_cannot_migrate_safely_is_skipped_and_counted(rig: Any) -> None:
    r = rig(("b1", "b2"), relay__mode="splice")
    r.connect()
    session = r.session
    assert outcome_of(session.migrate("rebalance")) == ["skipped: splice mode"]
    assert r.backends["b2"].handshakes == [] and session.backend_id == "b1"
    assert r.metric("wsbalancer_migrations_total", outcome="skipped") == 1


def test_a_migration_that_finds_no_backend_leaves_the_session_where_it_is(rig: Any) -> None:
    r = rig(("b1", "b2"))
    client = r.connect()
    session = r.session
    r.kill("b2")
    outcome = outcome_of(session.migrate("rebalance"))
    r.net.pump()
    assert outcome and outcome[0].startswith("failed: ")
    r.send(client, b"still here")
    assert client.messages == [b"still here:b1"] and session.backend_id == "b1"
    assert r.metric("wsbalancer_migrations_total", outcome="failed") == 1
    assert r.state("b2").dialing == 0


def test_a_client_leaving_mid_migration_ends_both_dials_and_counts(rig: Any) -> None:
    r = rig(("b1", "b2"))
    client = r.connect()
    session = r.session
    r.backends["b2"].gated = True
    outcome = outcome_of(session.migrate("rebalance"))
    r.net.pump()
    client.pipe.drop()
    r.net.pump()
    assert outcome == ["failed: client left"]
    r.backends["b2"].release()
    r.net.pump()
    assert r.backends["b1"].peer.closed_with == (1001, "client went away")
    assert (r.state("b1").local_sessions, r.state("b2").local_sessions) == (0, 0)
    assert r.state("b2").dialing == 0 and r.balancer.sessions == {}


def test_evacuating_a_backend_migrates_its_sessions_at_a_pace(rig: Any) -> None:
    r = rig(("b1", "b2"), balancing__strategy="least-loaded")
    clients = [r.connect() for _ in range(4)]
    on_b1 = [s for s in r.balancer.sessions.values() if s.backend_id == "b1"]
    assert len(on_b1) == 2
    evacuation = r.balancer.evacuate(r.state("b1"), pace=10.0)
    r.net.pump()
    # One migration started at once, the next a tenth of a second later.
    assert sum(s.backend_id == "b2" for s in on_b1) == 1 and not evacuation.done
    assert r.state("b1").draining  # no new sessions meanwhile
    r.net.advance(0.1)
    assert all(s.backend_id == "b2" for s in on_b1) and evacuation.done
    assert evacuation.view() == {
        "sessions": 2,
        "migrated": 2,
        "skipped": 0,
        "failed": 0,
        "done": True,
    }
    r.net.advance(1.0)
    assert r.state("b1").local_sessions == 0
    for i, client in enumerate(clients):
        r.send(client, b"n%d" % i)
    assert [c.messages[-1] for c in clients] == [b"n%d:b2" % i for i in range(4)]
    assert all(c.closed_with is None for c in clients)
