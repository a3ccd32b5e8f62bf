"""Autobahn TestSuite conformance through the balancer, on both legs: `wsbalancer-conformance`.

Legs (each in its own report folder, every process separate as in production):

- `client`: a fuzzing client drives the balancer, which relays to an echo backend that
  accepts permessage-deflate (the balancer set to mirror compression to it);
- `client-plain-backend`: the same with a backend that refuses compression, the balancer
  in its default configuration (it still offers compression to the client and translates);
- `client-tls`: a subset over `wss://`, the balancer listening on an `ssl:` endpoint with a
  certificate made for the run;
- `client-splice`: the `client` leg with the pool in splice mode (`relay.mode: splice`):
  frames pass byte-for-byte and the echo backend (Autobahn's own) is what is judged, so this
  leg shows the splice neither corrupts, reorders nor truncates anything;
- `client-no-count`: cases 1.* to 10.* through a balancer in its default configuration whose
  only backend, named by the seed Go balancer's `BE_URLS` alone, is an ordinary Autobahn echo
  server with no count endpoint (a plain GET of `/metric` gets its status page);
- `backend`: the fuzzing *server* is the backend, and a testee client that echoes drives each
  case through the balancer, so every verdict judges the balancer's backend leg.

The runner is swappable: `kosoku` (PyPI, Python 3, Autobahn's own case files) by default, or
the official `wstest` (`--runner wstest`, or any command through `--runner-cmd`), whose reports
have the same `index.json` layout and are read the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from wsbalancer.devtools.processes import (
    bin_path,
    clean_environment,
    free_port,
    processes,
    spawn_balancer,
    spawn_demo_backend,
    wait_port,
)

PASSING = {"OK", "NON-STRICT", "INFORMATIONAL"}
PASSING_CLOSE = {"OK", "INFORMATIONAL"}
# Cases per group in the Autobahn TestSuite (517 in all): a group with fewer results than
# this lost cases on the way, which counts as a failure.
SUITE_GROUPS = {
    "1": 16,
    "2": 11,
    "3": 7,
    "4": 10,
    "5": 20,
    "6": 145,
    "7": 37,
    "9": 54,
    "10": 1,
    "12": 90,
    "13": 126,
}
ALL_CASES = [f"{g}.*" for g in SUITE_GROUPS]
# Over TLS: framing, pings, fragmentation, closes, large messages, and compression at sizes
# that stay well inside kosoku's 30 s per case.
TLS_CASES = ["1.*", "2.*", "5.*", "7.*", "9.1.*", *(f"12.1.{n}" for n in range(1, 10))]
# Without a count endpoint: framing, pings, reserved bits, opcodes, UTF-8, fragmentation,
# closes, limits, large messages and auto-fragmentation (compression is in the other legs).
NO_COUNT_GROUPS = ("1", "2", "3", "4", "5", "6", "7", "9", "10")
LEGS = (
    "client",
    "client-plain-backend",
    "client-tls",
    "client-splice",
    "client-no-count",
    "backend",
)

# The cases that echo 1,000 compressed messages of 128 KiB (12.*.10, 12.*.14-18; the 14-17
# ones in frames of 256 B to 4 KiB) take 10-20 s each even alone, against the 30 s kosoku
# allows a case (the case files say 480 s); side by side with other cases on a 2-core machine
# they can pass that limit. They run one at a time after the rest.
SERIAL_CASES = [f"12.{group}.{n}" for group in range(1, 6) for n in (10, 14, 15, 16, 17, 18)]

# Cases that cannot pass by design, with the RFC section that says why. Starts empty.
ALLOW_LIST: dict[str, str] = {}


def start_echo_backend(children: list[subprocess.Popen[Any]], compression: bool, log: Any) -> int:
    """The demo backend in echo mode, in its own process."""
    port = free_port()
    args = ["--compression-level", "1"] + ([] if compression else ["--no-compression"])
    spawn_demo_backend(children, port, "echo", args, output=log)
    return port


def start_plain_echo_backend(children: list[subprocess.Popen[Any]], log: Any) -> int:
    """An ordinary Autobahn echo server with no count endpoint, in its own process."""
    port = free_port()
    cmd = [sys.executable, "-m", "wsbalancer.devtools.demo.plain_echo", "--port", str(port)]
    child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    children.append(child)
    wait_port(port, process=child)
    return port


def start_balancer(
    children: list[subprocess.Popen[Any]],
    backend_port: int,
    log: Any,
    settings: list[str] = (),  # type: ignore[assignment]
    tls: tuple[str, str] | None = None,
    by_environment: bool = False,
) -> int:
    """The balancer under twistd, in its own process, in front of the backend (named by a
    `--backend` flag, or by `BE_URLS` alone)."""
    port, admin = free_port(), free_port()
    listen = None
    if tls is not None:
        listen = f"ssl:{port}:interface=127.0.0.1:privateKey={tls[1]}:certKey={tls[0]}"
    url = f"ws://127.0.0.1:{backend_port}"
    spawn_balancer(
        children,
        port,
        admin,
        [] if by_environment else [url],
        ["log.level=warn", *settings],
        listen=listen,
        env=clean_environment(BE_URLS=url) if by_environment else None,
        output=log,
    )
    return port


def make_certificate(folder: Path) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1/localhost; returns (cert path, key path)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


@contextmanager
def tls_forwarder(port: int, cafile: str) -> Iterator[int]:
    """A plain-TCP port that forwards each connection over TLS to 127.0.0.1:port.

    kosoku speaks only ws://; this byte pipe lets its cases reach the balancer's `ssl:`
    endpoint, so the balancer's TLS side is what is exercised. Runs in its own thread."""
    import ssl
    import threading
    from concurrent.futures import Future

    context = ssl.create_default_context(cafile=cafile)
    loop = asyncio.new_event_loop()
    ready: Future[int] = Future()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=context, server_hostname="localhost"
            )
        except (OSError, ssl.SSLError):
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        ready.set_result(server.sockets[0].getsockname()[1])
        async with server:
            try:
                await server.serve_forever()
            except asyncio.CancelledError:
                pass  # the run is over
        # Let the connections still piping finish their cancellation before the loop ends.
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    try:
        yield ready.result(10)
    finally:

        def stop() -> None:
            for task in asyncio.all_tasks(loop):
                task.cancel()

        loop.call_soon_threadsafe(stop)
        thread.join(10)


