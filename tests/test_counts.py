"""Integration: what a backend says (or does not say) about its count, for real: a metric
server on 127.0.0.1 answering absurd reports, and plain WebSocket servers with no count
endpoint at all, while a bystander session keeps being served."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
import websockets
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site

from .helpers import aio, get_json, recv, start_backend, start_balancer, wait_for


class ReportServer(Resource):
    """A metric endpoint answering whatever body the test sets, counting the requests."""

    isLeaf = True

    def __init__(self, body: bytes) -> None:
        super().__init__()
        self.body = body
        self.requests = 0

    def render_GET(self, request: Any) -> bytes:
        self.requests += 1
        request.setHeader(b"content-type", b"application/json")
        return self.body


def _report(count: Any, **fields: Any) -> bytes:
    return json.dumps({"agentsConnections": count, **fields}).encode()


async def _echoes(ws: Any, text: str) -> None:
    await aio(ws.send(text))
    assert await recv(ws) == text


async def _new_session_echoes(lb: Any) -> str:
    """A new client is served; returns the id of the backend it was given."""
    before = set(lb.balancer.sessions)
    ws = await aio(websockets.connect(lb.ws_url()))
    try:
        await _echoes(ws, "new")
        (session,) = [s for k, s in lb.balancer.sessions.items() if k not in before]
        return str(session.backend_state.id)
    finally:
        await aio(ws.close())


async def _admin_answers(lb: Any) -> tuple[dict[str, Any], str]:
    """/balancer-metrics (parsed) and /metrics (text), both of which must answer 200."""
    code, document = await get_json(lb.admin_url("/balancer-metrics"))
    assert code == 200
    response = await treq.get(lb.admin_url("/metrics"), persistent=False)
    text = (await response.content()).decode()
    assert response.code == 200, text
    return document, text


# A confirmed backend keeps being served through fall - 1 bad reports: these are what reach
# picking, /balancer-metrics and /metrics if the poller lets them through.
ABSURD_REPORTS = {
    "401-digit count": b'{"agentsConnections": 1' + b"0" * 400 + b"}",
    "count past 2^53": _report(2**53 + 1),
    "negative 401-digit count": b'{"agentsConnections": -1' + b"0" * 400 + b"}",
    "NaN": b'{"agentsConnections": NaN}',
    "Infinity": b'{"agentsConnections": Infinity}',
    "1e400": b'{"agentsConnections": 1e400}',
    "float": _report(2.5),
    "boolean": _report(True),
}


@pytest.mark.parametrize("case", sorted(ABSURD_REPORTS))
@pytest_twisted.ensureDeferred
async def test_an_absurd_count_is_an_error_and_fails_neither_picking_nor_an_exporter(
    case: str, tmp_path: Path
) -> None:
    a, b = start_backend("a"), start_backend("b")
    reports = ReportServer(_report(0, podName="pod-a"))
    site = reactor.listenTCP(0, Site(reports), interface="127.0.0.1")
    metric = f"http://127.0.0.1:{site.getHost().port}/metric"
    config = tmp_path / "lb.yaml"
    config.write_text(
        f"backends:\n  - {{id: a, url: '{a.url}', metric: '{metric}'}}\n"
        f"  - {{id: b, url: '{b.url}'}}\n"
    )
    lb = await start_balancer([], str(config), health__fall="1000")
    try:
        state = lb.balancer.pool.backends["a"]
        await wait_for(lambda: state.reported == 0, what="a's first report")
        bystander = await aio(websockets.connect(lb.ws_url()))
        await _echoes(bystander, "before")
        reports.body = ABSURD_REPORTS[case]
        seen = reports.requests
        # Two requests: the first one's answer has been applied when the second goes out.
        await wait_for(lambda: reports.requests >= seen + 2, what="the bad report")
        for _ in range(4):  # new sessions are served (whichever backend they get)
            assert await _new_session_echoes(lb) in ("a", "b")
        document, metrics = await _admin_answers(lb)
        assert state.stale is True
        assert state.last_poll_error is not None and "agentsConnections" in state.last_poll_error
        assert len(state.last_poll_error) < 200  # says what is wrong, does not repeat it
        assert state.reported == 0  # the last good count, never the absurd one
        (row,) = [r for r in document["backends"] if r["id"] == "a"]
        assert (row["stale"], row["reportedConnections"]) == (True, 0)
        assert 'wsbalancer_poll_errors_total{backend="a"}' in metrics
        await _echoes(bystander, "after")
        await aio(bystander.close())
    finally:
        await lb.stop()
        await site.stopListening()
        await a.stop()
        await b.stop()


# --- plain WebSocket backends: no count endpoint ---------------------------------------------


class _PlainServer:
    """An ordinary Autobahn echo server on 127.0.0.1:0, no /metric; `web_status=False` makes
    it answer a plain GET with 426 (as `ws` does) instead of Autobahn's status page."""

    def __init__(self, web_status: bool = True) -> None:
        from twisted.protocols.policies import WrappingFactory

        from wsbalancer.devtools.demo.plain_echo import plain_echo_factory

        factory = plain_echo_factory()
        factory.setProtocolOptions(webStatus=web_status)
        self.tracker = WrappingFactory(factory)
        self.port = reactor.listenTCP(0, self.tracker, interface="127.0.0.1")
        self.url = f"ws://127.0.0.1:{self.port.getHost().port}"
        self.id = self.url[len("ws://") :]

    async def stop(self) -> None:
        stopped = self.port.stopListening()
        if stopped is not None:
            await stopped
        for connection in list(self.tracker.protocols):
            connection.transport.abortConnection()


