"""Integration: routes and pools, affinity, and plain-HTTP proxying, with real sockets."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
import websockets
from twisted.internet import defer
from websockets.exceptions import InvalidStatus

from .helpers import aio, start_backend, start_balancer, start_http_backend, wait_for


def _yaml(text: str) -> str:
    # (a tmp_path fixture does not mix with pytest_twisted.ensureDeferred tests)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(text)
    return f.name


def _cookie(response: Any, name: str = "wsb_backend") -> str | None:
    for value in response.headers.getRawHeaders("set-cookie", []):
        if value.startswith(f"{name}="):
            return str(value.split(";", 1)[0].split("=", 1)[1])
    return None


async def _get(url: str, cookie: str | None = None, **kwargs: Any) -> tuple[Any, bytes]:
    headers = {"Cookie": f"wsb_backend={cookie}"} if cookie else {}
    response = await treq.get(url, headers=headers, persistent=False, **kwargs)
    return response, await response.content()


@pytest_twisted.ensureDeferred
async def test_two_pools_routed_by_path_each_receive_only_their_own_traffic() -> None:
    a1, a2, b1 = start_backend("a1"), start_backend("a2"), start_backend("b1")
    b2 = start_backend("b2")
    config = _yaml(
        f"""
pools:
  alpha:
    backends: [{{id: a1, url: "{a1.url}"}}, {{id: a2, url: "{a2.url}"}}]
    balancing: {{strategy: round-robin, metric_path: none}}
  beta:
    backends: [{{id: b1, url: "{b1.url}"}}]
    balancing: {{metric_path: none}}
admin: {{token: t0ken, open_reads: true}}
routes:
  - {{path: /alpha, pool: alpha}}
  - {{path: /beta, pool: beta}}
  - {{path: /, host: beta.example, pool: beta}}