def runner_command(
    runner: str,
    runner_cmd: str | None,
    target: str,
    cases: list[str],
    parallel: int,
    outdir: Path,
    exclude: list[str] = (),  # type: ignore[assignment]
) -> list[str]:
    """The fuzzing-client command line for the chosen runner."""
    if runner_cmd:
        return runner_cmd.format(
            target=f"ws://{target}", outdir=str(outdir), cases=",".join(cases)
        ).split()
    if runner == "kosoku":
        cmd = [
            bin_path("kosoku"),
            "-m",
            "fuzzingclient",
            f"ws://{target}",
            "-p",
            str(parallel),
            "-o",
            str(outdir),
        ]
        for case in cases:
            cmd += ["-i", case]
        for case in exclude:
            cmd += ["-x", case]
        return cmd
    if runner == "wstest":
        spec = outdir / "fuzzingclient.json"
        spec.write_text(
            json.dumps(
                {
                    "outdir": str(outdir),
                    "servers": [{"agent": "wsbalancer", "url": f"ws://{target}"}],
                    "cases": cases,
                    "exclude-cases": list(exclude),
                    "exclude-agent-cases": {},
                }
            )
        )
        return ["wstest", "-m", "fuzzingclient", "-s", str(spec)]
    raise ValueError(f"unknown runner {runner!r}")


