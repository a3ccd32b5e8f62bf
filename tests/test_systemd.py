"""systemd: the shipped units verify as shipped against a venv at /opt/wsbalancer, socket
activation relays through the inherited socket, and the balancer tells systemd when it is
ready."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect

from wsbalancer.devtools.processes import free_port, processes, spawn_demo_backend, wait_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
UNITS = ROOT / "packaging" / "systemd"


# The path the shipped unit and the install recipe name; the test makes a virtual environment
# there (CI runs as root), unless a real installation is there already, which it then checks.
VENV = Path("/opt/wsbalancer")
MADE_BY_TEST = ".made-by-wsbalancer-tests"


def _make_venv_at_the_documented_path() -> None:
    """The recipe's venv, cheaply: wsbalancer itself installed into it (--no-deps, from this
    checkout), its dependencies taken from this test run's environment through a .pth line
    instead of downloaded again, and the twistd console script pip would write for Twisted."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(VENV)], check=True)
    (VENV / MADE_BY_TEST).write_text("")
    purelib = sysconfig.get_paths()["purelib"]
    (site_packages,) = VENV.glob("lib/python3*/site-packages")
    # A plain path line: the dependencies become importable, but .pth files in there (this
    # checkout's editable install) are not run, so wsbalancer comes from the venv itself.
    (site_packages / "test-dependencies.pth").write_text(purelib + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(VENV / "bin" / "python"),
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    twistd = VENV / "bin" / "twistd"
    twistd.write_text(
        f"#!{VENV}/bin/python\n"
        "import sys\n"
        "from twisted.scripts.twistd import run\n"
        "if __name__ == '__main__':\n"
        "    sys.exit(run())\n"
    )
    twistd.chmod(0o755)


@pytest.fixture
def venv_at_opt() -> Iterator[Path]:
    if VENV.exists() and not (VENV / MADE_BY_TEST).exists():
        yield VENV  # a real installation: check the units against it, leave it alone
        return
    shutil.rmtree(VENV, ignore_errors=True)  # one an interrupted run left behind
    _make_venv_at_the_documented_path()
    try:
        yield VENV
    finally:
        shutil.rmtree(VENV, ignore_errors=True)


def test_the_shipped_units_verify_unmodified_against_a_venv_at_opt(venv_at_opt: Path) -> None:
    assert shutil.which("systemd-analyze"), "systemd-analyze is needed (.ci/run installs systemd)"
    service = (UNITS / "wsbalancer.service").read_text()
    (exec_start,) = [line for line in service.splitlines() if line.startswith("ExecStart=")]
    command = shlex.split(exec_start.removeprefix("ExecStart="))
    assert command[0] == str(venv_at_opt / "bin" / "twistd")
    # The venv's twistd finds the plugin, and wsbalancer is the venv's own (run from /, as
    # systemd runs it, so this checkout is not on the path).
    found = subprocess.run(
        [command[0], "wsbalancer", "--help"], capture_output=True, text=True, cwd="/", timeout=60
    )
    assert found.returncode == 0, found.stderr
    assert "--config" in found.stdout
    python = str(venv_at_opt / "bin" / "python")
    where = subprocess.run(
        [python, "-c", "import wsbalancer; print(wsbalancer.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
        timeout=60,
    )
    assert where.stdout.startswith(str(venv_at_opt)), where.stdout
    result = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            str(UNITS / "wsbalancer.socket"),
            str(UNITS / "wsbalancer.service"),
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
