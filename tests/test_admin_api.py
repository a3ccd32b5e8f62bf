"""Integration: the admin REST API changes what really happens to sessions."""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
import treq
import websockets

from .helpers import aio, recv, start_backend, start_balancer, wait_for

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def call(
    lb: Any, method: str, path: str, body: Any = None, headers: dict[str, str] | None = AUTH
) -> tuple[int, Any]:
    kwargs: dict[str, Any] = {"headers": headers or {}, "persistent": False}
    if body is not None:
        kwargs["json"] = body  # (sends Content-Type: application/json, which the API requires)
    response = await treq.request(method, lb.admin_url(path), **kwargs)
    return response.code, json.loads(await response.content())


async def _setup(**settings: str) -> tuple[list[Any], Any]:
    backends = [start_backend(f"b{i}") for i in range(2)]
    lb = await start_balancer(
        [f"b{i}={b.url}" for i, b in enumerate(backends)], admin__token=TOKEN, **settings
    )
    return backends, lb


async def _teardown(backends: list[Any], lb: Any) -> None:
    await lb.stop()
    for b in backends:
        await b.stop()


@pytest_twisted.ensureDeferred
async def test_mutations_need_the_token_and_reads_do_unless_open() -> None:
    backends, lb = await _setup()
    try:
        assert (await call(lb, "POST", "/api/backends/b0/drain", headers=None))[0] == 401
        wrong = {"Authorization": "Bearer nope"}
        status, doc = await call(lb, "POST", "/api/backends/b0/drain", headers=wrong)
        assert (status, doc["error"]) == (401, "unauthorized")
        assert (await call(lb, "GET", "/api/backends", headers=None))[0] == 401
        status, doc = await call(lb, "POST", "/api/backends/b0/drain")
        assert status == 200 and doc["draining"] is True
        assert (await call(lb, "GET", "/api/openapi.json", headers=None))[0] == 200
    finally:
        await _teardown(backends, lb)
    open_reads = await start_balancer([backends[0].url], admin__open_reads="true")
    try:
        assert (await call(open_reads, "GET", "/api/backends", headers=None))[0] == 200
        # No token configured: the API stays read-only.
        assert (await call(open_reads, "POST", "/api/frontends/pause", headers=None))[0] == 403
    finally:
        await open_reads.stop()


@pytest_twisted.ensureDeferred
async def test_drain_really_stops_new_sessions_on_that_backend_and_keeps_old_ones() -> None:
    backends, lb = await _setup()
    try:
        old = [await aio(websockets.connect(lb.ws_url())) for _ in range(2)]  # one on each
        assert [b.count for b in backends] == [1, 1]
        assert (await call(lb, "POST", "/api/backends/b0/drain"))[0] == 200
        new = [await aio(websockets.connect(lb.ws_url())) for _ in range(4)]
        assert [b.count for b in backends] == [1, 5]
        for ws in old:
            await aio(ws.send("alive"))
            assert await recv(ws) == "alive"
        status, doc = await call(lb, "POST", "/api/backends/b0/enable")
        assert status == 200 and doc["usable"] is True
        for ws in old + new:
            await aio(ws.close())
    finally:
        await _teardown(backends, lb)


@pytest_twisted.ensureDeferred
async def test_terminate_closes_the_session_with_the_given_code() -> None:
    backends, lb = await _setup()
    try:
        ws = await aio(websockets.connect(lb.ws_url()))
        status, doc = await call(lb, "GET", "/api/sessions")
        (session,) = doc["sessions"]
        assert session["path"] == "/echo" and session["backend"] in ("b0", "b1")
        status, doc = await call(
            lb, "DELETE", f"/api/sessions/{session['id']}?code=4001&reason=bye"
        )
        assert status == 200
        await aio(ws.wait_closed())
        assert (ws.close_code, ws.close_reason) == (4001, "bye")
        assert (await call(lb, "DELETE", f"/api/sessions/{session['id']}"))[0] == 404
        bad = await call(lb, "DELETE", "/api/sessions/1?code=1006")
        assert bad[0] in (400, 404)
    finally:
        await _teardown(backends, lb)


@pytest_twisted.ensureDeferred
async def test_fail_over_moves_a_session_and_the_client_stays() -> None:
    backends, lb = await _setup()
    try:
        ws = await aio(websockets.connect(lb.ws_url()))
        (session,) = (await call(lb, "GET", "/api/sessions"))[1]["sessions"]
        status, doc = await call(lb, "POST", f"/api/sessions/{session['id']}/failover")
        assert status == 202 and doc["from"] == session["backend"]
        live = lb.balancer.sessions[session["id"]]
        await wait_for(lambda: live.reconnects == 1 and not live.reconnecting)
        assert live.backend_state.id != session["backend"]
        await aio(ws.send("after the move"))
        assert await recv(ws) == "after the move"
        await aio(ws.close())
    finally:
        await _teardown(backends, lb)