""",
    )
    lb = await start_balancer([], config_file=config)
    os.unlink(config)
    try:
        for path in ("/alpha/echo", "/beta/echo", "/alpha/x", "/beta", "/alpha/y", "/beta/z"):
            ws = await aio(websockets.connect(lb.ws_url(path)))
            await aio(ws.send(path))
            assert await aio(ws.recv()) == path  # the demo backend echoes
            await aio(ws.close())
        assert {p["path"] for p in a1.backend.handshakes + a2.backend.handshakes} == {
            "/alpha/echo",
            "/alpha/x",
            "/alpha/y",
        }
        assert {p["path"] for p in b1.backend.handshakes} == {"/beta/echo", "/beta", "/beta/z"}
        # round robin inside pool alpha: both of its backends got sessions
        assert a1.backend.handshakes and a2.backend.handshakes
        # a Host route: any path on beta.example goes to pool beta (WebSocket-only: 426),
        # the same path on another host is taken by no route (404)
        response = await treq.get(
            f"http://127.0.0.1:{lb.port}/other",
            headers={"Host": "beta.example:8080"},
            persistent=False,
        )
        assert response.code == 426
        response, _ = await _get(f"http://127.0.0.1:{lb.port}/other")
        assert response.code == 404
        # no default pool (the top level has no backends): what no route takes is a 404
        try:
            await aio(websockets.connect(lb.ws_url("/alphabet")))
            raise AssertionError("expected 404")
        except InvalidStatus as e:
            assert e.response.status_code == 404
            assert b"no route for /alphabet" in e.response.body
        response, body = await _get(f"http://127.0.0.1:{lb.port}/nowhere")
        assert response.code == 404 and body == b"no route for /nowhere\n"
        # per-pool backends in the admin document
        _, doc = await _admin_json(lb, "/balancer-metrics")
        assert doc["pools"]["alpha"]["backends"] == ["a1", "a2"]
        assert doc["pools"]["beta"]["backends"] == ["b1"]
        assert {b["id"] for b in doc["backends"]} == {"a1", "a2", "b1"}
        code, ready = await _admin_json(lb, "/readyz")
        assert code == 200 and ready["usableBackends"] == ["a1", "a2", "b1"]  # every pool's
        # the admin API sees and acts on backends of every pool
        _, api = await _admin_json(lb, "/api/backends")
        assert {b["id"]: b["pool"] for b in api["backends"]} == {
            "a1": "alpha",
            "a2": "alpha",
            "b1": "beta",
        }
        response = await treq.post(
            lb.admin_url("/api/backends/b1/drain"),
            headers={"Authorization": "Bearer t0ken"},
            persistent=False,
        )
        assert response.code == 200 and (await response.json())["draining"] is True
        assert lb.balancer.lanes["beta"].pool.backends["b1"].draining
        # a backend added through the API to a named pool takes that pool's sessions
        for body, code in (
            ({"id": "b2", "url": b2.url}, 404),  # the default pool takes no request here
            ({"id": "b2", "url": b2.url, "pool": "nope"}, 404),
            ({"id": "b2", "url": b2.url, "pool": "beta"}, 201),
        ):
            response = await treq.post(
                lb.admin_url("/api/backends"),
                json.dumps(body).encode(),
                headers={"Authorization": "Bearer t0ken", "Content-Type": "application/json"},
                persistent=False,
            )
            assert response.code == code
        assert (await response.json())["pool"] == "beta"
        ws = await aio(websockets.connect(lb.ws_url("/beta/added")))
        await aio(ws.close())
        assert [p["path"] for p in b2.backend.handshakes] == ["/beta/added"]
        response = await treq.get(lb.admin_url("/metrics"), persistent=False)
        text = (await response.content()).decode()
        assert 'wsbalancer_backend_pool{backend="a2",pool="alpha"} 1.0' in text
        assert 'wsbalancer_picks_total{backend="b1"} 3.0' in text
        assert doc["pools"]["default"]["backends"] == [] and doc["defaultPool"] is None
    finally:
        await lb.stop()
        for backend in (a1, a2, b1, b2):
            await backend.stop()


async def _admin_json(lb: Any, path: str) -> tuple[int, Any]:
    response = await treq.get(lb.admin_url(path), persistent=False)
    return response.code, await response.json()


async def _cookie_balancer(*backends: Any, **settings: Any) -> Any:
    settings = {"affinity__mode": "cookie", **settings}
    return await start_balancer(
        [f"{b.id}={b.url}" for b in backends],
        affinity__secret="test-secret",
        http__enabled="true",
        balancing__metric_path="none",
        **settings,
    )


@pytest_twisted.ensureDeferred
async def test_http_requests_stick_by_cookie_and_tampered_cookies_are_repicked() -> None:
    h1, h2 = start_http_backend("h1"), start_http_backend("h2")
    lb = await _cookie_balancer(h1, h2)
    url = f"http://127.0.0.1:{lb.port}/app/poll?x=1"
    try:
        response, body = await _get(url)
        assert response.code == 200
        cookie = _cookie(response)
        assert cookie is not None
        attributes = response.headers.getRawHeaders("set-cookie")[0]
        assert "HttpOnly" in attributes and "SameSite=Lax" in attributes
        assert "Secure" not in attributes  # the client came over plain TCP
        first = response.headers.getRawHeaders("x-served-by")[0]
        other = "h2" if first == "h1" else "h1"
        for _ in range(5):
            response, body = await _get(url, cookie)
            assert response.headers.getRawHeaders("x-served-by") == [first]
            assert _cookie(response) is None  # pinned already: nothing new to set
        assert body.startswith(f"{first} GET /app/poll?x=1".encode())
        # The same pin is honoured by the WebSocket that follows (no new cookie either).
        # Forged: the other backend's name with this cookie's nonce and signature.
        name, nonce, mac = cookie.split(".")
        lane = lb.balancer.lanes["default"]
        forged_name = lane.affinity.sign(other, nonce).split(".")[0]
        for bad in (f"{forged_name}.{nonce}.{mac}", f"{name}.{nonce}.{mac[:-2]}AA", "garbage"):
            # Load `first` so least-loaded has a reason to choose `other`.
            lane.pool.backends[first].local_sessions += 5
            response, body = await _get(url, bad)
            lane.pool.backends[first].local_sessions -= 5
            assert response.code == 200, bad
            assert response.headers.getRawHeaders("x-served-by") == [other], bad
            new = _cookie(response)
            assert new is not None and lane.affinity.verify(new)[0] == other
        # The balancer's cookie is not passed on to the backend; the others are.
        response = await treq.get(
            url, headers={"Cookie": f"a=1; wsb_backend={cookie}; b=2"}, persistent=False
        )
        await response.content()
        seen = lb_backend(h1, h2, first).resource.requests[-1]["headers"]
        assert seen["cookie"] == ["a=1; b=2"]
    finally:
        await lb.stop()
        await h1.stop()
        await h2.stop()


def lb_backend(h1: Any, h2: Any, name: str) -> Any:
    return h1 if name == "h1" else h2


@pytest_twisted.ensureDeferred
async def test_websocket_follows_the_cookie_and_a_removed_backend_repins_silently() -> None:
    b1, b2 = start_backend("b1"), start_backend("b2")
    b1.id, b2.id = "b1", "b2"
    lb = await _cookie_balancer(b1, b2)
    try:
        ws = await aio(websockets.connect(lb.ws_url("/chat")))
        greeting = await aio(ws.recv())
        pinned = greeting.removeprefix("connected to ")
        set_cookie = ws.response.headers.get("Set-Cookie")
        assert set_cookie and set_cookie.startswith("wsb_backend=")
        cookie = set_cookie.split(";", 1)[0]
        await aio(ws.close())
        lane = lb.balancer.lanes["default"]
        for _ in range(4):  # the pin wins over least-loaded
            lane.pool.backends[pinned].local_sessions += 3
            ws = await aio(
                websockets.connect(lb.ws_url("/chat"), additional_headers={"Cookie": cookie})
            )
            assert await aio(ws.recv()) == f"connected to {pinned}"
            assert ws.response.headers.get("Set-Cookie") is None
            await aio(ws.close())
            lane.pool.backends[pinned].local_sessions -= 3
        # A tampered cookie on a WebSocket: a normal 101 and a fresh, valid cookie.
        name, nonce, mac = cookie.split("=", 1)[1].split(".")
        tampered = f"wsb_backend={name}.{nonce}.{mac[::-1]}"
        ws = await aio(
            websockets.connect(lb.ws_url("/chat"), additional_headers={"Cookie": tampered})
        )
        await aio(ws.recv())
        fresh = ws.response.headers.get("Set-Cookie")
        assert fresh is not None and lane.affinity.verify(fresh.split(";")[0].split("=", 1)[1])
        await aio(ws.close())
        # Pinned sessions count in the least-loaded figures.
        ws = await aio(
            websockets.connect(lb.ws_url("/chat"), additional_headers={"Cookie": cookie})
        )
        await aio(ws.recv())
        assert lane.pool.backends[pinned].local_sessions == 1
        await aio(ws.close())
        # The pinned backend is removed by a reload: the next session re-pins, no error.
        config = lb.balancer.config
        kept = tuple(b for b in config.backends if b.id != pinned)
        lb.balancer.reconfigure(replace(config, backends=kept))
        ws = await aio(
            websockets.connect(lb.ws_url("/chat"), additional_headers={"Cookie": cookie})
        )
        other = kept[0].id
        assert await aio(ws.recv()) == f"connected to {other}"
        new = ws.response.headers.get("Set-Cookie")
        assert new is not None
        assert lane.affinity.verify(new.split(";")[0].split("=", 1)[1])[0] == other
        await aio(ws.close())
    finally:
        await lb.stop()
        await b1.stop()
        await b2.stop()


@pytest_twisted.ensureDeferred
async def test_pinned_backend_with_open_breaker_or_draining_is_repicked() -> None:
    h1, h2 = start_http_backend("h1"), start_http_backend("h2")
    lb = await _cookie_balancer(h1, h2)
    url = f"http://127.0.0.1:{lb.port}/"
    try:
        response, _ = await _get(url)
        cookie = _cookie(response)
        first = response.headers.getRawHeaders("x-served-by")[0]
        state = lb.balancer.lanes["default"].pool.backends[first]
        state.draining = True
        response, _ = await _get(url, cookie)
        assert response.headers.getRawHeaders("x-served-by") != [first]
        assert _cookie(response) is not None
        state.draining = False
        state.breaker, state.breaker_until = "open", lb.balancer.clock.seconds() + 60
        response, _ = await _get(url, cookie)
        assert response.code == 200
        assert response.headers.getRawHeaders("x-served-by") != [first]
    finally:
        await lb.stop()
        await h1.stop()
        await h2.stop()


@pytest.mark.parametrize("mode", ["cookie", "off"])
@pytest_twisted.ensureDeferred
async def test_hung_http_backend_times_out_with_504_and_nothing_leaks(mode: str) -> None:
    hung = start_http_backend("hung", hang=True)
    lb = await _cookie_balancer(hung, http__timeout="0.3s", affinity__mode=mode)
    state = lb.balancer.lanes["default"].pool.backends["hung"]
    try:
        pending = defer.ensureDeferred(_get(f"http://127.0.0.1:{lb.port}/socket.io/?EIO=4"))
        if mode == "off":  # without pins, a request in flight counts on its backend
            await wait_for(lambda: state.requests == 1, what="the request to be in flight")
        response, body = await pending
        assert response.code == 504
        assert body == b"backend did not answer within 0.3s\n"
        assert response.headers.getRawHeaders("set-cookie") is None  # no pin to a hung one
        assert state.requests == 0
        assert state.pinned == 0  # the cookie was not sent, so no session counts there
        assert state.connect_failures == 1
        await wait_for(lambda: not hung.resource.waiting, what="the hung request to be dropped")
    finally:
        await lb.stop()
        await hung.stop()


@pytest_twisted.ensureDeferred
async def test_http_bodies_are_bounded_and_headers_rewritten() -> None:
    h1 = start_http_backend("h1")
    lb = await start_balancer(
        [f"h1={h1.url}"],
        http__enabled="true",
        http__max_body="1KiB",
        headers__forward="x-keep,cookie",  # a handshake-minded list: bodies keep their type
        balancing__metric_path="none",
    )
    url = f"http://127.0.0.1:{lb.port}/upload"
    try:
        response = await treq.post(
            url,
            data=b"x" * 5000,
            headers={"Connection": "keep-alive, x-drop", "X-Drop": "1", "Keep-Alive": "300"},
            persistent=False,
        )
        assert response.code == 413
        assert await response.content() == b"request body too large\n"
        assert h1.resource.requests == []  # nothing reached the backend
        response = await treq.post(
            url,
            data=b"y" * 1000,
            headers={
                "Connection": "x-drop",
                "X-Drop": "1",
                "X-Keep": "2",
                "X-Other": "3",
                "Content-Type": "application/octet-stream",
                "Expect": "100-continue",
            },
            persistent=False,
        )
        assert response.code == 200
        assert await response.content() == b"h1 POST /upload " + b"y" * 1000
        seen = h1.resource.requests[-1]["headers"]
        assert seen["x-forwarded-for"] == ["127.0.0.1"]
        assert seen["x-forwarded-proto"] == ["http"]
        assert seen["x-forwarded-host"] == [f"127.0.0.1:{lb.port}"]
        assert seen["x-keep"] == ["2"]
        assert "x-drop" not in seen  # named in Connection: this hop's only
        assert "x-other" not in seen and "expect" not in seen
        assert seen["content-type"] == ["application/octet-stream"]
        assert response.headers.getRawHeaders("x-served-by") == ["h1"]
        assert len(response.headers.getRawHeaders("server")) == 1  # the backend's, not two
    finally:
        await lb.stop()
        await h1.stop()


@pytest_twisted.ensureDeferred
async def test_long_poll_response_streams_as_written() -> None:
    h1 = start_http_backend("h1", stream=True)
    lb = await start_balancer([f"h1={h1.url}"], http__enabled="true", balancing__metric_path="none")
    try:
        response = await treq.get(f"http://127.0.0.1:{lb.port}/poll", persistent=False)
        assert response.code == 200
        chunks: list[bytes] = []
        done = treq.collect(response, chunks.append)
        await wait_for(lambda: chunks, what="the first part before the backend finished")
        assert b"".join(chunks) == b"first part;"
        h1.resource.release()
        await done
        assert b"".join(chunks) == b"first part;second part"
    finally:
        await lb.stop()
        await h1.stop()


@pytest_twisted.ensureDeferred
async def test_plain_http_to_a_websocket_only_pool_still_gets_426() -> None:
    b1 = start_backend("b1")
    lb = await start_balancer([b1.url])
    try:
        response, body = await _get(f"http://127.0.0.1:{lb.port}/echo")
        assert response.code == 426
        assert body == b"HTTP Upgrade header missing\n"
    finally:
        await lb.stop()
        await b1.stop()


async def _raw_exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes, read until the balancer closes the connection."""
    import asyncio

    async def talk() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(data)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return answer

    return bytes(await aio(talk()))


