#!/usr/bin/env python3
"""Benchmark: a direct connection vs wsbalancer vs HAProxy, side by side, in one run.

    .venv/bin/python bench/run.py            # full run (3 rounds: about 12-15 minutes)
    .venv/bin/python bench/run.py --quick    # 1 round, short windows (about 2 minutes)
    .venv/bin/python bench/run.py --json out.json --only wsbalancer,haproxy

It prints figures, it is not a test: it exits 0 whenever it could measure, and non-zero only
when it could not start (no node, no npm package, a proxy that never came up).

What runs (all on 127.0.0.1, ports picked free at run time):
  - two Node.js `ws` echo backends (bench/echo_server.js), shared by every path;
  - per path, the proxy under test as a child process: wsbalancer via twistd (log level
    warn), HAProxy (http mode, balance leastconn, timeout tunnel 1h, nbthread 1) from a
    config written into a temp dir; "direct" has no proxy, connections go round-robin
    straight to the backends. Every path is started at the beginning and kept up; the
    paths take turns, run by run, in each scenario;
  - the load client, Node.js `ws` (bench/load_client.js), once per scenario. It samples the
    CPU of the proxy, the backends and itself from /proc at the edges of each measured
    window, so the figures say which process was busy.

See bench/README.md for the scenarios and how to read the table.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
MODES = (
    "direct",
    "wsbalancer",
    "wsbalancer-splice",
    "wsbalancer-workers",
    "wsbalancer-splice-workers",
    "haproxy",
)
# Reference paths run only when asked for (--floor, or by name in --only).
EXTRA_MODES = ("twisted-floor",)
NOFILE_WANTED = 65536


# ------------------------------------------------------------------------ child processes


class Children:
    """Every process this script starts, each in its own session; all ended on exit."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[Any]] = []
        self.nofile = resource.getrlimit(resource.RLIMIT_NOFILE)

    def _preexec(self) -> None:
        # Inherited anyway; set again explicitly so every child can hold 5,000+ sockets.
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, self.nofile)
        except (ValueError, OSError):
            pass

    def start(self, cmd: list[str], **kw: Any) -> subprocess.Popen[Any]:
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(cmd, start_new_session=True, preexec_fn=self._preexec, **kw)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[Any], grace: float = 3.0) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)  # its own process group, by id
            except ProcessLookupError:
                pass
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(grace)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream:
                try:
                    stream.close()
                except OSError:
                    pass
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(reversed(self.procs)):
            try:
                self.stop(proc)
            except Exception:  # noqa: BLE001 - cleanup must go on
                pass


CHILDREN = Children()


