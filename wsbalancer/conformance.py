"""Autobahn TestSuite conformance through the balancer: `wsbalancer-conformance`.

Starts an echo backend and the balancer (each its own process, as in production), drives
the Autobahn RFC 6455 cases at the balancer with a fuzzing client, and writes the per-case
JSON/HTML reports plus a summary (verdicts per case group) into one folder.

The runner is swappable: `kosoku` (PyPI, Python 3, Autobahn's own case files) by default,
or the official `wstest` (`--runner wstest`, or any command through `--runner-cmd`), whose
reports have the same `index.json` layout and are read the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PASSING = {"OK", "NON-STRICT", "INFORMATIONAL"}
ALL_GROUPS = [str(n) for n in (1, 2, 3, 4, 5, 6, 7, 9, 10, 12, 13)]

# Cases that cannot pass by design, with the RFC section that says why. Starts empty.
ALLOW_LIST: dict[str, str] = {}


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


def bin_path(name: str) -> str:
    """A console script of this environment (next to the running interpreter)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def start_echo_backend(children: list[subprocess.Popen[Any]], compression: bool, log: Any) -> int:
    """The demo backend in echo mode, in its own process."""
    port = free_port()
    cmd = [bin_path("wsbalancer-demo-backend"), "--port", str(port), "--name", "echo"]
    if not compression:
        cmd.append("--no-compression")
    child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    children.append(child)
    wait_port(port, process=child)
    return port


def start_balancer(
    children: list[subprocess.Popen[Any]],
    backend_port: int,
    log: Any,
    tls: tuple[str, str] | None = None,
) -> int:
    """The balancer under twistd, in its own process, in front of the backend."""
    port, admin = free_port(), free_port()
    listen = f"tcp:{port}:interface=127.0.0.1"
    if tls is not None:
        listen = f"ssl:{port}:interface=127.0.0.1:privateKey={tls[1]}:certKey={tls[0]}"
    cmd = [
        bin_path("twistd"),
        "-n",
        "--pidfile=",
        "wsbalancer",
        "--listen",
        listen,
        "--admin-listen",
        f"tcp:{admin}:interface=127.0.0.1",
        "--backend",
        f"ws://127.0.0.1:{backend_port}",
        "--set",
        "log.level=warn",
    ]
    child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env())
    children.append(child)
    wait_port(port, process=child)
    return port


def _env() -> dict[str, str]:
    # The balancer must not pick up a configuration meant for something else.
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("WSBALANCER_") and k not in ("BE_URLS", "FE_ADDR", "ADM_ADDR")
    }


def runner_command(
    runner: str, runner_cmd: str | None, target: str, cases: list[str], parallel: int, outdir: Path
) -> list[str]:
    """The fuzzing-client command line for the chosen runner."""
    if runner_cmd:
        return runner_cmd.format(target=target, outdir=str(outdir), cases=",".join(cases)).split()
    if runner == "kosoku":
        cmd = [
            bin_path("kosoku"),
            "-m",
            "fuzzingclient",
            target,
            "-p",
            str(parallel),
            "-o",
            str(outdir),
        ]
        for case in cases:
            cmd += ["-i", case]
        return cmd
    if runner == "wstest":
        spec = outdir / "fuzzingclient.json"
        spec.write_text(
            json.dumps(
                {
                    "outdir": str(outdir),
                    "servers": [{"agent": "wsbalancer", "url": f"ws://{target}"}],
                    "cases": cases,
                    "exclude-cases": [],
                    "exclude-agent-cases": {},
                }
            )
        )
        return ["wstest", "-m", "fuzzingclient", "-s", str(spec)]
    raise ValueError(f"unknown runner {runner!r}")


def read_results(outdir: Path) -> dict[str, dict[str, Any]]:
    """Per-case results from the runner's index.json (one agent)."""
    index = json.loads((outdir / "index.json").read_text())
    merged: dict[str, dict[str, Any]] = {}
    for cases in index.values():
        merged.update(cases)
    return merged


def case_key(case: str) -> tuple[int, ...]:
    """Sort key: 1.2.10 after 1.2.9."""
    return tuple(int(p) for p in case.split(".") if p.isdigit())