@pytest_twisted.ensureDeferred
async def test_keep_alive_requests_get_400_431_and_chunked_413() -> None:
    h1 = start_http_backend("h1")
    lb = await start_balancer(
        [f"h1={h1.url}"],
        http__enabled="true",
        http__max_body="100",
        limits__max_header_bytes="2KiB",
        balancing__metric_path="none",
    )
    ok = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
    try:
        # the first request is proxied, the second on the same connection is too big
        big = b"GET /b HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 4000 + b"\r\n\r\n"
        answer = await _raw_exchange(lb.port, ok + big)
        assert answer.startswith(b"HTTP/1.1 200 OK")
        assert b"HTTP/1.1 431 Request Header Fields Too Large" in answer
        assert answer.endswith(b"request header fields too large\n")
        answer = await _raw_exchange(lb.port, ok + b"NONSENSE\r\n\r\n")
        assert b"HTTP/1.1 400 Bad Request" in answer and answer.endswith(b"malformed request\n")
        chunked = (
            b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"50\r\n"
            + b"z" * 80
            + b"\r\n"
            + b"50\r\n"
            + b"z" * 80
            + b"\r\n0\r\n\r\n"
        )
        answer = await _raw_exchange(lb.port, chunked)
        assert answer.startswith(b"HTTP/1.1 413 Request Entity Too Large")
        assert answer.endswith(b"request body too large\n")
        assert [r["uri"] for r in h1.resource.requests] == ["/a", "/a"]  # nothing else
        # and the balancer keeps serving everyone else
        response, body = await _get(f"http://127.0.0.1:{lb.port}/after")
        assert response.code == 200 and body.startswith(b"h1 GET /after")
    finally:
        await lb.stop()
        await h1.stop()


