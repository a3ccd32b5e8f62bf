"""A real browser (Debian's chromium, driven by playwright-core) through the balancer.

Browsers offer permessage-deflate on every connection (the seed Go balancer answers them
with 502); this is the demo chat page working end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from wsbalancer.devtools.processes import free_port, processes, wait_port

from .test_demo import DEMO

pytestmark = pytest.mark.slow  # processes, browsers or the Autobahn suite: not in the fast tier

ROOT = Path(__file__).resolve().parent.parent
BROWSER_DIR = ROOT / "tests" / "browser"


def _node_modules() -> None:
    if not (BROWSER_DIR / "node_modules" / "playwright-core").exists():
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--silent"],
            cwd=BROWSER_DIR,
            check=True,
            timeout=600,
        )


def test_chromium_chats_through_the_balancer() -> None:
    assert shutil.which("node") and Path("/usr/bin/chromium").exists(), (
        "node and Debian's chromium are needed (.ci/run installs chromium)"
    )
    _node_modules()
    port, admin, page = free_port(), free_port(), free_port()
    backends = [free_port() for _ in range(3)]
    screenshot = ROOT / "test-output" / "demo-chat.png"
    with processes() as children:
        demo = subprocess.Popen(
            [
                DEMO,
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
        url = f"http://127.0.0.1:{page}/?ws=ws://127.0.0.1:{port}/chat"
        result = subprocess.run(
            ["node", str(BROWSER_DIR / "chat.mjs"), url, str(screenshot)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["greeting"].startswith("connected to backend-")
    backend = report["greeting"].removeprefix("connected to ")
    assert f"{backend}: hello from chromium" in report["lines"]
    assert screenshot.exists()
