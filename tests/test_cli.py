"""The twistd plugin as an operator runs it: help, bad config, taken port, env-only start."""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from wsbalancer.devtools.processes import free_port, processes, spawn_demo_backend, wait_port

TWISTD = str(Path(sys.executable).parent / "twistd")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSBALANCER_")}
    env.update(extra)
    return env


def _twistd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TWISTD, "-n", "--pidfile=", "wsbalancer", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env or _env(),
    )


def test_help_lists_the_options() -> None:
    result = _twistd("--help")
    assert result.returncode == 0
    for option in ("--config", "--listen", "--backend", "--admin-listen", "--strategy", "--set"):
        assert option in result.stdout


@pytest.mark.parametrize(
    "content, expected",
    [
        ("backends: [{url: 'ftp://x'}]", "backends[0]: url: expected ws://host:port"),
        (
            "backends: ['ws://a:1']\nbalancing: {strategy: fastest}",
            "balancing.strategy: expected one of",
        ),
        ("backends: ['ws://a:1']\ntimeouts: {idle: soon}", "timeouts.idle: expected a duration"),
        ("backends: [\n  'ws://a:1'", "not valid YAML"),
        ("backends: ['ws://a:1']\nlisten_port: 8080", "listen_port: unknown key"),
    ],
)
def test_a_broken_config_exits_non_zero_with_one_clear_line(
    tmp_path: Path, content: str, expected: str
) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(content)
    result = _twistd("--config", str(path))
    assert result.returncode != 0
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"wsbalancer: file {path}: ")
    assert expected in lines[0]


def test_a_bad_environment_value_names_the_variable() -> None:
    result = _twistd(env=_env(BE_URLS="ws://a:1", WSBALANCER_BALANCING__POLL_INTERVAL="0s"))
    assert result.returncode != 0
    assert result.stderr.strip() == (
        "wsbalancer: environment WSBALANCER_BALANCING__POLL_INTERVAL: balancing.poll_interval: "
        "must be above zero, got '0s'"
    )


def test_a_taken_port_fails_start_up_with_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _twistd(
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            "--admin-listen",
            f"tcp:{free_port()}:interface=127.0.0.1",
            "--backend",
            "ws://127.0.0.1:1",
        )
    assert result.returncode == 1
    assert f"wsbalancer: cannot listen on 127.0.0.1:{port}" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_workers_without_a_writable_temp_dir_fail_start_up_with_one_line(tmp_path: Path) -> None:
    # As a read-only root with no writable /tmp does (deploy/kubernetes): the temporary
    # directory the worker sockets live in cannot be made. A real twistd start-up, with
    # tempfile pointed at a directory that cannot exist.
    missing = tmp_path / "not-a-directory"
    missing.write_text("")
    script = (
        "import sys, tempfile; tempfile.tempdir = sys.argv.pop(1); "
        "from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            str(missing / "tmp"),
            "-n",
            "--pidfile=",
            "wsbalancer",
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--admin-listen",
            "tcp:0:interface=127.0.0.1",
            "--backend",
            "ws://127.0.0.1:1",
            "--set",
            "workers=2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "wsbalancer: workers: 2 processes talk over Unix sockets in a temporary directory" in out
    assert "Traceback" not in out


def test_seed_environment_alone_is_enough_to_relay() -> None:
    import json
    import urllib.request

    backend_port, port, admin = free_port(), free_port(), free_port()
    with processes() as children:
        spawn_demo_backend(children, backend_port)
        balancer = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "wsbalancer"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=_env(
                BE_URLS=f"ws://127.0.0.1:{backend_port}",
                BE_URL_IDS="only",
                FE_ADDR=f"127.0.0.1:{port}",
                ADM_ADDR=f"127.0.0.1:{admin}",
            ),
        )
        children.append(balancer)
        wait_port(port, process=balancer)
        wait_port(admin, process=balancer)
        from websockets.sync.client import connect

        with connect(f"ws://127.0.0.1:{port}/echo") as ws:
            ws.send("through twistd")
            assert ws.recv(timeout=10) == "through twistd"
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/balancer-metrics") as r:
                doc = json.load(r)
        assert [b["id"] for b in doc["backends"]] == ["only"]
        assert doc["backends"][0]["localSessions"] == 1


def test_log_level_warn_keeps_session_lines_out() -> None:
    backend_port, port, admin = free_port(), free_port(), free_port()
    with processes() as children:
        spawn_demo_backend(children, backend_port)
        outputs = {}
        for level in ("info", "warn"):
            balancer = subprocess.Popen(
                [
                    TWISTD,
                    "-n",
                    "--pidfile=",
                    "wsbalancer",
                    "--log-level",
                    level,
                    "--listen",
                    f"tcp:{port}:interface=127.0.0.1",
                    "--admin-listen",
                    f"tcp:{admin}:interface=127.0.0.1",
                    "--backend",
                    f"ws://127.0.0.1:{backend_port}",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=_env(),
            )
            wait_port(port, process=balancer)
            from websockets.sync.client import connect

            with connect(f"ws://127.0.0.1:{port}/echo") as ws:
                ws.send("x")
                ws.recv(timeout=10)
            with connect(f"ws://127.0.0.1:{port}/echo") as ws:  # the first session has ended
                ws.send("y")
                ws.recv(timeout=10)
            balancer.terminate()
            outputs[level] = balancer.communicate(timeout=20)[0]
        assert " ended after " in outputs["info"]
        assert " ended after " not in outputs["warn"]


def test_json_log_format_writes_one_json_object_per_line() -> None:
    import json as jsonlib

    port, admin = free_port(), free_port()
    with processes() as children:
        balancer = subprocess.Popen(
            [
                TWISTD,
                "-n",
                "--pidfile=",
                "wsbalancer",
                "--set",
                "log.format=json",
                "--listen",
                f"tcp:{port}:interface=127.0.0.1",
                "--admin-listen",
                f"tcp:{admin}:interface=127.0.0.1",
                "--backend",
                "ws://127.0.0.1:1",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_env(),
        )
        children.append(balancer)
        # The ports are bound before the reactor runs and logs its start line, so wait for
        # that line (read on a thread, bounded) rather than for the port: a SIGTERM before
        # the reactor installs its handlers kills twistd before anything is written.
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=lambda: [lines.put(x) for x in balancer.stdout or ()])
        reader.start()
        seen: list[str] = []
        deadline = time.monotonic() + 30
        while not any("wsbalancer relaying" in line for line in seen):
            seen.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))
        balancer.terminate()
        balancer.wait(timeout=30)
        reader.join(timeout=30)
        while not lines.empty():
            seen.append(lines.get())
    events = [jsonlib.loads(line) for line in seen if line.strip()]
    assert any(e["message"].startswith("wsbalancer relaying") for e in events)
    assert all(isinstance(e, dict) for e in events)
