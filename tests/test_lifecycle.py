"""The balancer under twistd: SIGTERM drains with 1001, SIGHUP reloads backends live."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

from wsbalancer.devtools.processes import free_port, processes, spawn_demo_backend, wait_port

BIN = Path(sys.executable).parent


def _backend(children: list[Any], name: str) -> int:
    port = free_port()
    spawn_demo_backend(children, port, name)
    return port


def _balancer(children: list[Any], config: Path) -> tuple[subprocess.Popen[str], int, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSBALANCER_")}
    balancer = subprocess.Popen(
        [str(BIN / "twistd"), "-n", "--pidfile=", "wsbalancer", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    children.append(balancer)
    text = config.read_text()
    port = int(text.split("listen: tcp:")[1].split(":")[0])
    admin = int(text.split("admin: {listen: 'tcp:")[1].split(":")[0])
    wait_port(port, process=balancer)
    wait_port(admin, process=balancer)
    return balancer, port, admin


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def _config(path: Path, port: int, admin: int, backends: dict[str, int], extra: str = "") -> None:
    lines = [
        f"listen: tcp:{port}:interface=127.0.0.1",
        f"admin: {{listen: 'tcp:{admin}:interface=127.0.0.1'}}",
        "balancing: {poll_interval: 0.2s}",
        "backends:",
    ]
    lines += [f"  - {{id: {name}, url: 'ws://127.0.0.1:{p}'}}" for name, p in backends.items()]
    path.write_text("\n".join(lines) + "\n" + extra)


def _backends(admin: int) -> dict[str, Any]:
    _, doc = _get(f"http://127.0.0.1:{admin}/balancer-metrics")
    return {b["id"]: b for b in doc["backends"]}


def eventually(check: Any, timeout: float = 10.0) -> Any:
    """Another process's state, polled until `check` gives a true value (bounded)."""
    deadline = time.monotonic() + timeout
    while (value := check()) is None or value is False:
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)
    return value


def _greeting(ws: Any) -> str:
    return str(ws.recv(timeout=10)).removeprefix("connected to ")


def test_sigterm_stops_accepting_and_closes_clients_with_1001_spread_over_the_drain(
    tmp_path: Path,
) -> None:
    config = tmp_path / "wsbalancer.yaml"
    with processes() as children, ExitStack() as stack:
        backend = _backend(children, "b1")
        _config(
            config, free_port(), free_port(), {"b1": backend}, "shutdown: {drain_period: 1.5s}\n"
        )
        balancer, port, admin = _balancer(children, config)
        clients = [stack.enter_context(connect(f"ws://127.0.0.1:{port}/echo")) for _ in range(5)]
        started = time.monotonic()
        balancer.send_signal(signal.SIGTERM)
        assert _get(f"http://127.0.0.1:{admin}/readyz")[0] == 503  # drain: not ready
        closed_at = []
        for ws in clients:
            try:
                ws.recv(timeout=10)
            except Exception:
                pass
            closed_at.append(time.monotonic() - started)
            assert (ws.close_code, ws.close_reason) == (1001, "server shutting down")
        # twistd ends by re-raising the signal that stopped it, as systemd expects.
        assert balancer.wait(20) in (0, -signal.SIGTERM)
    # Spread over the drain period rather than one wave, and all within it (plus slack).
    assert max(closed_at) - min(closed_at) >= 0.6
    assert max(closed_at) < 1.5 + 5


def test_sighup_adds_and_removes_backends_without_touching_kept_sessions(tmp_path: Path) -> None:
    config = tmp_path / "wsbalancer.yaml"
    with processes() as children, ExitStack() as stack:
        ports = {name: _backend(children, name) for name in ("a", "b", "c")}
        port, admin = free_port(), free_port()
        _config(config, port, admin, {"a": ports["a"], "b": ports["b"]})
        balancer, port, admin = _balancer(children, config)
        first, second = (
            stack.enter_context(connect(f"ws://127.0.0.1:{port}/chat")) for _ in range(2)
        )
        on = {_greeting(first): first, _greeting(second): second}
        assert set(on) == {"a", "b"}

        _config(config, port, admin, {"a": ports["a"], "c": ports["c"]})
        balancer.send_signal(signal.SIGHUP)
        states = eventually(lambda: _backends(admin) if "c" in _backends(admin) else None)
        assert states["b"]["draining"] and not states["b"]["usable"]  # its session drains
        # Sessions on the kept backend, and on the removed one, are still open and working.
        for name, ws in on.items():
            ws.send("still here")
            assert ws.recv(timeout=10) == f"{name}: still here"
        # New sessions go to a and c only.
        fresh = [stack.enter_context(connect(f"ws://127.0.0.1:{port}/chat")) for _ in range(4)]
        assert {_greeting(ws) for ws in fresh} == {"a", "c"}
        for ws in fresh:
            ws.close()
        on["b"].close()
        # b is forgotten once its last session has ended.
        eventually(lambda: list(_backends(admin)) == ["a", "c"])

        # An invalid file is rejected with one log line; the running configuration stays.
        config.write_text("backends: [{url: 'ftp://nope'}]\n")
        balancer.send_signal(signal.SIGHUP)
        on["a"].send("after a bad reload")
        assert on["a"].recv(timeout=10) == "a: after a bad reload"
        assert list(_backends(admin)) == ["a", "c"]
        on["a"].close()
        balancer.send_signal(signal.SIGTERM)
        output = balancer.communicate(timeout=30)[0]
    rejected = [line for line in output.splitlines() if "reload rejected" in line]
    assert len(rejected) == 1 and "url: expected ws://host:port" in rejected[0]
