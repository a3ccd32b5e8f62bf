"""Schema-driven test of the admin API: schemathesis against the served OpenAPI document."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from wsbalancer.devtools.processes import free_port, processes, spawn_balancer, spawn_demo_backend

BIN = Path(sys.executable).parent


def test_schemathesis_finds_no_failure_in_the_admin_api() -> None:
    backend_port, port, admin = free_port(), free_port(), free_port()
    with processes() as children:
        spawn_demo_backend(children, backend_port)
        spawn_balancer(
            children,
            port,
            admin,
            [f"a=ws://127.0.0.1:{backend_port}"],
            ["admin.token=schema-token", "log.level=error"],
        )
        base = f"http://127.0.0.1:{admin}"
        result = subprocess.run(
            [
                str(BIN / "schemathesis"),
                "run",
                f"{base}/api/openapi.json",
                "--url",
                base,
                "-H",
                "Authorization: Bearer schema-token",
                "-n",
                "30",
                "--seed",
                "20261123",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "NO_COLOR": "1"},
        )
    (Path(__file__).resolve().parent.parent / "test-output" / "schemathesis.txt").write_text(
        result.stdout + result.stderr
    )
    assert result.returncode == 0, result.stdout[-4000:]
    assert " passed" in result.stdout
