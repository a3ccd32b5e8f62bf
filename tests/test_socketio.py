"""The real thing: Socket.IO 4 servers (Node.js, from npm) behind the balancer, real
socket.io-client sessions with default transports (HTTP long-polling first, then the upgrade
to WebSocket), and the same through a headless Chromium page.

Socket.IO needs every request of a session on the server that created it; the servers count
requests for sessions they do not know, which is what breaks without affinity."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from wsbalancer.devtools.processes import free_port, processes, spawn_balancer, wait_port

pytestmark = pytest.mark.slow  # processes, browsers or the Autobahn suite: not in the fast tier

ROOT = Path(__file__).resolve().parent.parent
SOCKETIO_DIR = ROOT / "tests" / "socketio"
BROWSER_DIR = ROOT / "tests" / "browser"
CLIENTS = 12


def _npm_install(directory: Path, package: str) -> None:
    assert shutil.which("node") and shutil.which("npm"), "node and npm are needed"
    if not (directory / "node_modules" / package).exists():
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--silent"],
            cwd=directory,
            check=True,
            timeout=600,
        )


@contextmanager
def socketio_behind_balancer(settings: list[str]) -> Iterator[tuple[int, list[int]]]:
    """Three Socket.IO servers (s1, s2, s3) and a balancer (twistd) in front of them."""
    _npm_install(SOCKETIO_DIR, "socket.io")
    port, admin = free_port(), free_port()
    server_ports = [free_port() for _ in range(3)]
    with processes() as children:
        for index, server_port in enumerate(server_ports, 1):
            child = subprocess.Popen(
                ["node", str(SOCKETIO_DIR / "server.mjs"), str(server_port), f"s{index}"],
                stdout=subprocess.DEVNULL,
            )
            children.append(child)
            wait_port(server_port, process=child)
        spawn_balancer(
            children,
            port,
            admin,
            [f"s{i}=ws://127.0.0.1:{p}" for i, p in enumerate(server_ports, 1)],
            ["http.enabled=true", "balancing.metric_path=none", "log.level=warn", *settings],
        )
        yield port, server_ports


def run_clients(port: int) -> list[dict[str, Any]]:
    """Run the socket.io-client sessions; one report per session."""
    result = subprocess.run(
        ["node", str(SOCKETIO_DIR / "clients.mjs"), f"http://127.0.0.1:{port}", str(CLIENTS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    reports: list[dict[str, Any]] = json.loads(result.stdout.strip().splitlines()[-1])
    return reports


def server_stats(server_ports: list[int]) -> list[dict[str, Any]]:
    """What each Socket.IO server saw (read directly, not through the balancer)."""
    stats = []
    for server_port in server_ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{server_port}/stats", timeout=10) as r:
            stats.append(json.loads(r.read()))
    return stats


def check_sessions(reports: list[dict[str, Any]], stats: list[dict[str, Any]]) -> Counter[str]:
    """Every session connected, had its events acknowledged, upgraded to WebSocket and stayed
    on one server; the sessions spread within one of even. Returns sessions per server."""
    assert len(reports) == CLIENTS
    for report in reports:
        assert report["error"] is None, report
        assert report["connected"] and report["upgraded"], report
        assert [ack["n"] for ack in report["acks"]] == [1, 2, 3], report
        servers = {ack["server"] for ack in report["acks"]}
        assert len(servers) == 1, report  # acknowledged by one server throughout
        assert report["acks"][-1]["transport"] == "websocket", report
    for server in stats:
        # no request of a session reached a server that did not create it
        assert server["foreign"] == 0, server
        for transports in server["sessions"].values():
            assert set(transports) == {"polling", "websocket"}, server
    spread = Counter(report["acks"][0]["server"] for report in reports)
    assert sum(len(server["sessions"]) for server in stats) == CLIENTS
    assert max(spread.values()) - min(spread.get(f"s{i}", 0) for i in (1, 2, 3)) <= 1, spread
    return spread


def test_socketio_sessions_stick_upgrade_and_spread_evenly_with_cookie_affinity() -> None:
    with socketio_behind_balancer(["affinity.mode=cookie"]) as (port, server_ports):
        reports = run_clients(port)
        stats = server_stats(server_ports)
    spread = check_sessions(reports, stats)
    assert sorted(spread.values()) == [4, 4, 4]
    (ROOT / "test-output" / "socketio-spread.json").write_text(json.dumps(spread))


def test_socketio_without_affinity_fails_as_it_must() -> None:
    # The same clients and check with affinity off: proof that the check above can fail.
    with socketio_behind_balancer([]) as (port, server_ports):
        reports = run_clients(port)
        stats = server_stats(server_ports)
    with pytest.raises(AssertionError):
        check_sessions(reports, stats)
    working = [r for r in reports if r["error"] is None and r["upgraded"]]
    assert len(working) < CLIENTS / 2, working
    # and why: polling requests reached servers that did not know their session
    assert sum(server["foreign"] for server in stats) > 0


def test_socketio_in_headless_chromium_through_the_balancer() -> None:
    assert Path("/usr/bin/chromium").exists(), "Debian's chromium is needed"
    _npm_install(BROWSER_DIR, "playwright-core")
    with socketio_behind_balancer(["affinity.mode=cookie"]) as (port, server_ports):
        result = subprocess.run(
            [
                "node",
                str(BROWSER_DIR / "socketio.mjs"),
                f"http://127.0.0.1:{port}/",
                str(ROOT / "test-output" / "socketio-chromium.png"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        stats = server_stats(server_ports)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["error"] is None, report
    assert report["transport"] == "websocket"
    assert [ack["n"] for ack in report["acks"]] == [1, 2, 3]
    assert len({ack["server"] for ack in report["acks"]}) == 1
    # the page itself came through the balancer too, from the same server (pinned)
    assert report["pageServer"] == report["acks"][0]["server"]
    assert report["cookieVisible"] is False  # HttpOnly: scripts cannot read it
    assert sum(server["foreign"] for server in stats) == 0
