"""Child processes for the demo, the conformance run, benchmarks and tests: free ports, the
demo backend and the balancer under twistd, each its own process as in production."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Variables that would hand a child balancer somebody else's configuration.
_FOREIGN_CONFIG = ("BE_URLS", "BE_URL_IDS", "FE_ADDR", "ADM_ADDR")


def free_port() -> int:
    """A port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(
    port: int, timeout: float = 20.0, process: subprocess.Popen[Any] | None = None
) -> None:
    """Wait until something accepts on 127.0.0.1:port (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


def wait_until(check: Any, what: str = "it", timeout: float = 30.0) -> Any:
    """Poll another process's state until `check()` is truthy (bounded); its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


@contextmanager
def processes() -> Iterator[list[subprocess.Popen[Any]]]:
    """Child processes, all terminated on the way out."""
    children: list[subprocess.Popen[Any]] = []
    try:
        yield children
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()


def rss_kib(pid: int) -> int:
    """Resident memory of a process in KiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def bin_path(name: str) -> str:
    """A console script of this environment (next to the running interpreter)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without balancer configuration, plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("WSBALANCER_") and k not in _FOREIGN_CONFIG
    }
    env.update(extra)
    return env


def spawn_demo_backend(
    children: list[subprocess.Popen[Any]],
    port: int,
    name: str | None = None,
    args: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
    output: Any = None,
) -> subprocess.Popen[Any]:
    """A demo backend (echo, /chat broadcast, /metric) on 127.0.0.1:port, once it listens."""
    cmd = [bin_path("wsbalancer-demo-backend"), "--port", str(port), *args]
    if name:
        cmd += ["--name", name]
    child = subprocess.Popen(
        cmd,
        env=dict(env) if env is not None else None,
        stdout=output or subprocess.DEVNULL,
        stderr=subprocess.STDOUT if output else None,
    )
    children.append(child)
    wait_port(port, process=child)
    return child


def spawn_balancer(
    children: list[subprocess.Popen[Any]],
    port: int,
    admin: int,
    backends: Iterable[str],
    settings: Iterable[str] = (),
    listen: str | None = None,
    env: Mapping[str, str] | None = None,
    output: Any = None,
    wait: bool = True,
) -> subprocess.Popen[Any]:
    """`twistd -n wsbalancer` on 127.0.0.1:port (admin on `admin`) in front of `backends`
    (URLs, `id=URL` allowed); `settings` are `key=value` for `--set`."""
    cmd = [
        bin_path("twistd"),
        "-n",
        "--pidfile=",
        "wsbalancer",
        "--listen",
        listen or f"tcp:{port}:interface=127.0.0.1",
        "--admin-listen",
        f"tcp:{admin}:interface=127.0.0.1",
    ]
    for backend in backends:
        cmd += ["--backend", backend]
    for setting in settings:
        cmd += ["--set", setting]
    child = subprocess.Popen(
        cmd,
        env=dict(env) if env is not None else clean_environment(),
        stdout=output or subprocess.DEVNULL,
        stderr=subprocess.STDOUT if output else subprocess.DEVNULL,
        text=output is subprocess.PIPE,
    )
    children.append(child)
    if wait:
        wait_port(port, process=child)
        wait_port(admin, process=child)
    return child