def split_serial(cases: list[str]) -> tuple[list[str], list[str]]:
    """(patterns for the parallel pass, the selected cases of SERIAL_CASES run after it)."""
    serial = [case for case in SERIAL_CASES if any(fnmatch(case, p) for p in cases)]
    return [p for p in cases if p not in serial], serial


def merge_serial(outdir: Path, sub: str) -> None:
    """Fold the serial pass's index (in `outdir/sub`) into the main one."""
    main_index = outdir / "index.json"
    index = json.loads(main_index.read_text()) if main_index.exists() else {}
    extra = json.loads((outdir / sub / "index.json").read_text())
    for agent, cases in extra.items():
        for case, result in cases.items():
            if "reportfile" in result:
                result["reportfile"] = f"{sub}/{result['reportfile']}"
            index.setdefault(agent, {})[case] = result
    main_index.write_text(json.dumps(index, indent=1))


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


def summarise(results: dict[str, dict[str, Any]], patterns: list[str]) -> dict[str, Any]:
    """Counts per verdict per case group, the cases that break the promise, and missing ones."""
    table: dict[str, Counter[str]] = defaultdict(Counter)
    failing = []
    for case, result in sorted(results.items(), key=lambda kv: case_key(kv[0])):
        group = case.split(".")[0]
        behavior = result.get("behavior", "MISSING")
        close = result.get("behaviorClose", "MISSING")
        table[group][behavior] += 1
        if (behavior not in PASSING or close not in PASSING_CLOSE) and case not in ALLOW_LIST:
            failing.append(f"{case}: {behavior}/{close}")
    missing = []
    for pattern in patterns:  # whole groups must be complete; sub-globs must match something
        group = pattern.split(".")[0]
        if pattern == f"{group}.*" and group in SUITE_GROUPS:
            got = sum(table[group].values()) if group in table else 0
            if got < SUITE_GROUPS[group]:
                missing.append(f"{pattern}: {got} of {SUITE_GROUPS[group]} cases")
        elif not any(fnmatch(case, pattern) for case in results):
            missing.append(f"{pattern}: no case")
    return {
        "groups": {g: dict(c) for g, c in sorted(table.items(), key=lambda kv: int(kv[0]))},
        "total": len(results),
        "failing": failing,
        "missing": missing,
        "allow_list": ALLOW_LIST,
    }