@pytest_twisted.ensureDeferred
async def test_reload_adds_a_pool_and_its_route() -> None:
    a1, b1 = start_backend("a1"), start_backend("b1")
    lb = await start_balancer([f"a1={a1.url}"], balancing__metric_path="none")
    try:
        from wsbalancer.config import load

        config = _yaml(
            f"""
backends: [{{id: a1, url: "{a1.url}"}}]
balancing: {{metric_path: none}}
pools:
  beta: {{backends: [{{id: b1, url: "{b1.url}"}}]}}
routes: [{{path: /beta, pool: beta}}]
"""
        )
        # what SIGHUP runs: read the configuration again, apply it
        lb.service.reload_source = lambda: load(config, environ={})
        changes = lb.service.reload()
        os.unlink(config)
        assert "added pool beta" in changes
        ws = await aio(websockets.connect(lb.ws_url("/beta/x")))
        await aio(ws.close())
        ws = await aio(websockets.connect(lb.ws_url("/else")))
        await aio(ws.close())
        assert [h["path"] for h in b1.backend.handshakes] == ["/beta/x"]
        assert [h["path"] for h in a1.backend.handshakes] == ["/else"]
        assert lb.balancer.lanes["beta"].poller is not None  # polled like the others
        # dropping the pool again: its route goes, its traffic falls to the default pool
        changes = lb.balancer.reconfigure(replace(lb.balancer.config, pools=(), routes=()))
        assert "removed pool beta" in changes
        ws = await aio(websockets.connect(lb.ws_url("/beta/y")))
        await aio(ws.close())
        assert a1.backend.handshakes[-1]["path"] == "/beta/y"
    finally:
        await lb.stop()
        await a1.stop()
        await b1.stop()


