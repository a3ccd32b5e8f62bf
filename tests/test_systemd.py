"""systemd: the units verify, socket activation relays through the inherited socket, and the
balancer tells systemd when it is ready."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from websockets.sync.client import connect

from wsbalancer.processes import free_port, processes, spawn_demo_backend, wait_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
UNITS = ROOT / "packaging" / "systemd"


def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    assert shutil.which("systemd-analyze"), "systemd-analyze is needed (.ci/run installs systemd)"
    for unit in ("wsbalancer.service", "wsbalancer.socket"):
        text = (UNITS / unit).read_text()
        # The shipped unit names /usr/bin/twistd; verify it with this installation's twistd.
        (tmp_path / unit).write_text(text.replace("/usr/bin/twistd", str(BIN / "twistd")))
    result = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            str(tmp_path / "wsbalancer.socket"),
            str(tmp_path / "wsbalancer.service"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "wsbalancer" not in result.stderr, result.stderr  # no warnings about our units


def test_socket_activation_relays_through_the_inherited_socket_and_notifies_ready(
    tmp_path: Path,
) -> None:
    backend_port, port, admin = free_port(), free_port(), free_port()
    notify_path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify, processes() as children:
        notify.bind(notify_path)
        notify.settimeout(30)
        spawn_demo_backend(children, backend_port)
        env = {k: v for k, v in os.environ.items() if not k.startswith("WSBALANCER_")}
        env["NOTIFY_SOCKET"] = notify_path
        balancer = subprocess.Popen(
            [
                # --fdname: systemd itself always names the sockets (LISTEN_FDNAMES) and
                # Twisted insists on the names, so this stand-in must give one.
                "systemd-socket-activate",
                "--fdname=wsbalancer",
                f"--setenv=NOTIFY_SOCKET={notify_path}",  # it passes on only what it is told
                "-l",
                f"127.0.0.1:{port}",
                str(BIN / "twistd"),
                "-n",
                "--pidfile=",
                "wsbalancer",
                "--listen",
                "systemd:domain=INET:index=0",
                "--admin-listen",
                f"tcp:{admin}:interface=127.0.0.1",
                "--backend",
                f"ws://127.0.0.1:{backend_port}",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        children.append(balancer)
        wait_port(port, process=balancer)  # systemd-socket-activate listens first
        # A first connection starts the balancer, which then accepts on the inherited socket.
        with connect(f"ws://127.0.0.1:{port}/echo", open_timeout=30) as ws:
            ws.send("activated")
            assert ws.recv(timeout=10) == "activated"
        state = notify.recv(4096).decode()
        assert "READY=1" in state.splitlines()
