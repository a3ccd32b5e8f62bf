"""The admin dashboard in a real browser (Debian's chromium driven by playwright-core)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from wsbalancer.processes import free_port, processes, spawn_balancer, spawn_demo_backend

from .test_browser import BROWSER_DIR, _node_modules

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
EVIL = "<img src=x onerror=alert(1)>"


def test_dashboard_shows_backends_updates_live_and_escapes_backend_strings() -> None:
    _node_modules()
    backend_ports = [free_port() for _ in range(3)]
    port, admin = free_port(), free_port()
    screenshot = ROOT / "test-output" / "dashboard.png"
    with processes() as children:
        for i, p in enumerate(backend_ports):
            env = dict(os.environ, POD_NAME=EVIL if i == 2 else f"pod-{i}")
            spawn_demo_backend(children, p, f"backend-{i}", env=env)
        backends = [f"backend-{i}=ws://127.0.0.1:{p}" for i, p in enumerate(backend_ports)]
        spawn_balancer(children, port, admin, backends, ["balancing.poll_interval=0.3s"])
        result = subprocess.run(
            [
                "node",
                str(BROWSER_DIR / "dashboard.mjs"),
                f"http://127.0.0.1:{admin}/dashboard",
                f"ws://127.0.0.1:{port}/echo",
                str(screenshot),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["backends"] == ["backend-0", "backend-1", "backend-2"]
    assert report["after"] == report["before"] + 1  # the new session showed up by itself
    assert EVIL in report["podNames"]  # shown as text ...
    assert report["images"] == 0 and report["dialogs"] == []  # ... never run as markup
    assert screenshot.exists()