def markdown_table(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table: case groups x verdicts."""
    verdicts = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]
    lines = ["| group | " + " | ".join(verdicts) + " |", "|---|" + "---|" * len(verdicts)]
    for group, counts in summary["groups"].items():
        lines.append(f"| {group}.* | " + " | ".join(str(counts.get(v, 0)) for v in verdicts) + " |")
    return "\n".join(lines)


def _finish(outdir: Path, patterns: list[str], elapsed: float, command: str) -> dict[str, Any]:
    if not (outdir / "index.json").exists():
        log = (outdir / "runner.log").read_text()[-800:] if (outdir / "runner.log").exists() else ""
        raise RuntimeError(f"the runner wrote no index.json: {log}")
    summary = summarise(read_results(outdir), patterns)
    summary["seconds"] = round(elapsed, 1)
    summary["command"] = command
    (outdir / "summary.json").write_text(json.dumps(summary, indent=1))
    (outdir / "summary.md").write_text(markdown_table(summary) + "\n")
    return summary


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
    return _finish(outdir, cases, elapsed, " && ".join(commands))


async def _testee(url: str, agent: str, parallel: int) -> None:
    """The echoing client of Autobahn's fuzzing-server mode, connecting through `url`."""
    import websockets
    from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

    # The testee offers permessage-deflate (so the balancer's backend leg negotiates it with
    # the fuzzing server) but compresses at level 0, stored blocks: it is only an echo, and at
    # zlib's default level it alone took most of the 30 s kosoku gives the heaviest 12.* cases.
    deflate = ClientPerMessageDeflateFactory(
        client_max_window_bits=True, compress_settings={"level": 0, "memLevel": 1}
    )

    async def run_case(number: int, slots: asyncio.Semaphore) -> None:
        async with slots:
            try:
                async with websockets.connect(
                    f"{url}/runCase?case={number}&agent={agent}",
                    max_size=None,
                    open_timeout=30,
                    close_timeout=10,
                    ping_interval=None,
                    compression=None,
                    extensions=[deflate],
                ) as ws:
                    async for message in ws:
                        await ws.send(message)
            except (TimeoutError, OSError, websockets.exceptions.WebSocketException):
                pass  # the fuzzing server judges what happened; the testee only echoes

    async with websockets.connect(f"{url}/getCaseCount") as ws:
        count = int(await ws.recv())
    slots = asyncio.Semaphore(parallel)
    await asyncio.gather(*(run_case(n, slots) for n in range(1, count + 1)))
    async with websockets.connect(f"{url}/updateReports?agent={agent}") as ws:
        try:
            await asyncio.wait_for(ws.recv(), 30)
        except (TimeoutError, websockets.exceptions.WebSocketException):
            pass


def run_in_own_loop(coroutine: Any) -> None:
    """Run a coroutine to the end on a fresh event loop in its own thread (the caller may
    already be inside an event loop, as under the test suite's asyncio reactor)."""
    import threading

    failures: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(coroutine)
        except BaseException as e:  # handed to the caller
            failures.append(e)

    thread = threading.Thread(target=target, name="conformance-testee")
    thread.start()
    thread.join()
    if failures:
        raise failures[0]


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
    return _finish(outdir, cases, elapsed, " && ".join(commands))


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
        run_in_own_loop(_testee(f"ws://127.0.0.1:{port}", "wsbalancer", parallel))
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


def missing_packages(legs: list[str], runner: str, runner_cmd: str | None) -> list[str]:
    """The packages of the `conformance` extra these legs need that are not installed: kosoku
    (the fuzzing client and server) and websockets (the backend leg's echoing client)."""
    from importlib.util import find_spec

    needed = []
    if "backend" in legs or (runner == "kosoku" and not runner_cmd):
        needed.append("kosoku")
    if "backend" in legs:
        needed.append("websockets")
    return [name for name in needed if find_spec(name) is None]


def main(argv: list[str] | None = None) -> int:
    """Command line: exit 0 when every case of every leg is OK, NON-STRICT or INFORMATIONAL."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="reports/conformance", help="report folder")
    parser.add_argument(
        "--cases",
        default=",".join(ALL_CASES),
        help="comma-separated case globs (default: all 517, 1.* to 13.*)",
    )
    parser.add_argument("--legs", default=",".join(LEGS), help=f"any of {', '.join(LEGS)}")
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
    legs = [leg.strip() for leg in args.legs.split(",") if leg.strip()]
    unknown = [leg for leg in legs if leg not in LEGS]
    if unknown:
        parser.error(f"unknown leg {unknown[0]!r}; choose from {', '.join(LEGS)}")
    missing = missing_packages(legs, args.runner, args.runner_cmd)
    if missing:
        sys.stderr.write(
            f"wsbalancer-conformance: needs {' and '.join(missing)}, not installed: "
            "pip install 'wsbalancer[conformance]'\n"
        )
        return 2
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    summaries = run_legs(Path(args.out), legs, cases, args.parallel, args.runner, args.runner_cmd)
    broken = []
    for leg, summary in summaries.items():
        print(
            f"\n{leg}: {summary['total']} cases, {summary['seconds']} s\n" + markdown_table(summary)
        )
        broken += [f"{leg} {item}" for item in summary["failing"] + summary["missing"]]
    print(
        f"\nallow-list: {len(ALLOW_LIST)} cases"
        + "".join(f"\n  {case}: {why}" for case, why in ALLOW_LIST.items())
    )
    if broken:
        print("FAILING:\n  " + "\n  ".join(broken))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
