"""The `wsbalancer` console command as an operator runs it: `--version`, `check-config` on good
and bad configurations and on every example, `run` serving, reloading and draining; the
version in /metrics and the API; `wsbalancer-conformance` without its extra; the demo banner."""

from __future__ import annotations

import importlib.metadata
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

import wsbalancer
from wsbalancer.devtools.processes import free_port, processes, spawn_demo_backend, wait_port
from wsbalancer.observe.counters import BalancerMetrics
from wsbalancer.service import cli

from .tlsutil import CertAuthority

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
WSBALANCER = str(BIN / "wsbalancer")
EXAMPLES = sorted((ROOT / "examples").glob("*/wsbalancer.yaml"))


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("WSBALANCER_") and k not in ("BE_URLS", "FE_ADDR", "ADM_ADDR")
    }
    env.update(extra)
    return env


def _command(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [WSBALANCER, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env or _env(),
        cwd=cwd,
    )


# --- --version: one source of truth ------------------------------------------------------------


def test_version_is_the_package_version_everywhere() -> None:
    result = _command("--version")
    assert result.returncode == 0, result.stderr
    installed = importlib.metadata.version("wsbalancer")
    assert installed == wsbalancer.__version__
    assert result.stdout == f"wsbalancer {wsbalancer.__version__}\n"
    # setup.cfg reads it from the package: there is no second copy to forget.
    assert "version = attr: wsbalancer.__version__" in (ROOT / "setup.cfg").read_text()


def test_without_a_command_the_usage_is_shown_and_the_exit_is_2() -> None:
    result = _command()
    assert result.returncode == 2
    assert "Usage: wsbalancer COMMAND" in result.stderr
    for command in ("run", "check-config", "--version"):
        assert command in result.stderr
    unknown = _command("start")
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("wsbalancer: unknown command 'start'")


def test_build_info_carries_the_version() -> None:
    text = generate_latest(BalancerMetrics().registry).decode()
    assert f'wsbalancer_build_info{{version="{wsbalancer.__version__}"}} 1.0' in text


# --- check-config ------------------------------------------------------------------------------


def test_check_config_reports_every_problem_of_file_environment_and_flags(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(
        "backend: ['ws://a:1']\n"  # the list is `backends`
        "backends:\n"
        "  - {url: 'ftp://x'}\n"
        "  - {url: 'ws://b:2', wieght: 2}\n"
        "  - 'ws://c:3'\n"
        "balancing: {strategy: fastest, pol_interval: 2s}\n"
        "timeouts: {idle: soon}\n"
        "pools:\n"
        "  api:\n"
        "    backends: [{id: api1, url: 'ws://10.0.1.5:8000'}]\n"
        "    listen: tcp:1\n"
        "routes:\n"
        "  - {path: /api, pool: apii}\n"
    )
    result = _command(
        "check-config",
        "--config",
        str(path),
        "--set",
        "failover.attempts=0",
        "--set",
        "limits.max_conections=5",
        env=_env(WSBALANCER_LOG__LEVL="debug", WSBALANCER_HEALTH__FALL="often"),
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    f = f"file {path}"
    expected = [
        f"wsbalancer: {f}: backend: unknown key (did you mean backends?)",
        f"wsbalancer: {f}: backends[0]: url: expected ws://host:port or wss://host:port, "
        "got 'ftp://x'",
        f"wsbalancer: {f}: backends[1]: unknown key wieght (did you mean weight?)",
        f"wsbalancer: {f}: balancing.strategy: expected one of least-loaded, power-of-two, "
        "round-robin, got 'fastest'",
        f"wsbalancer: {f}: balancing.pol_interval: unknown key "
        "(did you mean balancing.poll_interval?)",
        f"wsbalancer: {f}: timeouts.idle: expected a duration such as 10s or 500ms, got 'soon'",
        f"wsbalancer: {f}: pools.api: listen: set for the whole balancer, not per pool",
        f"wsbalancer: {f}: routes[0]: pool: no pool named 'apii' (pools: api, default)",
        "wsbalancer: environment WSBALANCER_LOG__LEVL: log.levl: unknown key "
        "(did you mean WSBALANCER_LOG__LEVEL?)",
        "wsbalancer: environment WSBALANCER_HEALTH__FALL: health.fall: expected a whole "
        "number, got 'often'",
        "wsbalancer: flag --set failover.attempts: failover.attempts: must be at least 1, got '0'",
        "wsbalancer: flag --set limits.max_conections: limits.max_conections: unknown key "
        "(did you mean limits.max_connections?)",
    ]
    assert sorted(lines[:-1]) == sorted(expected)
    assert lines[-1] == f"wsbalancer check-config: {len(expected)} problems; nothing was started"


def test_check_config_prints_each_value_with_where_it_came_from(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(
        "backends: [{id: a, url: 'ws://10.0.0.5:9001'}]\n"
        "balancing: {strategy: p2c}\n"
        "admin: {token: file-secret}\n"
        "timeouts: {idle: 1m}\n"
    )
    result = _command(
        "check-config",
        "--config",
        str(path),
        "--set",
        "timeouts.idle=5m",
        "--strategy",
        "round-robin",
        env=_env(WSBALANCER_FAILOVER__ATTEMPTS="7", WSBALANCER_TIMEOUTS__IDLE="2m"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    out = result.stdout
    assert out.startswith(f"wsbalancer {wsbalancer.__version__}: the configuration is valid")
    settings = {
        line.split("=")[0].strip(): line.split("=", 1)[1].strip()
        for line in out.splitlines()
        if line.startswith("  ") and "=" in line and not line.strip().startswith("backend ")
    }
    assert settings["timeouts.idle"] == "300s  [flag --set timeouts.idle]"  # flag > env > file
    assert settings["balancing.strategy"] == "round-robin  [flag --strategy]"
    assert settings["failover.attempts"] == "7  [environment WSBALANCER_FAILOVER__ATTEMPTS]"
    assert settings["admin.token"] == f"(set, not shown)  [file {path}]"
    assert settings["balancing.poll_interval"] == "2s  [default]"
    assert "file-secret" not in out
    assert (
        f"  backend a = ws://10.0.0.5:9001 (metric http://10.0.0.5:9001/metric, weight 1)  "
        f"[file {path}: backends[0]]" in out.splitlines()
    )


def test_check_config_binds_nothing_and_resolves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"check-config used the network: {args!r}")

    with socket.socket() as taken:  # a taken port: check-config must not even try it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for name in ("bind", "connect", "connect_ex", "sendto"):
            monkeypatch.setattr(socket.socket, name, refuse)
        monkeypatch.setattr(socket, "getaddrinfo", refuse)
        monkeypatch.setattr(socket, "gethostbyname", refuse)
        status = cli.main(
            [
                "check-config",
                "--config",
                str(ROOT / "examples" / "dns-discovery" / "wsbalancer.yaml"),
                "--listen",
                f"tcp:{port}:interface=127.0.0.1",
                "--backend",
                "wss://backend.example.invalid:9443",
            ]
        )
    out = capsys.readouterr()
    assert status == 0, out.err
    assert f"tcp:{port}:interface=127.0.0.1  [flag --listen]" in out.out


def _tls_files(folder: Path) -> None:
    """The files examples/tls/wsbalancer.yaml names, made by a test CA."""
    tls = folder / "tls"
    tls.mkdir()
    ca = CertAuthority(tls)
    (tls / "backend-ca.pem").write_bytes(ca.ca_file.read_bytes())
    for role, names in (("server", ["balancer.example"]), ("client", ["balancer-client"])):
        cert, key = ca.issue(names)
        cert.rename(tls / f"{role}.crt")
        key.rename(tls / f"{role}.key")


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.parent.name for p in EXAMPLES])
def test_every_example_passes_check_config(example: Path, tmp_path: Path) -> None:
    if example.parent.name == "tls":
        _tls_files(tmp_path)  # relative paths: from the directory wsbalancer starts in
    result = _command("check-config", "--config", str(example), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "the configuration is valid" in result.stdout


def test_the_examples_cover_the_common_setups() -> None:
    assert {p.parent.name for p in EXAMPLES} == {
        "plain-fleet",
        "pools-and-routes",
        "socketio",
        "tls",
        "dns-discovery",
    }
    for example in EXAMPLES:  # commented for a newcomer
        comments = [x for x in example.read_text().splitlines() if x.lstrip().startswith("#")]
        assert len(comments) >= 3, example


def test_check_config_reads_the_tls_files_without_listening(tmp_path: Path) -> None:
    example = str(ROOT / "examples" / "tls" / "wsbalancer.yaml")
    missing = _command("check-config", "--config", example, cwd=tmp_path)
    assert missing.returncode == 2
    problems = missing.stderr.splitlines()[:-1]
    assert len(problems) == 4, problems
    assert any("tls.ca_file: no such file: tls/backend-ca.pem" in p for p in problems)
    assert any("listen: ssl:8443: [Errno 2] No such file" in p for p in problems)
    # A key that is not the certificate's: found by building the TLS context, not by binding.
    _tls_files(tmp_path)
    (tmp_path / "tls" / "server.key").write_bytes((tmp_path / "tls" / "client.key").read_bytes())
    mismatched = _command("check-config", "--config", example, cwd=tmp_path)
    assert mismatched.returncode == 2
    (problem,) = mismatched.stderr.splitlines()[:-1]
    assert problem.startswith("wsbalancer: configuration: listen: ssl:8443: ")


# --- run -----------------------------------------------------------------------------------


class Output:
    """A child's output lines, read on a thread, waited for with a bound."""

    def __init__(self, child: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert child.stdout is not None
        stream = child.stdout
        self.reader = threading.Thread(target=lambda: [self.lines.put(x) for x in stream])
        self.reader.start()

    def wait_for(self, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while True:
            for line in self.seen:
                if text in line:
                    return line
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {text!r} in {self.seen[-20:]}")
            try:
                self.seen.append(self.lines.get(timeout=remaining))
            except queue.Empty:
                pass

    def rest(self) -> str:
        self.reader.join(timeout=30)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return "".join(self.seen)


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[Any]]]:
    with processes() as running:
        yield running


def test_run_serves_reloads_on_sighup_and_drains_on_sigterm(
    tmp_path: Path, children: list[subprocess.Popen[Any]]
) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    backend_port, port, admin = free_port(), free_port(), free_port()
    spawn_demo_backend(children, backend_port, name="only")
    config = tmp_path / "wsbalancer.yaml"
    config.write_text(
        f"backends: [{{id: only, url: 'ws://127.0.0.1:{backend_port}'}}]\n"
        "balancing: {poll_interval: 1s}\n"
    )
    balancer = subprocess.Popen(
        [
            WSBALANCER,
            "run",
            "--config",
            str(config),
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            "--admin-listen",
            f"tcp:{admin}:interface=127.0.0.1",
            "--set",
            "log.library_level=info",  # Twisted's own "Main loop terminated." below
            "--set",
            "admin.token=t0ken",
            "--set",
            "workers=1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
    )
    children.append(balancer)
    output = Output(balancer)
    # The start-up line names the version; signals are handled once it is written.
    started = output.wait_for("wsbalancer relaying")
    assert f"version {wsbalancer.__version__}" in started
    assert not (tmp_path / "twistd.pid").exists() and not Path("twistd.pid").exists()

    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as r:
        metrics = r.read().decode()
    assert f'wsbalancer_build_info{{version="{wsbalancer.__version__}"}} 1.0' in metrics
    request = urllib.request.Request(
        f"http://127.0.0.1:{admin}/api/version", headers={"Authorization": "Bearer t0ken"}
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        assert json.load(r) == {"version": wsbalancer.__version__}

    with connect(f"ws://127.0.0.1:{port}/echo") as ws:
        ws.send("through wsbalancer run")
        assert ws.recv(timeout=10) == "through wsbalancer run"

        config.write_text(config.read_text().replace("poll_interval: 1s", "poll_interval: 3s"))
        balancer.send_signal(signal.SIGHUP)
        assert "poll interval now 3s" in output.wait_for("configuration reloaded")
        ws.send("after the reload")
        assert ws.recv(timeout=10) == "after the reload"

        balancer.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as closed:
            while True:  # bounded by the drain period and recv's timeout
                ws.recv(timeout=30)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    balancer.wait(timeout=60)
    log = output.rest()
    assert balancer.returncode in (0, -signal.SIGTERM), log
    assert "Main loop terminated." in log
    assert "Traceback" not in log


def test_run_with_a_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("backends: ['ws://a:1']\nbalancing: {strategy: fastest}\n")
    result = _command("run", "--config", str(path))
    assert result.returncode == 2
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"wsbalancer: file {path}: balancing.strategy: ")
    bad_flag = _command("run", "--listn", "tcp:1")
    assert bad_flag.returncode == 2
    assert bad_flag.stderr.startswith("wsbalancer run: option --listn not recognized")


def test_run_help_lists_the_twistd_plugin_options() -> None:
    result = _command("run", "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("Usage: wsbalancer run [--config FILE]")
    for option in ("--config", "--listen", "--backend", "--admin-listen", "--strategy", "--set"):
        assert option in result.stdout


# --- the conformance runner without its extra, the demo banner ---------------------------------


def test_conformance_without_kosoku_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    # As after `pip install wsbalancer` without [conformance]: neither kosoku nor websockets
    # importable, no kosoku script beside the interpreter or on PATH.
    script = (
        "import sys; sys.modules['kosoku'] = None; sys.modules['websockets'] = None; "
        "sys.executable = sys.argv[1]; from wsbalancer.devtools.conformance import main; "
        "sys.exit(main(['--out', sys.argv[2], '--legs', 'client,backend', '--cases', '1.1.1']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "bin" / "python"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(PATH="/usr/bin:/bin"),
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    assert result.stderr == (
        "wsbalancer-conformance: needs kosoku and websockets, not installed: "
        "pip install 'wsbalancer[conformance]'\n"
    )


def test_conformance_extra_names_what_the_runner_needs() -> None:
    extras = importlib.metadata.metadata("wsbalancer").get_all("Provides-Extra") or []
    assert "conformance" in extras
    requirements = importlib.metadata.requires("wsbalancer") or []
    needed = {r.split(";")[0].split(">")[0].strip() for r in requirements if "conformance" in r}
    assert needed == {"kosoku", "websockets"}


def test_demo_prints_the_dashboard_address_and_it_answers(
    children: list[subprocess.Popen[Any]],
) -> None:
    port, admin, page = free_port(), free_port(), free_port()
    backends = [free_port() for _ in range(3)]
    demo = subprocess.Popen(
        [
            str(BIN / "wsbalancer-demo"),
            "--port",
            str(port),
            "--admin-port",
            str(admin),
            "--page-port",
            str(page),
            "--backend-ports",
            ",".join(map(str, backends)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
    )
    children.append(demo)
    output = Output(demo)
    line = output.wait_for("dashboard ")
    url = line.split()[-1]
    assert url == f"http://127.0.0.1:{admin}/dashboard"
    wait_port(admin, process=demo)
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        assert "text/html" in r.headers["content-type"]