def summarise(results: dict[str, dict[str, Any]], expected_groups: list[str]) -> dict[str, Any]:
    """Counts per verdict per case group, and the cases that fail the promise."""
    table: dict[str, Counter[str]] = defaultdict(Counter)
    failing = []
    for case, result in sorted(results.items(), key=lambda kv: case_key(kv[0])):
        group = case.split(".")[0]
        behavior = result.get("behavior", "MISSING")
        close = result.get("behaviorClose", "MISSING")
        table[group][behavior] += 1
        close_ok = close in {"OK", "INFORMATIONAL"}
        if (behavior not in PASSING or not close_ok) and case not in ALLOW_LIST:
            failing.append(f"{case}: {behavior}/{close}")
    missing = [g for g in expected_groups if g not in table]
    return {
        "groups": {g: dict(c) for g, c in sorted(table.items(), key=lambda kv: int(kv[0]))},
        "total": len(results),
        "failing": failing,
        "missing_groups": missing,
        "allow_list": ALLOW_LIST,
    }


def markdown_table(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table: case groups x verdicts."""
    verdicts = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]
    lines = ["| group | " + " | ".join(verdicts) + " |", "|---|" + "---|" * len(verdicts)]
    for group, counts in summary["groups"].items():
        lines.append(f"| {group}.* | " + " | ".join(str(counts.get(v, 0)) for v in verdicts) + " |")
    return "\n".join(lines)


def run_client_leg(
    outdir: Path,
    cases: list[str],
    parallel: int,
    runner: str,
    runner_cmd: str | None,
    compression: bool = True,
    tls: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """Fuzzing client -> balancer -> echo backend; returns the summary."""
    outdir.mkdir(parents=True, exist_ok=True)
    with open(outdir / "processes.log", "w") as log, processes() as children:
        backend = start_echo_backend(children, compression, log)
        port = start_balancer(children, backend, log, tls)
        cmd = runner_command(runner, runner_cmd, f"127.0.0.1:{port}", cases, parallel, outdir)
        started = time.monotonic()
        completed = subprocess.run(cmd, capture_output=True, text=True)
        elapsed = time.monotonic() - started
        (outdir / "runner.log").write_text(completed.stdout + completed.stderr)
    if not (outdir / "index.json").exists():
        raise RuntimeError(
            f"the runner wrote no index.json (exit {completed.returncode}): "
            f"{(completed.stderr or completed.stdout)[-500:]}"
        )
    groups = sorted({c.split(".")[0].strip("*") for c in cases}, key=int)
    summary = summarise(read_results(outdir), groups)
    summary["seconds"] = round(elapsed, 1)
    summary["command"] = " ".join(cmd)
    (outdir / "summary.json").write_text(json.dumps(summary, indent=1))
    (outdir / "summary.md").write_text(markdown_table(summary) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    """Command line: exit 0 when every case is OK, NON-STRICT or INFORMATIONAL."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="reports/conformance", help="report folder")
    parser.add_argument(
        "--cases",
        default=",".join(f"{g}.*" for g in ALL_GROUPS),
        help="comma-separated case globs (default: all, 1.* to 13.*)",
    )
    parser.add_argument("-p", "--parallel", type=int, default=2)
    parser.add_argument("--runner", choices=["kosoku", "wstest"], default="kosoku")
    parser.add_argument(
        "--runner-cmd",
        default=None,
        help="custom fuzzing-client command with {target} {outdir} {cases}",
    )
    args = parser.parse_args(argv)
    if args.runner == "wstest" and not args.runner_cmd and not shutil.which("wstest"):
        parser.error(
            "wstest is not on PATH (it needs Python 2, or use its container image "
            "through --runner-cmd)"
        )
    out = Path(args.out)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    summary = run_client_leg(out / "client-leg", cases, args.parallel, args.runner, args.runner_cmd)
    print(f"client leg: {summary['total']} cases in {summary['seconds']}s")
    print(markdown_table(summary))
    if summary["failing"] or summary["missing_groups"]:
        print("FAILING: " + ", ".join(summary["failing"] + summary["missing_groups"]))
        return 1
    print(f"allow-list: {len(ALLOW_LIST)} cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
