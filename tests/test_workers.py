"""Worker processes (`workers: 2`) under twistd, with real backends and clients: sessions
spread over the processes, admin changes reach every worker (a restarted one too), one
session list and one set of metrics, SIGTERM drains them all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from wsbalancer.devtools.processes import (
    free_port,
    processes,
    spawn_balancer,
    spawn_demo_backend,
    wait_until,
)

TOKEN = "worker-test-token"


def admin(port: int, path: str, method: str = "GET") -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        method=method,
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
    return json.loads(body) if path != "/metrics" else body.decode()


def ready_workers(port: int) -> list[dict[str, Any]]:
    doc = admin(port, "/balancer-metrics")
    return [w for w in doc["workers"] if w["index"] == 0 or w.get("sessions") is not None]


class Setup:
    def __init__(self, children: list[subprocess.Popen[Any]]) -> None:
        self.backend_ports = [free_port(), free_port()]
        for n, port in enumerate(self.backend_ports):
            spawn_demo_backend(children, port, f"b{n}")
        self.port, self.admin = free_port(), free_port()
        self.balancer = spawn_balancer(
            children,
            self.port,
            self.admin,
            [f"b{n}=ws://127.0.0.1:{p}" for n, p in enumerate(self.backend_ports)],
            ["workers=2", f"admin.token={TOKEN}", "balancing.poll_interval=0.2s"],
        )
        # Both processes answer through the master once the worker is ready.
        wait_until(lambda: len(admin(self.admin, "/balancer-metrics")["workers"]) == 2, what="2")

    def open(self, n: int) -> list[ClientConnection]:
        sockets = []
        for i in range(n):
            ws = connect(f"ws://127.0.0.1:{self.port}/echo", open_timeout=10, legacy=True)
            ws.send(f"m{i}")
            assert ws.recv(timeout=10) == f"m{i}"
            sockets.append(ws)
        return sockets

    def spread(self, sockets: list[ClientConnection], limit: int = 200) -> Any:
        """Open more sessions until both processes hold one, and return the merged view.

        Which process accepts is the kernel's choice; on a loaded machine one of them can
        win every accept for a while, so a fixed number of connections is not enough."""
        while True:
            doc = admin(self.admin, "/balancer-metrics")
            per_worker = [w.get("sessions") or 0 for w in doc["workers"]]
            if len(per_worker) == 2 and all(per_worker):
                return doc
            assert len(sockets) < limit, f"{len(sockets)} sessions, all on one process"
            sockets.extend(self.open(1))

    def worker_pids(self) -> list[int]:
        out = subprocess.run(
            ["pgrep", "-P", str(self.balancer.pid)], capture_output=True, text=True
        ).stdout
        return [int(p) for p in out.split()]


@pytest.fixture
def setup() -> Iterator[Setup]:
    with processes() as children:
        yield Setup(children)


def _close(sockets: list[ClientConnection]) -> None:
    for ws in sockets:
        ws.close()


def test_sessions_spread_over_processes_and_metrics_merge(setup: Setup) -> None:
    sockets = setup.open(40)
    try:
        doc = setup.spread(sockets)  # both processes relay
        total = len(sockets)
        per_worker = [w["sessions"] for w in doc["workers"]]
        assert sum(per_worker) == doc["sessions"] == total
        assert sum(b["localSessions"] for b in doc["backends"]) == total
        # The admin API's backend views count every process's sessions too.
        listed_backends = admin(setup.admin, "/api/backends")["backends"]
        assert sum(b["localSessions"] for b in listed_backends) == total
        assert sum(b["picks"] for b in listed_backends) >= total
        one = admin(setup.admin, "/api/backends/b1")
        assert one["localSessions"] == next(
            b["localSessions"] for b in listed_backends if b["id"] == "b1"
        )
        metrics = admin(setup.admin, "/metrics")
        active = [
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("wsbalancer_sessions_active{")
        ]
        assert sum(active) == total
        listed = admin(setup.admin, "/api/sessions")["sessions"]
        assert len(listed) == total and len({s["id"] for s in listed}) == total
    finally:
        _close(sockets)


def test_a_workers_session_is_terminated_through_the_master(setup: Setup) -> None:
    sockets = setup.open(20)
    try:
        setup.spread(sockets)
        listed = admin(setup.admin, "/api/sessions")["sessions"]
        theirs = [s["id"] for s in listed if s["id"] >= 10**12]
        assert theirs, "no session on the worker"
        one = admin(setup.admin, f"/api/sessions/{theirs[0]}")
        assert one["id"] == theirs[0]
        admin(setup.admin, f"/api/sessions/{theirs[0]}?code=4001&reason=bye", method="DELETE")
        closed = []
        for ws in sockets:
            try:
                ws.send("ping")
                ws.recv(timeout=0.5)
            except (ConnectionClosed, TimeoutError):
                closed.append(ws.close_code)
        assert closed == [4001]
    finally:
        _close(sockets)


def test_admin_changes_reach_every_worker_and_a_restarted_one(setup: Setup) -> None:
    admin(setup.admin, "/api/backends/b0/drain", method="POST")
    sockets = setup.open(20)
    try:
        doc = setup.spread(sockets)
        counts = {b["id"]: b["localSessions"] for b in doc["backends"]}
        assert counts == {"b0": 0, "b1": len(sockets)}  # the drain held in both processes
        (worker,) = setup.worker_pids()
        os.kill(worker, signal.SIGKILL)
        wait_until(
            lambda: setup.worker_pids() and setup.worker_pids() != [worker],
            what="the worker to be restarted",
        )
        wait_until(lambda: len(admin(setup.admin, "/balancer-metrics")["workers"]) == 2)
        more = setup.open(20)
        try:
            doc = setup.spread(more)  # the restarted worker takes connections again
            counts = {b["id"]: b["localSessions"] for b in doc["backends"]}
            # The restarted worker was told about the drain before its first connection.
            assert counts["b0"] == 0
        finally:
            _close(more)
    finally:
        _close(sockets)


def test_sigterm_drains_every_worker(setup: Setup) -> None:
    sockets = setup.open(10)
    pids = setup.worker_pids()
    setup.balancer.send_signal(signal.SIGTERM)
    codes = []
    for ws in sockets:
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=30)
        codes.append(ws.close_code)
    assert codes == [1001] * 10
    assert setup.balancer.wait(30) in (0, -signal.SIGTERM)  # twistd re-raises the signal
    for pid in pids:
        wait_until(lambda pid=pid: not os.path.exists(f"/proc/{pid}"), what="the worker to exit")


def test_an_affinity_cookie_from_one_process_is_honoured_by_the_other() -> None:
    with processes() as children:
        ports = [free_port() for _ in range(3)]
        for n, port in enumerate(ports):
            spawn_demo_backend(children, port, f"b{n}")
        port, admin_port = free_port(), free_port()
        spawn_balancer(
            children,
            port,
            admin_port,
            [f"b{n}=ws://127.0.0.1:{p}" for n, p in enumerate(ports)],
            ["workers=2", "affinity.mode=cookie"],  # no affinity.secret: a generated key
        )
        wait_until(lambda: len(admin(admin_port, "/balancer-metrics")["workers"]) == 2)
        first = connect(f"ws://127.0.0.1:{port}/echo", open_timeout=10)
        cookie = first.response.headers["Set-Cookie"].split(";")[0]
        sockets = [first]
        try:
            while True:  # until both processes took some (which one accepts is the kernel's)
                sockets.append(
                    connect(
                        f"ws://127.0.0.1:{port}/echo",
                        open_timeout=10,
                        additional_headers={"Cookie": cookie},
                    )
                )
                doc = admin(admin_port, "/balancer-metrics")
                if len(sockets) > 20 and all(w.get("sessions") for w in doc["workers"]):
                    break
                assert len(sockets) < 200, "every session on one process"
            counts = [b["localSessions"] for b in doc["backends"]]
            # every one pinned where the first went
            assert sorted(counts) == [0, 0, len(sockets)], counts
        finally:
            _close(sockets)
