"""Integration: real backends, the real balancer and a real client (websockets) on 127.0.0.1."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import pytest_twisted
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from wsbalancer.devtools.demo.backend import DemoProtocol

from .helpers import aio, get_json, start_backend, start_balancer, wait_for


@pytest_twisted.ensureDeferred
async def test_messages_path_and_query_reach_the_backend_and_come_back() -> None:
    backend = start_backend("b1")
    lb = await start_balancer([backend.url])
    try:
        ws = await aio(websockets.connect(lb.ws_url("/echo/room?x=1&x=2&y=%20z")))
        await aio(ws.send("héllo"))
        assert await aio(ws.recv()) == "héllo"
        await aio(ws.send(b"\x00\xff" * 40000))
        assert await aio(ws.recv()) == b"\x00\xff" * 40000
        seen = backend.backend.handshakes[-1]
        assert seen["path"] == "/echo/room"
        assert seen["params"] == {"x": ["1", "2"], "y": [" z"]}
        await aio(ws.close())
    finally:
        await lb.stop()
        await backend.stop()


@pytest_twisted.ensureDeferred
async def test_client_gets_the_subprotocol_the_backend_picked() -> None:
    backend = start_backend("b1", subprotocols=("chat.v1", "chat.v2"))
    lb = await start_balancer([backend.url])
    try:
        ws = await aio(websockets.connect(lb.ws_url(), subprotocols=["chat.v2", "chat.v1"]))
        assert ws.subprotocol == "chat.v1"
        assert backend.backend.handshakes[-1]["protocols"] == ["chat.v2", "chat.v1"]
        await aio(ws.close())
        plain = await aio(websockets.connect(lb.ws_url()))
        assert plain.subprotocol is None
        await aio(plain.close())
    finally:
        await lb.stop()
        await backend.stop()


@pytest_twisted.ensureDeferred
async def test_forwarded_headers_cookies_and_set_cookie_pass_back() -> None:
    class CookieBackend(DemoProtocol):
        def onConnect(self, request: Any) -> Any:
            super().onConnect(request)
            return None, {"Set-Cookie": ["a=1; Path=/", "b=2; Path=/"], "X-Internal": "no"}

    backend = start_backend("b1", protocol=CookieBackend)
    lb = await start_balancer([backend.url])
    try:
        ws = await aio(
            websockets.connect(
                lb.ws_url(),
                additional_headers={
                    "Cookie": "session=abc",
                    "X-Request-Id": "r1",
                    "X-Forwarded-For": "6.6.6.6",
                    "X-Balancer-Reconnect": "9",
                },
                origin="http://example.test",
            )
        )
        headers = backend.backend.handshakes[-1]["headers"]
        assert headers["cookie"] == "session=abc"
        assert headers["x-request-id"] == "r1"
        assert headers["x-forwarded-for"] == "127.0.0.1"  # an untrusted chain is not kept
        assert headers["x-forwarded-proto"] == "http"
        assert headers["x-forwarded-host"].startswith("127.0.0.1:")
        assert headers["origin"] == "http://example.test"
        assert "x-balancer-reconnect" not in headers  # only the balancer may set it
        assert ws.response.headers.get_all("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]
        assert "X-Internal" not in ws.response.headers
        await aio(ws.close())
    finally:
        await lb.stop()
        await backend.stop()


@pytest_twisted.ensureDeferred
async def test_backend_4xx_is_passed_to_the_client() -> None:
    backend = start_backend("b1", deny_status=403)
    lb = await start_balancer([backend.url])
    try:
        with pytest.raises(InvalidStatus) as raised:
            await aio(websockets.connect(lb.ws_url()))
        assert raised.value.response.status_code == 403
    finally:
        await lb.stop()
        await backend.stop()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest_twisted.ensureDeferred
async def test_unreachable_and_5xx_backends_are_skipped() -> None:
    good = start_backend("good")
    broken = start_backend("broken", deny_status=502)
    dead_url = f"ws://127.0.0.1:{_closed_port()}"
    lb = await start_balancer([dead_url, broken.url, good.url], balancing__strategy="round-robin")
    try:
        for _ in range(3):  # round robin starts on each backend once
            ws = await aio(websockets.connect(lb.ws_url()))
            await aio(ws.send("x"))
            assert await aio(ws.recv()) == "x"
            await aio(ws.close())
        assert good.backend.handshakes and len(good.backend.handshakes) == 3
    finally:
        await lb.stop()
        await good.stop()
        await broken.stop()


@pytest_twisted.ensureDeferred
async def test_no_backend_left_gives_503_and_not_ready() -> None:
    backend = start_backend("b1")
    lb = await start_balancer([backend.url, f"ws://127.0.0.1:{_closed_port()}"])
    try:
        code, _ = await get_json(lb.admin_url("/readyz"))
        assert code == 200
        await backend.stop()
        with pytest.raises(InvalidStatus) as raised:
            await aio(websockets.connect(lb.ws_url()))
        assert raised.value.response.status_code == 503

        for _ in range(lb.balancer.config.health_fall):  # `fall` failed polls mark it down
            await _next_poll(lb)
        code, body = await get_json(lb.admin_url("/readyz"))
        assert (code, body["ready"]) == (503, False)
    finally:
        await lb.stop()


async def _next_poll(lb: Any) -> None:
    assert lb.service.poller is not None
    await lb.service.poller.poll_once()


@pytest_twisted.ensureDeferred
async def test_close_codes_cross_both_ways() -> None:
    class Closer(DemoProtocol):
        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            if payload.startswith(b"close "):
                code, reason = payload.split(b" ", 2)[1:]
                self.sendClose(int(code), reason.decode())
            else:
                super().onMessage(payload, isBinary)

    backend = start_backend("b1", protocol=Closer)
    lb = await start_balancer([backend.url])
    try:
        ws = await aio(websockets.connect(lb.ws_url()))
        await aio(ws.close(4001, "client bye"))
        await wait_for(lambda: backend.backend.closes, what="backend to see the close")
        assert backend.backend.closes[-1] == (4001, "client bye")

        ws = await aio(websockets.connect(lb.ws_url()))
        await aio(ws.send(b"close 4002 backend bye"))
        with pytest.raises(ConnectionClosed):
            await aio(ws.recv())
        assert ws.close_code == 4002
        assert ws.close_reason == "backend bye"
    finally:
        await lb.stop()
        await backend.stop()


@pytest_twisted.ensureDeferred
async def test_backend_dying_mid_session_gives_1014_not_1000_without_failover() -> None:
    backend = start_backend("b1")
    lb = await start_balancer([backend.url], failover__enabled="false")
    try:
        ws = await aio(websockets.connect(lb.ws_url()))
        await aio(ws.send("x"))
        assert await aio(ws.recv()) == "x"
        await backend.stop()
        with pytest.raises(ConnectionClosed):
            await aio(ws.recv())
        assert (ws.close_code, ws.close_reason) == (1014, "backend connection lost")
        assert lb.balancer.sessions == {}
        assert lb.balancer.pool.backends[backend.id].local_sessions == 0
    finally:
        await lb.stop()


@pytest_twisted.ensureDeferred
async def test_failover_with_nothing_left_gives_1013_after_its_attempts() -> None:
    backend = start_backend("b1")
    lb = await start_balancer([backend.url], failover__backoff="50ms")
    try:
        ws = await aio(websockets.connect(lb.ws_url()))
        await aio(ws.send("x"))
        assert await aio(ws.recv()) == "x"
        await backend.stop()
        with pytest.raises(ConnectionClosed):
            await aio(ws.recv())
        assert (ws.close_code, ws.close_reason) == (1013, "no backend available")
        await wait_for(lambda: not lb.balancer.sessions, what="session to be freed")
        assert lb.balancer.pool.backends[backend.id].local_sessions == 0
    finally:
        await lb.stop()


@pytest_twisted.ensureDeferred
async def test_client_vanishing_closes_the_backend_leg_and_frees_the_session() -> None:
    backend = start_backend("b1")
    lb = await start_balancer([backend.url])
    try:
        ws = await aio(websockets.connect(lb.ws_url()))
        await wait_for(lambda: backend.count == 1)
        ws.transport.abort()
        await wait_for(lambda: backend.count == 0, what="backend leg to close")
        assert backend.backend.closes[-1][0] == 1001
        await wait_for(lambda: not lb.balancer.sessions, what="session to be freed")
    finally:
        await lb.stop()
        await backend.stop()


@pytest_twisted.ensureDeferred
async def test_a_reload_turns_the_idle_timeout_on_and_retimes_the_poll() -> None:
    from dataclasses import replace

    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    backend = start_backend("b1")
    lb = await start_balancer([backend.url])
    try:
        assert lb.service.idle_sweeper is None
        idle = await aio(websockets.connect(lb.ws_url()))
        busy = await aio(websockets.connect(lb.ws_url()))
        await wait_for(lambda: len(lb.balancer.sessions) == 2)
        lb.balancer.sweep_idle()  # as a running sweep would have: both noted as they are
        level = lb.balancer.config.log_level
        config = replace(lb.balancer.config, idle_timeout=0.3, poll_interval=0.5, log_level="warn")
        lb.service.reload_source = lambda: config  # what SIGHUP runs
        changes = lb.service.reload()
        assert "idle timeout now 0.3s" in changes and "poll interval now 0.5s" in changes
        assert "log level now warn" in changes
        # the new timer swept at once; it closed nothing, as neither was idle a whole period
        assert len(lb.balancer.sessions) == 2
        assert lb.service.poll_timer._loop.interval == 0.5 and lb.service.poll_timer.running
        started = reactor.seconds()
        while not idle.close_code:  # bounded by the deadline below
            await aio(busy.send("tick"))
            assert await aio(busy.recv()) == "tick"
            await deferLater(reactor, 0.05, lambda: None)
            assert reactor.seconds() - started < 10, "idle session was never closed"
        assert idle.close_code == 1001 and idle.close_reason == "idle timeout"
        lb.service.reload_source = lambda: replace(config, idle_timeout=0.0, log_level=level)
        assert "idle timeout off" in lb.service.reload()
        assert lb.service.idle_sweeper is None
        await aio(busy.send("still open"))
        assert await aio(busy.recv()) == "still open"
        await aio(busy.close())
    finally:
        await lb.stop()
        await backend.stop()


@pytest_twisted.ensureDeferred
async def test_idle_sessions_are_closed_with_1001_and_busy_ones_are_not() -> None:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    backend = start_backend("b1")
    lb = await start_balancer([backend.url], timeouts__idle="0.3s")
    try:
        idle = await aio(websockets.connect(lb.ws_url()))
        busy = await aio(websockets.connect(lb.ws_url()))
        started = reactor.seconds()
        while not idle.close_code:  # bounded by the wait_for timeout below
            await aio(busy.send("tick"))
            assert await aio(busy.recv()) == "tick"
            await deferLater(reactor, 0.05, lambda: None)
            assert reactor.seconds() - started < 10, "idle session was never closed"
        assert idle.close_code == 1001 and idle.close_reason == "idle timeout"
        await aio(busy.send("still open"))
        assert await aio(busy.recv()) == "still open"
        await wait_for(lambda: backend.backend.closes, what="idle backend leg closed")
        assert backend.backend.closes[-1][0] == 1001
        await aio(busy.close())
    finally:
        await lb.stop()
        await backend.stop()


@pytest_twisted.ensureDeferred
async def test_permessage_deflate_is_negotiated_per_leg() -> None:
    backend = start_backend("b1")
    default = await start_balancer([backend.url])
    mirror = await start_balancer([backend.url], compression__backend="mirror")
    try:
        for lb, backend_offered in ((default, False), (mirror, True)):
            ws = await aio(websockets.connect(lb.ws_url()))  # websockets offers deflate
            assert "permessage-deflate" in ws.response.headers["Sec-WebSocket-Extensions"]
            text = "compressible " * 5000
            await aio(ws.send(text))
            assert await aio(ws.recv()) == text
            offered = backend.backend.handshakes[-1]["headers"].get("sec-websocket-extensions", "")
            assert ("permessage-deflate" in offered) is backend_offered
            await aio(ws.close())
        plain = await aio(websockets.connect(default.ws_url(), compression=None))
        assert "Sec-WebSocket-Extensions" not in plain.response.headers
        await aio(plain.close())
    finally:
        await default.stop()
        await mirror.stop()
        await backend.stop()


@pytest_twisted.ensureDeferred
async def test_open_sessions_let_go_of_what_only_their_handshakes_needed() -> None:
    # What an idle session holds is what a balancer's memory grows with: once open, neither
    # leg keeps its handshake's text, the backend leg uses its backend's shared factory
    # rather than the dial's copy, and no write queue is made until a write waits.
    backend = start_backend("b1")
    lb = await start_balancer([backend.url])
    try:
        first = await aio(websockets.connect(lb.ws_url("/a?x=1")))
        second = await aio(websockets.connect(lb.ws_url("/b")))
        await wait_for(lambda: len(lb.balancer.sessions) == 2)
        dialer = lb.balancer.lanes["default"].dialer
        shared = dialer._factories[lb.balancer.config.backends[0].id][1]
        for session in lb.balancer.sessions.values():
            client, leg = session.client, session.backend
            for side in (client, leg):
                assert side.http_request_data is None and side.http_response_data is None
                assert side.queued is None
            assert client.http_headers is None
            assert leg.factory is shared
            assert session.held is None
        # what the session still needs of the request is there: the path, and the
        # headers a re-dial sends again
        paths = sorted(s.client.http_request_uri for s in lb.balancer.sessions.values())
        assert paths == ["/a?x=1", "/b"]
        assert [h["path"] for h in backend.backend.handshakes] == ["/a", "/b"]
        for ws in (first, second):
            await aio(ws.send("still relayed"))
            assert await aio(ws.recv()) == "still relayed"
            await aio(ws.close())
    finally:
        await lb.stop()
        await backend.stop()
