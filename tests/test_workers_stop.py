"""Stopping a balancer with workers the way systemd does: SIGTERM to every process of the
service's control group at once, so each worker hears it twice (directly and from the master)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from websockets.sync.client import connect

from wsbalancer.devtools.processes import (
    free_port,
    processes,
    spawn_balancer,
    spawn_demo_backend,
    wait_until,
)

from .test_workers import admin


def test_sigterm_to_the_whole_group_stops_every_process_without_a_traceback(
    tmp_path: Path,
) -> None:
    log_path = tmp_path / "balancer.log"
    with processes() as children, open(log_path, "w") as log:
        backend = free_port()
        spawn_demo_backend(children, backend, "b0")
        port, admin_port = free_port(), free_port()
        balancer = spawn_balancer(
            children,
            port,
            admin_port,
            [f"b0=ws://127.0.0.1:{backend}"],
            ["workers=2", "log.library_level=info"],  # Twisted's own lines, below
            output=log,
        )
        wait_until(lambda: len(admin(admin_port, "/balancer-metrics")["workers"]) == 2, what="2")
        with connect(f"ws://127.0.0.1:{port}/echo", open_timeout=10) as ws:
            ws.send("hello")
            assert ws.recv(timeout=10) == "hello"
        workers = [
            int(p)
            for p in Path(f"/proc/{balancer.pid}/task/{balancer.pid}/children").read_text().split()
        ]
        assert len(workers) == 1  # the master is the first process, plus one worker
        for pid in [balancer.pid, *workers]:
            os.kill(pid, signal.SIGTERM)
        assert balancer.wait(30) in (0, -signal.SIGTERM)
        for pid in workers:
            wait_until(
                lambda pid=pid: not os.path.exists(f"/proc/{pid}"), what="the worker to exit"
            )
    text = log_path.read_text()
    assert "Main loop terminated" in text
    assert "Traceback" not in text, text