def _on_signal(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def raise_nofile() -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in ((NOFILE_WANTED, max(hard, NOFILE_WANTED)), (hard, hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, want)
            break
        except (ValueError, OSError):
            continue
    CHILDREN.nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
    return CHILDREN.nofile


# ------------------------------------------------------------------------ small helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[Any], timeout: float) -> bool:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def read_line(proc: subprocess.Popen[Any], timeout: float) -> str:
    assert proc.stdout is not None
    until = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while time.monotonic() < until and b"\n" not in buf:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buf += chunk
    return buf.decode(errors="replace").strip()


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def cmd_output(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        return (out.stdout or out.stderr).strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine_info() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    versions: dict[str, str] = {
        "python": platform.python_version(),
        "node": cmd_output(["node", "--version"]),
    }
    for name in ("twisted", "autobahn"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:  # noqa: BLE001
            versions[name] = "?"
    try:
        pkg = json.loads((BENCH / "node_modules" / "ws" / "package.json").read_text())
        versions["ws"] = pkg.get("version", "?")
    except (OSError, ValueError):
        versions["ws"] = "?"
    if shutil.which("haproxy"):
        words = (cmd_output(["haproxy", "-v"]).splitlines() or [""])[0].split()
        versions["haproxy"] = words[2] if len(words) > 2 else "?"
    return {
        "nproc": usable,
        "cpu_model": model or platform.processor() or "?",
        "mem_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "versions": versions,
    }


def ensure_node_deps() -> None:
    if not shutil.which("node"):
        sys.exit("bench: node is not installed (Node.js 18+ is needed for the load client)")
    if (BENCH / "node_modules" / "ws" / "package.json").exists():
        return
    npm = shutil.which("npm")
    if not npm:
        sys.exit("bench: npm is not installed and bench/node_modules/ws is missing")
    print("bench: installing the ws package into bench/node_modules ...", flush=True)
    res = subprocess.run(
        [npm, "install", "--prefix", str(BENCH), "--no-audit", "--no-fund"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if res.returncode != 0 or not (BENCH / "node_modules" / "ws").exists():
        sys.exit(f"bench: npm install failed:\n{res.stdout}\n{res.stderr}")


# ------------------------------------------------------------------------ the load client


def run_client(spec: dict[str, Any], budget: float) -> dict[str, Any]:
    """Run one scenario in bench/load_client.js and return its JSON answer."""
    spec = dict(spec, clk_tck=os.sysconf("SC_CLK_TCK"), deadline=budget)
    proc = CHILDREN.start(
        ["node", str(BENCH / "load_client.js"), json.dumps(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = proc.communicate(timeout=budget + 15)
    except subprocess.TimeoutExpired:
        CHILDREN.stop(proc)
        return {"ok": False, "error": f"load client did not finish within {budget + 15:.0f}s"}
    CHILDREN.stop(proc)
    lines = [ln for ln in out.decode(errors="replace").splitlines() if ln.startswith("{")]
    if not lines:
        return {
            "ok": False,
            "error": f"load client exit {proc.returncode}: {err.decode(errors='replace')[-500:]}",
        }
    return json.loads(lines[-1])


# ------------------------------------------------------------------------ backends, proxies


class Backend:
    def __init__(self, name: str) -> None:
        self.name = name
        self.proc = CHILDREN.start(
            ["node", str(BENCH / "echo_server.js"), "--name", name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        line = read_line(self.proc, 15)
        if not line.startswith("LISTENING "):
            raise RuntimeError(f"echo backend {name} did not start: {line!r}")
        self.port = int(line.split()[1])
        self.url = f"ws://127.0.0.1:{self.port}/"
        self.metric_url = f"http://127.0.0.1:{self.port}/metric"


class Proxy:
    """A proxy under test; `pid` is the process doing the relaying."""

    name = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/"
        self.proc: subprocess.Popen[Any] | None = None
        self.log = workdir / f"{self.name}.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self, backends: list[Backend]) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def start(self, backends: list[Backend]) -> None:
        cmd, env = self.command(backends)
        with open(self.log, "wb") as log:
            self.proc = CHILDREN.start(
                cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, env=env
            )
        if not wait_port(self.port, self.proc, 30):
            raise RuntimeError(f"{self.name} did not start listening; its log:\n{tail(self.log)}")

    def stop(self) -> None:
        if self.proc is not None:
            CHILDREN.stop(self.proc)

    def log_tail(self) -> str:
        return tail(self.log, 30)


class WsBalancer(Proxy):
    name = "wsbalancer"
    listen_extra = ""  # e.g. ":backlog=1024" (--wsb-backlog)
    settings: tuple[str, ...] = ("workers=1",)  # one process, like HAProxy's one thread

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.admin_port = free_port()

    def command(self, backends: list[Backend]) -> tuple[list[str], dict[str, str]]:
        twistd = Path(sys.executable).with_name("twistd")
        base = [str(twistd)] if twistd.exists() else [sys.executable, "-m", "twisted"]
        cmd = [
            *base,
            "-n",
            "--pidfile=",
            "wsbalancer",
            "--listen",
            f"tcp:{self.port}:interface=127.0.0.1{self.listen_extra}",
            "--admin-listen",
            f"tcp:{self.admin_port}:interface=127.0.0.1",
            "--set",
            "log.level=warn",
        ]
        for b in backends:
            cmd += ["--backend", b.url]
        for setting in self.settings:
            cmd += ["--set", setting]
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("WSBALANCER_") and k not in ("BE_URLS", "FE_ADDR", "ADM_ADDR")
        }
        # the checkout under test, even if the venv's editable install points elsewhere
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        return cmd, env


class WsBalancerSplice(WsBalancer):
    """The splice fast path: frames forwarded as they are (relay.mode: splice)."""

    name = "wsbalancer-splice"
    settings = ("workers=1", "relay.mode=splice")


class WsBalancerWorkers(WsBalancer):
    """One worker process per core sharing the listening socket (workers: auto)."""

    name = "wsbalancer-workers"
    settings = ("workers=auto",)

    def start(self, backends: list[Backend]) -> None:
        super().start(backends)
        # Measure only once every worker process accepts connections.
        wanted = len(os.sched_getaffinity(0))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                url = f"http://127.0.0.1:{self.admin_port}/balancer-metrics"
                with urllib.request.urlopen(url, timeout=2) as response:
                    if len(json.load(response).get("workers", [])) >= wanted:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name}: not all {wanted} worker processes came up")


class WsBalancerSpliceWorkers(WsBalancerWorkers):
    name = "wsbalancer-splice-workers"
    settings = ("workers=auto", "relay.mode=splice")


class TwistedFloor(Proxy):
    """bench/tcp_floor.py: Twisted's connection machinery with no WebSocket work, so a
    figure can be split into what the platform costs and what wsbalancer adds to it."""

    name = "twisted-floor"

    def command(self, backends: list[Backend]) -> tuple[list[str], dict[str, str]]:
        cmd = [sys.executable, str(BENCH / "tcp_floor.py"), str(self.port)]
        cmd += [str(b.port) for b in backends]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        return cmd, env


PROXIES: dict[str, type[Proxy]] = {
    "wsbalancer": WsBalancer,
    "wsbalancer-splice": WsBalancerSplice,
    "wsbalancer-workers": WsBalancerWorkers,
    "wsbalancer-splice-workers": WsBalancerSpliceWorkers,
    "twisted-floor": TwistedFloor,
}


class HAProxy(Proxy):
    name = "haproxy"
    nbthread = 1  # one thread, like wsbalancer's one process (bench/storm.py: as many as cores)
    maxconn: int | None = None  # default: what the file-descriptor limit allows
    bind_extra = ""  # e.g. " backlog 4096"

    def command(self, backends: list[Backend]) -> tuple[list[str], dict[str, str]]:
        maxconn = self.maxconn or max(1000, (CHILDREN.nofile[0] - 1000) // 2)
        servers = "\n".join(f"    server {b.name} 127.0.0.1:{b.port}" for b in backends)
        cfg = f"""\
global
    nbthread {self.nbthread}
    maxconn {maxconn}

defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-request 10s
    timeout tunnel 1h
    timeout client-fin 5s

frontend fe
    bind 127.0.0.1:{self.port}{self.bind_extra}
    default_backend be

backend be
    balance leastconn
{servers}
"""
        path = self.workdir / "haproxy.cfg"
        path.write_text(cfg)
        return ["haproxy", "-db", "-f", str(path)], dict(os.environ)


# ------------------------------------------------------------------------ the run


def scenarios(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    q = args.quick
    dur = args.duration if args.duration else (1.5 if q else 5.0)
    warm = 0.3 if q else 0.5
    return {
        "idle": {
            "scenario": "idle",
            "count": args.idle_sessions or (1000 if q else 5000),
            "concurrency": 100,
            "settle": 1.0 if q else 1.5,
        },
        "paced": {
            "scenario": "echo",
            "conns": 50,
            "rate": 5000,
            "size": 32,
            "duration": dur,
            "warmup": warm,
            "binary": not args.text,
        },
        "rtt": {
            "scenario": "echo",
            "conns": 1,
            "inflight": 1,
            "size": 32,
            "duration": dur,
            "warmup": warm,
            "binary": not args.text,
        },
        "pingpong": {
            "scenario": "echo",
            "conns": 50,
            "inflight": 1,
            "size": 32,
            "duration": dur,
            "warmup": warm,
            "binary": not args.text,
        },
        "pipelined": {
            "scenario": "echo",
            "conns": 10,
            "inflight": 32,
            "size": 32,
            "duration": dur,
            "warmup": warm,
            "binary": not args.text,
        },
        "large": {
            "scenario": "echo",
            "conns": 4,
            "inflight": 2,
            "size": 64 * 1024,
            "duration": dur,
            "warmup": warm,
            "binary": True,
        },
        "sessions": {
            "scenario": "sessions",
            "concurrency": 4,
            "size": 32,
            "duration": dur,
            "warmup": warm,
            "max_sessions": 20000,
        },
    }


class Subject:
    """One path under test (direct, or a proxy), started once and kept up while every
    scenario runs on every path in turn."""

    def __init__(
        self, mode: str, backends: list[Backend], workdir: Path, args: argparse.Namespace
    ) -> None:
        self.mode = mode
        self.proxy: Proxy | None = None
        self.result: dict[str, Any] = {"mode": mode, "seconds": 0.0}
        if mode in PROXIES:
            self.proxy = PROXIES[mode](workdir)
            if args.wsb_backlog:
                self.proxy.listen_extra = f":backlog={args.wsb_backlog}"
        elif mode == "haproxy":
            self.proxy = HAProxy(workdir)
        self.urls = [b.url for b in backends]
        self.metric_urls = [b.metric_url for b in backends]
        self.pids = {f"backend{i + 1}": b.proc.pid for i, b in enumerate(backends)}
        self.backends = backends

    @property
    def failed(self) -> bool:
        return "error" in self.result

    def start(self) -> None:
        """Start the proxy, check one echo goes through it, warm it up (not measured)."""
        t0 = time.monotonic()
        if self.proxy is not None:
            self.proxy.start(self.backends)
            self.urls = [self.proxy.url]
            self.result["pid"] = self.proxy.pid
            self.pids["proxy"] = self.proxy.pid
        probe = run_client({"scenario": "probe", "urls": self.urls, "timeout": 20}, 40)
        if not probe.get("all_ok"):
            raise RuntimeError(f"{self.mode}: no echo through it: {probe}")
        if self.proxy is not None:
            self.result["startup_s"] = time.monotonic() - t0
        # warm-up: JITs, allocator pools, the balancer's first poll
        warm = {"scenario": "echo", "urls": self.urls, "conns": 10, "inflight": 4, "size": 32}
        run_client(dict(warm, duration=0.5, warmup=0.2), 20)
        self.result["seconds"] += time.monotonic() - t0

    def run(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        """One measured run of one scenario; RuntimeError if the proxy died during it."""
        t0 = time.monotonic()
        budget = 60 + spec.get("duration", 0) * 3 + spec.get("count", 0) / 50
        drops = listen_drops()
        spec_run = dict(spec, urls=self.urls, pids=self.pids, metric_urls=self.metric_urls)
        out = run_client(spec_run, budget)
        out["listen_drops"] = listen_drops() - drops
        proc = self.proxy.proc if self.proxy is not None else None
        if proc is not None and proc.poll() is not None:
            assert self.proxy is not None
            self.result[f"{name}_failed_run"] = out  # what the load client saw of it
            raise RuntimeError(
                f"{self.mode} exited (code {proc.returncode}) during "
                f"{name}; its log:\n{self.proxy.log_tail()}"
            )
        wait_backends_idle(self.metric_urls)
        self.result["seconds"] += time.monotonic() - t0
        return out

    def fail(self, error: RuntimeError) -> None:
        self.result["error"] = str(error)
        print(f"\n  {self.mode}: FAILED: {error}", flush=True)
        self.stop()

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
            self.result.update(log_summary(self.proxy.log))
            self.proxy = None


def run_interleaved(subjects: list[Subject], args: argparse.Namespace) -> None:
    """Every scenario on every path, the paths taking turns run by run (the order rotated
    each round), so that drift in the machine's load over the run falls on every path alike
    instead of on whichever path ran during it. The median run of each is reported."""
    rounds = 0  # also rotates across scenarios, so that one run each (--quick) rotates too
    for name, spec in scenarios(args).items():
        repeat = 1 if name == "idle" else args.repeat  # idle holds thousands of sessions once
        runs: dict[str, list[dict[str, Any]]] = {s.mode: [] for s in subjects}
        by_round: list[dict[str, dict[str, Any]]] = []
        for r in range(repeat):
            live = [s for s in subjects if not s.failed and not (name == "idle" and not s.proxy)]
            turn = rounds % len(live) if live else 0
            rounds += 1
            by_round.append({})
            for s in live[turn:] + live[:turn]:
                print(f"  {name:<9} {r + 1}/{repeat} {s.mode:<25} ...", end="", flush=True)
                try:
                    out = s.run(name, spec)
                except RuntimeError as e:
                    s.fail(e)
                    continue
                runs[s.mode].append(out)
                by_round[-1][s.mode] = out
                print(f" {summary(name, out)}", flush=True)
        pair_with_haproxy(name, subjects, by_round)
        for s in subjects:
            done = runs[s.mode]
            if s.failed or not done:
                continue
            done.sort(key=lambda out: main_figure(name, out))
            out = done[len(done) // 2]
            out["repeats"] = [main_figure(name, r) for r in done]
            s.result[name] = out
            print(f"  {name:<9} median {s.mode:<25} {summary(name, out)}", flush=True)


# Scenarios whose figure is also compared with HAProxy's round by round, and what is compared.
PAIRED = {
    "paced": "proxy CPU µs per echo",
    "pingpong": "echoes/s",
    "pipelined": "echoes/s",
    "large": "MB/s",
    "sessions": "proxy CPU ms per session",
}


def paired_figure(name: str, out: dict[str, Any]) -> float | None:
    """The figure of one run that PAIRED compares (None when the run has none)."""
    if not out.get("ok"):
        return None
    pc = proxy_cpu(out)
    if name == "paced":
        return pc["cpu_s"] * 1e6 / out["echoes"] if pc and out["echoes"] else None
    if name == "sessions":
        return pc["cpu_s"] * 1e3 / out["sessions"] if pc and out["sessions"] else None
    if name == "large":
        return float(out["mbytes_per_s"])
    if name in PAIRED:
        return float(out["echoes_per_s"])
    return None


def pair_with_haproxy(
    name: str, subjects: list[Subject], by_round: list[dict[str, dict[str, Any]]]
) -> None:
    """Each path's figure over HAProxy's from the same round, and the median of those.

    The runs of one round follow each other within a minute, so a ratio taken inside a
    round sees one state of the machine; the medians of whole columns can each come from
    a different minute, and on a shared machine a proxy's CPU per message moves by a third
    between minutes."""
    if name not in PAIRED:
        return
    for s in subjects:
        if s.mode == "haproxy":
            continue
        ratios = []
        for outs in by_round:
            mine, theirs = outs.get(s.mode), outs.get("haproxy")
            a = paired_figure(name, mine) if mine else None
            b = paired_figure(name, theirs) if theirs else None
            if a is not None and b:
                ratios.append(round(a / b, 3))
        if ratios:
            s.result.setdefault("paired", {})[name] = {
                "ratios": ratios,
                "median": statistics.median(ratios),
            }


def paired_table(results: dict[str, dict[str, Any]], modes: list[str]) -> str:
    """The per-round ratios to HAProxy, as a table (empty without HAProxy in the run)."""
    paired = [m for m in modes if results[m].get("paired")]
    if not paired:
        return ""
    lines = [
        "| ÷ HAProxy's, same round: median (each round) | " + " | ".join(paired) + " |",
        "|---|" + "---:|" * len(paired),
    ]
    for name, what in PAIRED.items():
        cells = []
        for m in paired:
            p = results[m]["paired"].get(name)
            each = ", ".join(f"{r:.2f}" for r in p["ratios"]) if p else ""
            cells.append(f"{p['median']:.2f}× ({each})" if p else "n/a")
        lines.append(f"| {name}: {what} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_scale(
    mode: str, backends: list[Backend], workdir: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """--scale: RSS per idle session at several session counts (each on a fresh proxy), and
    proxy CPU per echo at 5,000 echoes/s spread over 100 and over 5,000 sessions."""
    scale: dict[str, Any] = {"idle": {}, "paced": {}}
    metric_urls = [b.metric_url for b in backends]
    counts = [c for c in (1000, 5000, 10000) if 2 * c + 500 <= CHILDREN.nofile[0]]
    if len(counts) < 3:
        counts.append((CHILDREN.nofile[0] - 1000) // 2 // 500 * 500)  # as many as fds allow
    cls = {**PROXIES, "haproxy": HAProxy}
    for count in counts:
        proxy = cls[mode](workdir)
        try:
            proxy.start(backends)
            spec = {
                "scenario": "idle",
                "count": count,
                "concurrency": 100,
                "settle": 1.5,
                "urls": [proxy.url],
                "pids": {"proxy": proxy.pid},
                "metric_urls": metric_urls,
            }
            print(f"  {mode:<10} idle {count:>6} ...", end="", flush=True)
            out = run_client(spec, 120 + count / 25)
            print(f" {summary('idle', out)}", flush=True)
            scale["idle"][str(count)] = out.get("rss_per_session_kib") if out.get("ok") else None
        finally:
            proxy.stop()
        wait_backends_idle(metric_urls, 30)
    proxy = cls[mode](workdir)
    runs: dict[str, list[float | None]] = {"100": [], "5000": []}
    try:
        proxy.start(backends)
        # Alternated, repeated and the median kept, as in the other scenarios: one window
        # of a few seconds on a shared machine can be off by a third.
        for conns in [100, 5000] * args.repeat:
            spec = {
                "scenario": "echo",
                "conns": conns,
                "rate": 5000,
                "size": 32,
                "duration": args.duration or 5.0,
                "warmup": 1.0,
                "binary": True,
                "urls": [proxy.url],
                "pids": {"proxy": proxy.pid},
                "metric_urls": metric_urls,
            }
            print(f"  {mode:<10} paced {conns:>5} conns ...", end="", flush=True)
            out = run_client(spec, 180)
            pc = proxy_cpu(out) if out.get("ok") else None
            us = pc["cpu_s"] * 1e6 / out["echoes"] if pc and out["echoes"] else None
            print(f" {fmt(us, 1)} µs/echo at {fmt(out.get('echoes_per_s'))} echoes/s", flush=True)
            runs[str(conns)].append(us)
            wait_backends_idle(metric_urls, 30)
    finally:
        proxy.stop()
    for conns, figures in runs.items():
        done = sorted(f for f in figures if f is not None)
        scale["paced"][conns] = done[len(done) // 2] if len(done) == len(figures) else None
    scale["paced_runs"] = runs
    return scale


def log_summary(path: Path) -> dict[str, Any]:
    """What the proxy logged beyond its start-up lines: counts by level, a few samples."""
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return {}
    levels: dict[str, int] = {}
    sample: list[str] = []
    seen: set[str] = set()
    for ln in lines:
        if re.search(r"\[(twisted\.[\w.]+#\w+|-)\]", ln):
            continue  # twistd's own start/stop lines and factories' "starting on"
        if re.search(r"\bProxy \w+ stopped \(cumulated conns", ln):
            continue  # HAProxy's ordinary lines when it is stopped
        m = re.search(r"#(\w+)\]", ln) or re.search(r"\[(ALERT|WARNING|NOTICE)\]", ln)
        level = m.group(1).lower() if m else "other"
        levels[level] = levels.get(level, 0) + 1
        shape = re.sub(r"\d+", "N", ln[26:])[:60]
        if shape not in seen and len(sample) < 3:
            seen.add(shape)
            sample.append(ln)
    return {"log_lines": sum(levels.values()), "log_levels": levels, "log_sample": sample}


def listen_drops() -> int:
    """Machine-wide TcpExt ListenDrops: SYNs dropped because a listen backlog was full."""
    try:
        rows = [
            ln.split()
            for ln in Path("/proc/net/netstat").read_text().splitlines()
            if ln.startswith("TcpExt:")
        ]
        return int(dict(zip(rows[0][1:], rows[1][1:], strict=False)).get("ListenDrops", 0))
    except (OSError, IndexError, ValueError):
        return 0


def machine_busy(seconds: float = 1.0) -> float:
    """Share of all CPUs busy over `seconds`, before anything is started."""

    def ticks() -> tuple[int, int]:
        v = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:9]]
        return v[3] + v[4], sum(v)

    i0, t0 = ticks()
    time.sleep(seconds)
    i1, t1 = ticks()
    return 100.0 * (1 - (i1 - i0) / max(1, t1 - t0))


def wait_backends_idle(metric_urls: list[str], timeout: float = 15.0) -> None:
    """Let the sessions of one scenario end before the next starts (bounded)."""
    import urllib.request

    until = time.monotonic() + timeout
    while time.monotonic() < until:
        total = 0
        try:
            for url in metric_urls:
                with urllib.request.urlopen(url, timeout=2) as r:
                    total += int(json.loads(r.read())["agentsConnections"])
        except (OSError, ValueError, KeyError):
            total = -1
        if total == 0:
            return
        time.sleep(0.2)


def main_figure(name: str, out: dict[str, Any]) -> float:
    """The figure a scenario's repetitions are ranked by (the median one is reported)."""
    if not out.get("ok"):
        return float("-inf")
    if name == "paced":
        pc = proxy_cpu(out)
        if pc and out["echoes"]:
            return round(float(pc["cpu_s"]) * 1e6 / out["echoes"], 2)
        return float(out["echoes_per_s"])
    if name == "rtt":
        return float(out["lat_ms"]["p50"])
    if name == "sessions":
        return float(out["sessions_per_s"])
    if name == "idle":
        return float(out.get("rss_per_session_kib") or 0.0)
    if name == "large":
        return float(out["mbytes_per_s"])
    return float(out["echoes_per_s"])


def summary(name: str, out: dict[str, Any]) -> str:
    if not out.get("ok"):
        return f"ERROR {out.get('error', '')[:200]}"
    if name == "idle":
        return (
            f"{out['opened']}/{out['count']} open, "
            f"{fmt(out.get('rss_per_session_kib'), 1)} KiB/session"
        )
    if name == "sessions":
        return f"{out['sessions_per_s']:.0f} sessions/s, errors {out['errors']}"
    if name == "large":
        return f"{out['mbytes_per_s']:.1f} MB/s"
    runs = f" (per run {out['repeats']})" if out.get("repeats") else ""
    if name == "paced":
        pc = proxy_cpu(out)
        us = ""
        if pc and out["echoes"]:
            us = f", proxy {pc['cpu_s'] * 1e6 / out['echoes']:.1f} µs/echo"
        return f"{out['echoes_per_s']:.0f} echoes/s{us}{runs}"
    if name == "rtt":
        return f"p50 {out['lat_ms']['p50']:.3f} ms{runs}"
    return f"{out['echoes_per_s']:.0f} echoes/s"


# ------------------------------------------------------------------------ the report


def fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def proxy_cpu(out: dict[str, Any]) -> dict[str, Any] | None:
    procs = (out.get("cpu") or {}).get("procs") or {}
    return procs.get("proxy")


def figures(res: dict[str, Any]) -> dict[str, Any]:
    """The table's figures for one mode (None where not measured or not applicable)."""
    f: dict[str, Any] = {}

    def ok(name: str) -> dict[str, Any] | None:
        out = res.get(name)
        return out if out and out.get("ok") else None

    for name, label in (("paced", "pc"), ("rtt", "rtt"), ("pingpong", "pp"), ("pipelined", "pl")):
        out = ok(name)
        if out:
            f[f"{label}_rate"] = out["echoes_per_s"]
            pc = proxy_cpu(out)
            f[f"{label}_cpu_us"] = (
                pc["cpu_s"] * 1e6 / out["echoes"] if pc and out["echoes"] else None
            )
            f[f"{label}_proxy_pct"] = pc["pct_core"] if pc else None
            us = f[f"{label}_cpu_us"]
            f[f"{label}_ceiling"] = 1e6 / us if us else None
            f[f"{label}_p50"] = out["lat_ms"]["p50"]
            f[f"{label}_p99"] = out["lat_ms"]["p99"]
    out = ok("large")
    if out:
        f["large_mbps"] = out["mbytes_per_s"]
        pc = proxy_cpu(out)
        f["large_proxy_pct"] = pc["pct_core"] if pc else None
        mb = out["echoes"] * out["size"] / 1e6
        f["large_cpu_ms"] = pc["cpu_s"] * 1e3 / mb if pc and mb else None
    out = ok("sessions")
    if out:
        f["sess_rate"] = out["sessions_per_s"]
        pc = proxy_cpu(out)
        f["sess_cpu_ms"] = pc["cpu_s"] * 1e3 / out["sessions"] if pc and out["sessions"] else None
        f["sess_proxy_pct"] = pc["pct_core"] if pc else None
        f["sess_ceiling"] = 1e3 / f["sess_cpu_ms"] if f["sess_cpu_ms"] else None
    out = ok("idle")
    if out:
        f["idle_kib"] = out["rss_per_session_kib"]
        f["idle_open"] = f"{out['opened']:,}/{out['count']:,}"
        f["idle_open_s"] = out["open_s"]
        f["idle_rss_mib"] = (
            f"{out['rss_before_kib'] / 1024:.0f} → "
            f"{out['rss_after_kib'] / 1024:.0f} → "
            f"{out['rss_closed_kib'] / 1024:.0f}"
            if out.get("rss_before_kib") is not None
            else None
        )
        f["idle_split"] = " / ".join(str(c) for c in out["backend_counts_during"])
    errors = 0
    for name in ("paced", "rtt", "pingpong", "pipelined", "large", "sessions", "idle"):
        out = res.get(name)
        if out is None:
            continue
        if not out.get("ok"):
            errors += 1
            continue
        errors += (
            out.get("errors", 0)
            + out.get("dropped", 0)
            + out.get("bad_echoes", 0)
            + out.get("dropped_while_idle", 0)
            + out.get("undrained", 0)
        )
    f["errors"] = errors if res.get("ran") else None
    return f


ROWS = [
    ("pc_cpu_us", "32 B paced, 50 conns, 5,000 echoes/s: proxy CPU µs per echo", 1),
    ("pc_rate", "  echoes/s achieved", 0),
    ("pc_p99", "  round trip p99 / ms", 2),
    ("rtt_p50", "32 B ping-pong, 1 conn: round trip p50 / ms", 3),
    ("rtt_p99", "  round trip p99 / ms", 3),
    ("pp_rate", "32 B ping-pong, 50 conns: echoes/s", 0),
    ("pp_p50", "  round trip p50 / ms", 2),
    ("pp_p99", "  round trip p99 / ms", 2),
    ("pp_cpu_us", "  proxy CPU µs per echo", 1),
    ("pp_proxy_pct", "  proxy CPU % of one core", 0),
    ("pp_ceiling", "  ≈ echoes/s one proxy core could carry (10⁶ / µs)", 0),
    ("pl_rate", "32 B pipelined, 10 conns × 32 in flight: echoes/s", 0),
    ("pl_cpu_us", "  proxy CPU µs per echo", 1),
    ("pl_proxy_pct", "  proxy CPU % of one core", 0),
    ("pl_ceiling", "  ≈ echoes/s one proxy core could carry (10⁶ / µs)", 0),
    ("large_mbps", "64 KiB echo, 4 conns × 2 in flight: MB/s", 1),
    ("large_cpu_ms", "  proxy CPU ms per MB echoed", 2),
    ("large_proxy_pct", "  proxy CPU % of one core", 0),
    ("sess_rate", "new sessions/s (connect, 1 echo, close; 4 at a time)", 0),
    ("sess_cpu_ms", "  proxy CPU ms per session", 3),
    ("sess_proxy_pct", "  proxy CPU % of one core", 0),
    ("sess_ceiling", "  ≈ sessions/s one proxy core could carry (10³ / ms)", 0),
    ("idle_kib", "RSS per idle relayed session / KiB", 1),
    ("idle_open", "  idle sessions opened", 0),
    ("idle_open_s", "  time to open them / s", 1),
    ("idle_rss_mib", "  proxy RSS before → with → after / MiB", 0),
    ("idle_split", "  sessions per backend", 0),
    ("errors", "errors, drops, bad echoes (all scenarios)", 0),
]


def table(results: dict[str, dict[str, Any]], modes: list[str]) -> str:
    figs = {m: figures(results[m]) for m in modes}
    head = "| figure | " + " | ".join(modes) + " |"
    sep = "|---|" + "|".join("---:" for _ in modes) + "|"
    lines = [head, sep]
    for key, label, digits in ROWS:
        cells = []
        for m in modes:
            if not results[m].get("ran"):
                cells.append("n/a")
            else:
                cells.append(fmt(figs[m].get(key), digits))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def scale_table(results: dict[str, dict[str, Any]], modes: list[str]) -> str:
    """--scale figures: memory per idle session and CPU per echo as sessions grow."""
    scaled = [m for m in modes if results[m].get("scale")]
    lines = ["| scale figure | " + " | ".join(scaled) + " |", "|---|" + "---:|" * len(scaled)]
    first = results[scaled[0]]["scale"] if scaled else {"idle": {}, "paced": {}}
    for count in first["idle"]:
        cells = [fmt(results[m]["scale"]["idle"].get(count), 1) for m in scaled]
        label = f"RSS per idle session at {int(count):,} sessions / KiB"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for conns in first["paced"]:
        cells = [fmt(results[m]["scale"]["paced"].get(conns), 1) for m in scaled]
        label = f"proxy CPU µs per echo, 5,000 echoes/s over {int(conns):,} sessions"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for m in scaled:
        paced = results[m]["scale"]["paced"]
        low, high = paced.get("100"), paced.get("5000")
        if low and high:
            pad = " |" * (len(scaled) - 1)
            lines.append(f"| {m}: cost at 5,000 vs 100 sessions | {high / low:.2f}× |{pad}")
    return "\n".join(lines)


def load_table(
    results: dict[str, dict[str, Any]],
    modes: list[str],
    nproc: int,
) -> tuple[str, list[str]]:
    """Who was busy in each measured window, and the notes that follow from it."""
    lines = [
        "| scenario / path | client % | proxy % | backends % | other % | machine busy % |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    notes: list[str] = []
    others: list[float] = []
    cause: dict[str, list[str]] = {"proxy": [], "client": [], "backend": [], "machine": []}
    for name in ("paced", "rtt", "pingpong", "pipelined", "large", "sessions"):
        for m in modes:
            out = results[m].get(name)
            if not out or not out.get("ok"):
                continue
            cpu = out["cpu"]
            client = cpu["client"]["pct_core"]
            procs = cpu["procs"]
            proxy = procs.get("proxy", {}) or {}
            backends = [v["pct_core"] for k, v in procs.items() if k.startswith("backend") and v]
            busy = cpu.get("machine_busy_pct") or 0.0
            watched = client + sum(backends) + (proxy.get("pct_core") or 0.0)
            other = max(0.0, busy * nproc - watched)
            lines.append(
                f"| {name} / {m} | {client:.0f} | "
                f"{fmt(proxy.get('pct_core'))} | "
                f"{' + '.join(f'{b:.0f}' for b in backends)} | {other:.0f} | "
                f"{busy:.0f} |"
            )
            what = f"{name}/{m}"
            others.append(other)
            if proxy.get("pct_core", 0) >= 90:
                cause["proxy"].append(f"{what} ({proxy['pct_core']:.0f}%)")
            elif client >= 90:
                cause["client"].append(f"{what} ({client:.0f}%)")
            elif backends and max(backends) >= 90:
                cause["backend"].append(f"{what} ({max(backends):.0f}%)")
            elif busy >= 85:
                cause["machine"].append(f"{what} ({busy:.0f}%)")
    texts = {
        "proxy": "The proxy used ≥90% of its one core, so the proxy is the bottleneck, in: ",
        "client": "The load client used ≥90% of a core, so it limited the figure, in: ",
        "backend": "A backend used ≥90% of a core, so it limited the figure, in: ",
        "machine": (
            f"The machine was (nearly) saturated (≥85% of {nproc} CPUs busy) with "
            f"no single process at 90%, so the machine rather than the proxy limited "
            f"the figure, in: "
        ),
    }
    for key, text in texts.items():
        if cause[key]:
            notes.append(text + ", ".join(cause[key]) + ".")
    if others:
        avg = sum(others) / len(others)
        if avg >= 30:
            notes.append(
                f"On average {avg:.0f}% of a core per window went to work outside "
                f"the client, proxy and backends (the kernel's loopback TCP "
                f"processing, and any other process on this machine)."
            )
    return "\n".join(lines), notes


def problems(results: dict[str, dict[str, Any]], modes: list[str]) -> list[str]:
    out: list[str] = []
    for m in modes:
        res = results[m]
        if res.get("error"):
            out.append(f"{m}: {res['error']}")
        for name in ("paced", "rtt", "pingpong", "pipelined", "large", "sessions", "idle"):
            r = res.get(name)
            if r is None:
                continue
            if not r.get("ok"):
                out.append(f"{m} {name}: {r.get('error')}")
                continue
            bits = []
            for key in (
                "errors",
                "dropped",
                "bad_echoes",
                "undrained",
                "dropped_while_idle",
                "listen_drops",
            ):
                if r.get(key):
                    bits.append(f"{key}={r[key]}")
            if r.get("error_kinds"):
                bits.append(f"kinds={r['error_kinds']}")
            if r.get("close_codes") and set(r["close_codes"]) - {"1000"}:
                bits.append(f"close codes={r['close_codes']}")
            if name == "idle":
                if r.get("still_open") != r.get("opened"):
                    bits.append(
                        f"only {r.get('still_open')} of {r.get('opened')} still open "
                        f"at the RSS reading"
                    )
                if any(c not in (0, None) for c in r.get("backend_counts_after", [])):
                    bits.append(
                        f"backends still had {r['backend_counts_after']} sessions "
                        f"{r['close_s']:.0f}s after the client closed them"
                    )
                if not str(r.get("probe_echoes", "")).startswith(str(min(50, r.get("opened", 0)))):
                    bits.append(f"echo on idle sessions: {r.get('probe_echoes')}")
            if bits:
                out.append(f"{m} {name}: " + ", ".join(bits))
        if res.get("log_lines"):
            levels = ", ".join(f"{n} {lvl}" for lvl, n in sorted(res["log_levels"].items()))
            out.append(
                f"{m} wrote {res['log_lines']} log lines with log level warn "
                f"({levels}); e.g.:\n    " + "\n    ".join(ln[:220] for ln in res["log_sample"])
            )
    return out


# ------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Direct vs wsbalancer vs HAProxy, side by side (prints figures)."
    )
    parser.add_argument(
        "--quick", action="store_true", help="short windows (1.5 s) and 1,000 idle sessions, for CI"
    )
    parser.add_argument("--json", metavar="FILE", help="also write all results as JSON")
    parser.add_argument(
        "--only",
        metavar="MODES",
        help="comma-separated subset of: " + ",".join(MODES + EXTRA_MODES),
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also run twisted-floor: a bare Twisted TCP relay (bench/tcp_floor.py), "
        "what the platform costs before any WebSocket work",
    )
    parser.add_argument("--duration", type=float, help="seconds per measured window")
    parser.add_argument(
        "--scale",
        action="store_true",
        help="also: RSS per idle session at 1k/5k/10k sessions, CPU per echo at 100 and 5k",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        help="repetitions of each scenario, the median reported (default 3; quick 1)",
    )
    parser.add_argument("--idle-sessions", type=int, help="idle sessions to open")
    parser.add_argument(
        "--text",
        action="store_true",
        help="send the 32 B messages as text frames (default: binary)",
    )
    parser.add_argument(
        "--wsb-backlog",
        type=int,
        metavar="N",
        help="listen backlog for wsbalancer (default: wsbalancer's own, 1024)",
    )
    args = parser.parse_args(argv)

    modes = list(MODES)
    if args.only:
        modes = [m.strip() for m in args.only.split(",") if m.strip()]
        bad = [m for m in modes if m not in MODES + EXTRA_MODES]
        if bad:
            parser.error(f"--only: unknown {bad}; choose from {','.join(MODES + EXTRA_MODES)}")
    if args.floor and "twisted-floor" not in modes:
        modes.insert(modes.index("haproxy") if "haproxy" in modes else len(modes), "twisted-floor")
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if not 1 <= args.repeat <= 15:
        parser.error("--repeat: between 1 and 15")
    if args.duration is not None and not 0.2 <= args.duration <= 120:
        parser.error("--duration: between 0.2 and 120 seconds")
    if args.idle_sessions is not None and not 1 <= args.idle_sessions <= 20000:
        parser.error("--idle-sessions: between 1 and 20000")

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    atexit.register(CHILDREN.stop_all)
    started = time.monotonic()
    nofile = raise_nofile()
    ensure_node_deps()
    info = machine_info()
    have_haproxy = shutil.which("haproxy") is not None
    idle_wanted = args.idle_sessions or (1000 if args.quick else 5000)
    if nofile[0] < 2 * idle_wanted + 500:
        print(
            f"bench: warning: RLIMIT_NOFILE is {nofile[0]}, too low for "
            f"{idle_wanted} idle sessions through a proxy",
            flush=True,
        )

    info["busy_before_pct"] = round(machine_busy(), 1)
    print(
        f"machine: {info['nproc']} CPUs, {info['cpu_model']}, {info['mem_gib']} GiB, "
        f"Linux {info['kernel']}"
    )
    print("versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    if info["busy_before_pct"] >= 15:
        print(
            f"bench: warning: the machine is already {info['busy_before_pct']:.0f}% busy "
            f"(other processes); the figures will be low and noisy",
            flush=True,
        )
    print(
        f"mode: {'quick' if args.quick else 'full'}; RLIMIT_NOFILE {nofile[0]}; "
        f"paths: {', '.join(modes)}",
        flush=True,
    )

    results: dict[str, dict[str, Any]] = {m: {"mode": m, "ran": False} for m in modes}
    try:
        with tempfile.TemporaryDirectory(prefix="wsbalancer-bench-") as tmp:
            workdir = Path(tmp)
            backends = [Backend("b1"), Backend("b2")]
            subjects: list[Subject] = []
            for mode in modes:
                if mode == "haproxy" and not have_haproxy:
                    results[mode]["error"] = "haproxy is not installed (apt-get install -y haproxy)"
                    print("  haproxy    not installed: column is n/a", flush=True)
                    continue
                subject = Subject(mode, backends, workdir, args)
                print(f"  starting {mode} ...", flush=True)
                try:
                    subject.start()
                except RuntimeError as e:
                    subject.fail(e)
                subjects.append(subject)
                results[mode] = subject.result
            run_interleaved(subjects, args)
            for subject in subjects:
                subject.stop()
            # --scale afterwards, one path at a time with nothing else up, as it starts
            # fresh proxies of its own
            for subject in subjects:
                res = subject.result
                if args.scale and subject.mode != "direct" and "error" not in res:
                    t = time.monotonic()
                    try:
                        res["scale"] = run_scale(subject.mode, backends, workdir, args)
                    except RuntimeError as e:
                        res["scale_error"] = str(e)
                    res["seconds"] += time.monotonic() - t
                res["ran"] = "error" not in res
            for b in backends:
                CHILDREN.stop(b.proc)
    except KeyboardInterrupt:
        print("\nbench: interrupted; stopping child processes", flush=True)
        CHILDREN.stop_all()
        return 130
    finally:
        CHILDREN.stop_all()

    elapsed = time.monotonic() - started
    print()
    print(
        f"## wsbalancer benchmark ({'quick' if args.quick else 'full'}, "
        f"{elapsed:.0f} s, {time.strftime('%Y-%m-%d %H:%M')})"
    )
    print()
    print(
        f"Machine: {info['nproc']} CPUs ({info['cpu_model']}), {info['mem_gib']} GiB; "
        + ", ".join(f"{k} {v}" for k, v in info["versions"].items())
        + "."
    )
    print(
        "Everything (load client, 2 echo backends, proxy) shares this machine; "
        f"it was {info['busy_before_pct']:.0f}% busy before the run started."
    )
    print(
        "Time each path was measured (the paths took turns, scenario by scenario): "
        + ", ".join(
            f"{m} {results[m]['seconds']:.0f} s" for m in modes if results[m].get("seconds")
        )
        + "."
    )
    print()
    print(table(results, modes))
    print()
    pairs = paired_table(results, modes)
    if pairs:
        print(pairs)
        print()
    if args.scale:
        print(scale_table(results, modes))
        print()
    load, notes = load_table(results, modes, info["nproc"])
    if info["busy_before_pct"] >= 15:
        notes.insert(
            0,
            f"The machine was already {info['busy_before_pct']:.0f}% busy before "
            f"the run (other processes): every figure is low and noisy.",
        )
    print("CPU during each measured window (% of one core; machine busy = % of all cores):")
    print()
    print(load)
    print()
    if notes:
        print("Notes:")
        for n in notes:
            print(f"- {n}")
        print()
    probs = problems(results, modes)
    if probs:
        print("Problems seen:")
        for p in probs:
            print(f"- {p}")
        print()

    if args.json:
        doc = {
            "machine": info,
            "quick": args.quick,
            "elapsed_s": elapsed,
            "scenarios": scenarios(args),
            "results": results,
            "figures": {m: figures(results[m]) for m in modes},
            "notes": notes,
            "problems": probs,
        }
        Path(args.json).write_text(json.dumps(doc, indent=2, default=str))
        print(f"JSON written to {args.json}")
    ran_any = any(results[m].get("ran") for m in modes)
    return 0 if ran_any else 1


if __name__ == "__main__":
    sys.exit(main())
