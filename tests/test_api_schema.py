"""Schema-driven test of the admin API: schemathesis against the served OpenAPI document."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from wsbalancer.conformance import free_port, processes, wait_port

BIN = Path(sys.executable).parent


def test_schemathesis_finds_no_failure_in_the_admin_api() -> None:
    backend_port, port, admin = free_port(), free_port(), free_port()
    with processes() as children:
        backend = subprocess.Popen(
            [str(BIN / "wsbalancer-demo-backend"), "--port", str(backend_port)],
            stdout=subprocess.DEVNULL,
        )
        children.append(backend)
        wait_port(backend_port, process=backend)
        env = {k: v for k, v in os.environ.items() if not k.startswith("WSBALANCER_")}
        balancer = subprocess.Popen(
            [
                str(BIN / "twistd"),
                "-n",
                "--pidfile=",
                "wsbalancer",
                "--listen",
                f"tcp:{port}:interface=127.0.0.1",
                "--admin-listen",
                f"tcp:{admin}:interface=127.0.0.1",
                "--backend",
                f"a=ws://127.0.0.1:{backend_port}",
                "--set",
                "admin.token=schema-token",
                "--set",
                "log.level=error",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        children.append(balancer)
        wait_port(admin, process=balancer)
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
