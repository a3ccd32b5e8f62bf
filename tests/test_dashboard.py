"""The admin dashboard in a real browser (Debian's chromium driven by playwright-core)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from wsbalancer.devtools.processes import (
    clean_environment,
    free_port,
    processes,
    spawn_balancer,
    spawn_demo_backend,
)

from .test_browser import BROWSER_DIR, _node_modules

pytestmark = pytest.mark.slow  # processes, browsers or the Autobahn suite: not in the fast tier

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
EVIL = "<img src=x onerror=alert(1)>"
TOKEN = "dashboard-token"


def test_dashboard_shows_pools_events_down_pods_and_escapes_under_a_strict_policy(
    tmp_path: Path,
) -> None:
    _node_modules()
    backend_ports = [free_port() for _ in range(3)]
    port, admin = free_port(), free_port()
    screenshot = ROOT / "test-output" / "dashboard.png"
    config = tmp_path / "wsbalancer.yaml"
    config.write_text(
        "backends:\n"
        f"  - {{id: backend-0, url: 'ws://127.0.0.1:{backend_ports[0]}'}}\n"
        f"  - {{id: backend-1, url: 'ws://127.0.0.1:{backend_ports[1]}'}}\n"
        "pools:\n"
        "  chat:\n"
        f"    backends: [{{id: backend-2, url: 'ws://127.0.0.1:{backend_ports[2]}'}}]\n"
        "routes: [{path: /chat, pool: chat}]\n"
        f"admin: {{token: {TOKEN}}}\n"
    )
    with processes() as children:
        pids = []
        for i, p in enumerate(backend_ports):
            env = dict(os.environ, POD_NAME=EVIL if i == 2 else f"pod-{i}")
            pids.append(spawn_demo_backend(children, p, f"backend-{i}", env=env).pid)
        balancer = spawn_balancer(
            children,
            port,
            admin,
            [],
            ["balancing.poll_interval=0.3s", "health.fall=1", "workers=1"],
            env=clean_environment(WSBALANCER_CONFIG=str(config)),
            output=subprocess.PIPE,
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/dashboard.js") as r:
            script_type = r.headers["content-type"]
        result = subprocess.run(
            [
                "node",
                str(BROWSER_DIR / "dashboard.mjs"),
                f"http://127.0.0.1:{admin}/dashboard",
                f"ws://127.0.0.1:{port}/echo",
                str(screenshot),
                TOKEN,
                "backend-0",
                "backend-1",
                str(pids[1]),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        balancer.terminate()
        log = balancer.communicate(timeout=30)[0]
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["backends"] == ["backend-0", "backend-1", "backend-2"]
    assert report["pools"] == ["default", "default", "chat"]  # the pool column
    assert report["after"] == report["before"] + 1  # the new session showed up by itself
    # its echoed message, in its backend's traffic row: one each way, 7 bytes, one response
    (carried,) = [row for row in report["traffic"] if row[5] == "1"]
    assert carried[1:5] == ["1", "1", "7", "7"] and carried[6] != "–"
    assert report["migrations"] == "· migrations: 0 migrated, 0 skipped, 0 failed"
    assert EVIL in report["podNames"]  # shown as text ...
    assert report["images"] == 0 and report["dialogs"] == []  # ... never run as markup
    # an API drain shows in the backend's state and in "Recent events"; the first event
    # names every configured backend, of every pool
    assert report["drained"] == 200
    assert dict(report["states"])["backend-0"] == "draining"
    events = report["events"]
    assert any("API POST /api/backends/backend-0/drain: 200" in e for e in events)
    assert events[-1].endswith("started with 3 backends: backend-0, backend-1, chat/backend-2")
    assert any("backend backend-1 health down" in e for e in events)
    # a backend that went down: its pod's row says so, and is drawn as down
    pods = {backend: (state, cls) for backend, state, cls in report["podStates"]}
    assert pods["backend-1"] == ("down", "down")
    assert pods["backend-2"] == ("up", "")
    # the start-up line names every configured backend too
    start = next(line for line in log.splitlines() if "wsbalancer relaying" in line)
    assert f"chat/backend-2=ws://127.0.0.1:{backend_ports[2]}" in start
    # the policy: no inline script anywhere, and the dashboard ran under it without one
    # violation or console error; an inline script injected into it is refused
    policy = report["policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert report["violations"] == [] and report["console"] == []
    assert report["inlineRan"] is False
    assert any(v.startswith("script-src") for v in report["probeViolations"])
    assert script_type.startswith("text/javascript")
    assert screenshot.exists()