@pytest_twisted.ensureDeferred
async def test_plain_websocket_backends_named_only_by_be_urls_are_served() -> None:
    from twisted.logger import formatEvent, globalLogPublisher

    from wsbalancer.config import load
    from wsbalancer.service.tap import build_service

    page, upgrade_required = _PlainServer(), _PlainServer(web_status=False)
    warnings: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if str(event.get("log_namespace")).startswith(
            "wsbalancer.upstream.poller"
        ) and "count" in formatEvent(event):
            warnings.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    config = load(
        None,
        environ={"BE_URLS": f"{page.url},{upgrade_required.url}"},
        overrides=[
            ("listen", "tcp:0:interface=127.0.0.1", "test"),
            ("admin.listen", "tcp:0:interface=127.0.0.1", "test"),
            ("balancing.poll_interval", "0.1s", "test"),
            ("shutdown.drain_period", "0s", "test"),
        ],
    )
    service = build_service(config, reactor)
    service.startService()
    from .helpers import RunningBalancer

    assert service.admin is not None
    lb = RunningBalancer(
        service,
        (await service.listeners[0].listening()).getHost().port,
        (await service.admin.listening()).getHost().port,
    )
    held: list[Any] = []
    try:
        states = [lb.balancer.pool.backends[s.id] for s in (page, upgrade_required)]
        await wait_for(lambda: all(s.last_poll_at for s in states), what="the first polls")
        bystander = await aio(websockets.connect(lb.ws_url()))
        await _echoes(bystander, "bystander")
        held = [await aio(websockets.connect(lb.ws_url())) for _ in range(5)]
        for ws in held:
            await _echoes(ws, "held")
        # Balanced on this instance's own sessions: 6 split 3 and 3.
        assert sorted(s.local_sessions for s in states) == [3, 3]
        await wait_for(lambda: all(s.poll_successes >= 5 for s in states), what="more polls")
        for s in states:
            assert (s.health, s.stale, s.poll_failures) == ("up", True, 0)
        assert states[0].last_poll_error == "no count endpoint (the answer is not JSON)"
        assert states[1].last_poll_error == "no count endpoint (HTTP 426)"
        assert len(warnings) == 2, warnings  # one per backend, not one per poll
        document, metrics = await _admin_answers(lb)
        for row in document["backends"]:
            assert (row["healthy"], row["stale"], row["connections"]) == (True, True, 3)
        assert "wsbalancer_poll_errors_total{" not in metrics  # not an error
        # What really shows a backend is dead still does: its port refusing.
        with_bystander = next(iter(lb.balancer.sessions.values())).backend_state
        victim = next(s for s in (page, upgrade_required) if s.id != with_bystander.id)
        victim_state = lb.balancer.pool.backends[victim.id]
        await victim.stop()
        await wait_for(lambda: victim_state.health == "down", what="the dead one to go down")
        assert victim_state.last_poll_error is not None
        assert victim_state.last_poll_error.startswith("ConnectionRefusedError")
        assert await _new_session_echoes(lb) == with_bystander.id
        await _echoes(bystander, "still here")
        await aio(bystander.close())
    finally:
        globalLogPublisher.removeObserver(observe)
        for ws in held:
            await aio(ws.close())
        await lb.stop()
        await page.stop()
        await upgrade_required.stop()


def test_a_ws_echo_server_named_by_be_urls_serves_clients_through_twistd(tmp_path: Path) -> None:
    import shutil
    import subprocess
    import urllib.request

    from websockets.sync.client import connect

    from wsbalancer.devtools.processes import (
        clean_environment,
        free_port,
        processes,
        spawn_balancer,
        wait_port,
        wait_until,
    )

    node_dir = Path(__file__).resolve().parent / "socketio"
    assert shutil.which("node") and shutil.which("npm"), "node and npm are needed"
    if not (node_dir / "node_modules" / "ws").exists():
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent"], cwd=node_dir,
                       check=True, timeout=600)  # fmt: skip
    ws_port, port, admin = free_port(), free_port(), free_port()
    log_path = tmp_path / "balancer.log"

    def backend_row() -> dict[str, Any]:
        url = f"http://127.0.0.1:{admin}/balancer-metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            rows: list[dict[str, Any]] = json.loads(answer.read())["backends"]
        return rows[0]

    with processes() as children, open(log_path, "w") as log:
        server = subprocess.Popen(["node", str(node_dir / "plain_ws.mjs"), str(ws_port)])
        children.append(server)
        wait_port(ws_port, process=server)
        spawn_balancer(
            children,
            port,
            admin,
            [],  # named by BE_URLS alone, as for the seed Go balancer
            ["balancing.poll_interval=0.2s"],
            env=clean_environment(BE_URLS=f"ws://127.0.0.1:{ws_port}"),
            output=log,
        )
        wait_until(lambda: backend_row()["lastPoll"], what="the first poll")
        with connect(f"ws://127.0.0.1:{port}/echo", open_timeout=10) as bystander:
            bystander.send("bystander")
            assert bystander.recv(timeout=10) == "bystander"
            for n in range(3):
                with connect(f"ws://127.0.0.1:{port}/room/{n}", open_timeout=10) as ws:
                    ws.send(b"\x00binary")
                    assert ws.recv(timeout=10) == b"\x00binary"
            first = backend_row()["lastPoll"]
            wait_until(lambda: backend_row()["lastPoll"] != first, what="later polls")
            row = backend_row()
            assert (row["healthy"], row["stale"]) == (True, True)
            assert row["lastPollError"] == "no count endpoint (HTTP 426)"
            bystander.send("still here")
            assert bystander.recv(timeout=10) == "still here"
    warnings = [line for line in log_path.read_text().splitlines() if "no count endpoint" in line]
    assert len(warnings) == 1, warnings