@pytest_twisted.ensureDeferred
async def test_add_weight_remove_and_errors() -> None:
    backends, lb = await _setup()
    extra = start_backend("extra")
    try:
        status, doc = await call(lb, "POST", "/api/backends", {"id": "x", "url": extra.url})
        assert status == 201 and doc["id"] == "x"
        assert (await call(lb, "POST", "/api/backends", {"id": "x", "url": extra.url}))[0] == 409
        status, doc = await call(lb, "POST", "/api/backends", {"url": "ftp://nope"})
        assert status == 400 and "url" in doc["reason"]
        assert (await call(lb, "POST", "/api/backends", [1, 2]))[0] == 400
        status, doc = await call(lb, "PATCH", "/api/backends/x", {"weight": 3})
        assert status == 200 and doc["weight"] == 3
        assert (await call(lb, "PATCH", "/api/backends/x", {"weight": 0}))[0] == 400
        assert (await call(lb, "GET", "/api/backends/nope"))[0] == 404
        assert (await call(lb, "PUT", "/api/backends/x"))[0] == 405
        # A query value given empty is refused, not read as the default.
        for bad in ("/api/backends/x?sessions=", "/api/backends/x/evacuate?pace="):
            status, doc = await call(lb, "POST" if "evacuate" in bad else "DELETE", bad)
            assert (status, doc["error"]) == (400, "bad_parameter"), bad
        status, doc = await call(lb, "DELETE", "/api/backends/x?sessions=failover")
        assert status == 200
        ids = [b["id"] for b in (await call(lb, "GET", "/api/backends"))[1]["backends"]]
        assert ids == ["b0", "b1"]
    finally:
        await extra.stop()
        await _teardown(backends, lb)


@pytest_twisted.ensureDeferred
async def test_pause_stops_accepting_and_resume_accepts_again() -> None:
    backends, lb = await _setup()
    try:
        kept = await aio(websockets.connect(lb.ws_url()))
        assert (await call(lb, "POST", "/api/frontends/pause"))[1] == {"paused": True}
        with pytest.raises(Exception):  # noqa: B017 - refused or timed out: not accepted
            await aio(websockets.connect(lb.ws_url(), open_timeout=1))
        await aio(kept.send("still relayed"))
        assert await recv(kept) == "still relayed"
        assert (await call(lb, "POST", "/api/frontends/resume"))[1] == {"paused": False}
        again = await aio(websockets.connect(lb.ws_url()))
        await aio(again.close())
        await aio(kept.close())
    finally:
        await _teardown(backends, lb)


@pytest_twisted.ensureDeferred
async def test_prometheus_families_move_when_clients_connect() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    async def scrape() -> dict[str, float]:
        response = await treq.get(lb.admin_url("/metrics"), persistent=False)
        text = (await response.content()).decode()
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = sample.name + ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                values[key] = sample.value
        return values

    backends, lb = await _setup()
    try:
        before = await scrape()
        ws = await aio(websockets.connect(lb.ws_url()))
        await aio(ws.send("count me"))
        await recv(ws)
        during = await scrape()
        active = [v for k, v in during.items() if k.startswith("wsbalancer_sessions_active")]
        assert sum(active) == 1
        sent = "wsbalancer_messages_totaldirection=client_to_backend"
        assert during[sent] == before.get(sent, 0) + 1
        assert any(
            k.startswith("wsbalancer_handshakes_total") and "outcome=ok" in k for k in during
        )
        assert any(k.startswith("wsbalancer_picks_total") and v >= 1 for k, v in during.items())
        await aio(ws.close())
        await wait_for(lambda: not lb.balancer.sessions)
        after = await scrape()
        closed = [
            v
            for k, v in after.items()
            if k.startswith("wsbalancer_sessions_closed_total") and "code=1000" in k
        ]
        assert sum(closed) == 1
        for family in (
            "wsbalancer_poll_seconds",
            "wsbalancer_backend_up",
            "wsbalancer_backend_breaker",
            "wsbalancer_handshake_seconds",
        ):
            assert any(k.startswith(family) for k in after), family
    finally:
        await _teardown(backends, lb)