@pytest_twisted.ensureDeferred
async def test_header_hash_affinity_keeps_a_client_on_one_backend() -> None:
    h1, h2, h3 = (start_http_backend(f"h{i}") for i in (1, 2, 3))
    lb = await start_balancer(
        [f"{b.id}={b.url}" for b in (h1, h2, h3)],
        affinity__mode="header",
        affinity__key="X-User",
        http__enabled="true",
        balancing__metric_path="none",
    )
    url = f"http://127.0.0.1:{lb.port}/poll"
    try:
        homes = {}
        for user in ("ann", "bob", "cid", "dan", "eve", "fay"):
            served = set()
            for _ in range(3):
                response = await treq.get(url, headers={"X-User": user}, persistent=False)
                await response.content()
                served.update(response.headers.getRawHeaders("x-served-by"))
                assert response.headers.getRawHeaders("set-cookie") is None
            assert len(served) == 1, (user, served)
            homes[user] = served.pop()
        assert len(set(homes.values())) > 1, homes  # users are spread, each one stays put
    finally:
        await lb.stop()
        for backend in (h1, h2, h3):
            await backend.stop()


@pytest_twisted.ensureDeferred
async def test_cookie_is_secure_when_the_client_came_over_tls(tmp_path: Path) -> None:
    import asyncio
    import ssl

    from .tlsutil import CertAuthority

    ca = CertAuthority(tmp_path)
    cert, key = ca.issue(["localhost"], ["127.0.0.1"])
    h1 = start_http_backend("h1")
    lb = await _cookie_balancer(
        h1, listen=f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
    )
    context = ssl.create_default_context(cafile=str(ca.ca_file))

    async def fetch() -> bytes:
        reader, writer = await asyncio.open_connection(
            "localhost", lb.port, ssl=context, server_hostname="localhost"
        )
        writer.write(b"GET /secure HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return answer

    try:
        answer = bytes(await aio(fetch()))
        assert answer.startswith(b"HTTP/1.1 200")
        cookie = [line for line in answer.split(b"\r\n") if line.lower().startswith(b"set-cookie:")]
        assert len(cookie) == 1 and cookie[0].endswith(b"; Secure"), cookie
        assert h1.resource.requests[-1]["headers"]["x-forwarded-proto"] == ["https"]
    finally:
        await lb.stop()
        await h1.stop()


@pytest_twisted.ensureDeferred
async def test_a_client_leaving_mid_request_cancels_the_backend_request() -> None:
    import asyncio

    hung = start_http_backend("hung", hang=True)
    lb = await start_balancer(
        [f"hung={hung.url}"], http__enabled="true", balancing__metric_path="none"
    )
    state = lb.balancer.lanes["default"].pool.backends["hung"]
    try:

        async def open_request() -> Any:
            reader, writer = await asyncio.open_connection("127.0.0.1", lb.port)
            writer.write(b"GET /long-poll HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            return writer

        writer = await aio(open_request())
        await wait_for(lambda: hung.resource.waiting, what="the backend to hold the request")
        assert state.requests == 1
        writer.close()
        # the balancer drops its backend request too: nothing is left counted or open
        await wait_for(lambda: not hung.resource.waiting, what="the backend request to end")
        await wait_for(lambda: state.requests == 0, what="the in-flight count to drop")
        assert state.connect_failures == 0  # the client leaving is not the backend's fault
    finally:
        await lb.stop()
        await hung.stop()
