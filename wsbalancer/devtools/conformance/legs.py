"""The conformance legs themselves: for each, the processes it needs, the runner passes
(the slow cases one at a time after the rest), and its summary; `run_legs` runs the chosen
ones in turn and writes the summary of all of them."""

from __future__ import annotations

import json
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from wsbalancer.devtools.conformance.cases import NO_COUNT_GROUPS, TLS_CASES, split_serial
from wsbalancer.devtools.conformance.report import markdown_table, merge_serial, write_summary
from wsbalancer.devtools.conformance.runners import run_in_own_loop, runner_command, testee
from wsbalancer.devtools.conformance.servers import (
    make_certificate,
    start_balancer,
    start_echo_backend,
    start_plain_echo_backend,
    tls_forwarder,
)
from wsbalancer.devtools.processes import bin_path, free_port, processes, wait_port


def run_client_leg(
    outdir: Path,
    cases: list[str],
    parallel: int,
    runner: str = "kosoku",
    runner_cmd: str | None = None,
    backend_compression: bool = True,
    tls: bool = False,
    extra_settings: tuple[str, ...] = (),
    no_count: bool = False,
) -> dict[str, Any]:
    """Fuzzing client -> balancer -> echo backend; returns the summary. `no_count`: the
    backend is a plain echo server without a count endpoint, given by `BE_URLS`, and the
    balancer runs on its defaults."""
    outdir.mkdir(parents=True, exist_ok=True)
    settings = ["compression.backend=mirror"] if backend_compression and not no_count else []
    settings += extra_settings
    with open(outdir / "processes.log", "w") as log, processes() as children:
        certificate = make_certificate(outdir) if tls else None
        if no_count:
            backend = start_plain_echo_backend(children, log)
        else:
            backend = start_echo_backend(children, backend_compression, log)
        port = start_balancer(
            children, backend, log, settings, certificate, by_environment=no_count
        )
        with ExitStack() as stack:
            if certificate is not None:  # kosoku speaks ws:// only: a TLS pipe in between
                port = stack.enter_context(tls_forwarder(port, certificate[0]))
            target = f"127.0.0.1:{port}"
            # A custom command cannot be told what to exclude: it runs everything at once.
            rest, serial = split_serial(cases) if not runner_cmd else (cases, [])
            passes = [(rest, serial, parallel, outdir)] if rest else []
            if serial:
                passes.append((serial, [], 1, outdir / "serial"))
            elapsed, commands, logs = 0.0, [], []
            for selected, excluded, slots, folder in passes:
                folder.mkdir(parents=True, exist_ok=True)
                cmd = runner_command(runner, runner_cmd, target, selected, slots, folder, excluded)
                started = time.monotonic()
                completed = subprocess.run(cmd, capture_output=True, text=True)
                elapsed += time.monotonic() - started
                commands.append(" ".join(cmd))
                logs.append(completed.stdout + completed.stderr)
        (outdir / "runner.log").write_text("".join(logs))
        if serial:
            merge_serial(outdir, "serial")
    return write_summary(outdir, cases, elapsed, " && ".join(commands))


def run_backend_leg(outdir: Path, cases: list[str], parallel: int) -> dict[str, Any]:
    """Fuzzing server as the backend, an echoing testee through the balancer."""
    rest, serial = split_serial(cases)
    elapsed, commands = 0.0, []
    if rest:
        seconds, command = _backend_pass(outdir, rest, serial, parallel)
        elapsed, commands = elapsed + seconds, [command]
    if serial:
        seconds, command = _backend_pass(outdir / "serial", serial, [], 1)
        elapsed, commands = elapsed + seconds, [*commands, command]
        merge_serial(outdir, "serial")
    return write_summary(outdir, cases, elapsed, " && ".join(commands))


def _backend_pass(
    outdir: Path, cases: list[str], exclude: list[str], parallel: int
) -> tuple[float, str]:
    """One fuzzing server and one balancer for `cases`; returns (seconds, fuzzer command)."""
    outdir.mkdir(parents=True, exist_ok=True)
    with open(outdir / "processes.log", "w") as log, processes() as children:
        fuzzer_port = free_port()
        cmd = [
            bin_path("kosoku"),
            "-m",
            "fuzzingserver",
            f"127.0.0.1:{fuzzer_port}",
            "-o",
            str(outdir),
        ]
        for case in cases:
            cmd += ["-i", case]
        for case in exclude:
            cmd += ["-x", case]
        fuzzer = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        children.append(fuzzer)
        wait_port(fuzzer_port, process=fuzzer)
        # The fuzzing server has no count endpoint; compression is mirrored so that the
        # 12.*/13.* cases reach the backend leg.
        port = start_balancer(
            children,
            fuzzer_port,
            log,
            # Failover off: the fuzzer's abnormal closes (1001, 1011) are cases to pass on,
            # not faults to hide by re-running the case on a new leg.
            [
                "balancing.metric_path=none",
                "compression.backend=mirror",
                "limits.max_message_size=64MiB",
                "failover.enabled=false",
            ],
        )
        started = time.monotonic()
        run_in_own_loop(testee(f"ws://127.0.0.1:{port}", "wsbalancer", parallel))
        try:
            fuzzer.wait(120)
        except subprocess.TimeoutExpired:
            pass
        elapsed = time.monotonic() - started
    return elapsed, " ".join(cmd)


def run_legs(
    out: Path, legs: list[str], cases: list[str], parallel: int, runner: str, runner_cmd: str | None
) -> dict[str, dict[str, Any]]:
    """Run the chosen legs; returns their summaries by leg name."""
    summaries: dict[str, dict[str, Any]] = {}
    for leg in legs:
        if leg == "client":
            summary = run_client_leg(out / leg, cases, parallel, runner, runner_cmd)
        elif leg == "client-plain-backend":
            summary = run_client_leg(
                out / leg, cases, parallel, runner, runner_cmd, backend_compression=False
            )
        elif leg == "client-tls":
            groups = {c.split(".")[0] for c in cases}
            subset = [c for c in TLS_CASES if c.split(".")[0] in groups] or TLS_CASES
            summary = run_client_leg(out / leg, subset, parallel, runner, runner_cmd, tls=True)
        elif leg == "client-splice":
            summary = run_client_leg(
                out / leg,
                cases,
                parallel,
                runner,
                runner_cmd,
                extra_settings=("relay.mode=splice",),
            )
        elif leg == "client-no-count":
            subset = [c for c in cases if c.split(".")[0] in NO_COUNT_GROUPS]
            if not subset:
                subset = [f"{g}.*" for g in NO_COUNT_GROUPS]
            summary = run_client_leg(out / leg, subset, parallel, runner, runner_cmd, no_count=True)
        elif leg == "backend":
            summary = run_backend_leg(out / leg, cases, parallel)
        else:
            raise ValueError(f"unknown leg {leg!r}")
        summaries[leg] = summary
        print(f"{leg}: {summary['total']} cases in {summary['seconds']}s", flush=True)
    (out / "summary.json").write_text(json.dumps(summaries, indent=1))
    (out / "summary.md").write_text(
        "".join(
            f"### {leg} ({s['total']} cases, {s['seconds']} s)\n\n{markdown_table(s)}\n\n"
            for leg, s in summaries.items()
        )
    )
    return summaries
