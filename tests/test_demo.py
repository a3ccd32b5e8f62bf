"""The README's demo command, run as a newcomer would, then 60 clients through it."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

from websockets.sync.client import connect

from wsbalancer.devtools.processes import free_port, processes, wait_port

DEMO = str(Path(sys.executable).parent / "wsbalancer-demo")


def _distribution(admin: int) -> list[int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/balancer-metrics", timeout=10) as r:
        doc = json.load(r)
    return [s["connections"] for s in doc["services"]]


def test_demo_starts_three_backends_and_spreads_sixty_clients_evenly() -> None:
    port, admin, page = free_port(), free_port(), free_port()
    backends = [free_port() for _ in range(3)]
    with processes() as children:
        demo = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "wsbalancer-demo"),
                "--port",
                str(port),
                "--admin-port",
                str(admin),
                "--page-port",
                str(page),
                "--backend-ports",
                ",".join(map(str, backends)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        children.append(demo)
        for p in (port, admin, page):
            wait_port(p, process=demo)
        with urllib.request.urlopen(f"http://127.0.0.1:{page}/", timeout=10) as r:
            assert b"new WebSocket(url)" in r.read()

        with ExitStack() as stack:
            sequential = [
                stack.enter_context(connect(f"ws://127.0.0.1:{port}/chat")) for _ in range(60)
            ]
            greetings = [ws.recv(timeout=10) for ws in sequential]
            assert {g: greetings.count(g) for g in greetings} == {
                f"connected to backend-{i}": 20 for i in (1, 2, 3)
            }
            assert _distribution(admin) == [20, 20, 20]

        with ExitStack() as stack, ThreadPoolExecutor(60) as pool:
            burst = list(pool.map(lambda _: connect(f"ws://127.0.0.1:{port}/echo"), range(60)))
            for ws in burst:
                stack.enter_context(ws)
            counts = _distribution(admin)
            assert sum(counts) == 60 and all(abs(n - 20) <= 2 for n in counts), counts
