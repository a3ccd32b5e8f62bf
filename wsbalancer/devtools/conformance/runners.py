"""The fuzzing programs of the conformance legs: the fuzzing client's command line (kosoku,
the official wstest, or any command), and for the backend leg the echoing testee client
that drives the fuzzing server's cases through the balancer."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from wsbalancer.devtools.processes import bin_path


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


async def testee(url: str, agent: str, parallel: int) -> None:
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
