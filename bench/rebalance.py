"""Sessions follow the fleet: a fourth backend joins three that hold every session, and
rebalancing (`rebalance.enabled`) migrates live sessions to it, the clients seeing nothing.

    python bench/rebalance.py                   # one balancer, 300 sessions (scale-out)
    python bench/rebalance.py --instances 3     # three balancers on the same backends
    python bench/rebalance.py --sessions 60 --instances 3 --json out.json

Each backend is a demo backend process reporting its own count on /metric, each balancer a
twistd process. Every client exchanges numbered messages with its echo backend, one at a
time, for the whole run, and checks that each comes back once and in order. Once the
sessions are placed, a fourth, empty backend is started and added through every instance's
admin API. Passes when, within the time limit, every backend's own count is within the
tolerance of the mean; no client session closed; no message lost, duplicated or out of
order; and (`GET /api/sessions` of every instance) no session moved more than once.
Exit status 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from instances import counts, deviation, get_json, split  # noqa: E402

from wsbalancer.devtools.processes import (  # noqa: E402
    free_port,
    processes,
    spawn_balancer,
    spawn_demo_backend,
    wait_until,
)

TOKEN = "instances-bench"  # get_json's


class Talker:
    """One client: numbered messages, one at a time, each checked as it comes back."""

    def __init__(self, index: int, ws: Any, pause: float) -> None:
        self.index, self.ws, self.pause = index, ws, pause
        self.sent = self.answered = 0
        self.problems: list[str] = []
        self.closed: str | None = None
        self.stopping = False

    async def run(self) -> None:
        while not self.stopping:
            message = f"{self.index}:{self.sent}"
            try:
                await self.ws.send(message)
                self.sent += 1
                answer = await asyncio.wait_for(self.ws.recv(), 10)
            except TimeoutError:
                self.problems.append(f"no answer to {message} within 10 s (lost)")
                return
            except Exception as e:  # the connection closed under the client
                self.closed = f"{type(e).__name__}: {e}"
                return
            if answer != message:
                kind = "duplicated" if answer < message else "out of order"
                self.problems.append(f"sent {message}, got {answer!r} ({kind})")
                return
            self.answered += 1
            await asyncio.sleep(self.pause)


async def connect_all(urls: list[str], total: int, pause: float) -> list[Talker]:
    import websockets

    targets = [url for url, n in zip(urls, split(total, len(urls)), strict=True) for _ in range(n)]
    sockets = await asyncio.gather(*(websockets.connect(u, compression=None) for u in targets))
    return [Talker(i, ws, pause) for i, ws in enumerate(sockets)]


async def poll_counts(backends: list[int]) -> list[int]:
    return await asyncio.to_thread(counts, backends)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with processes() as children:
        backends = [free_port() for _ in range(3)]
        for i, port in enumerate(backends):
            spawn_demo_backend(children, port, name=f"b{i + 1}")
        admins, urls = [], []
        for _ in range(args.instances):
            port, admin = free_port(), free_port()
            spawn_balancer(
                children,
                port,
                admin,
                [f"b{i + 1}=ws://127.0.0.1:{p}" for i, p in enumerate(backends)],
                listen=f"tcp:{port}:interface=127.0.0.1:backlog=1024",
                settings=[
                    "rebalance.enabled=true",
                    f"rebalance.tolerance={args.tolerance}%",
                    f"rebalance.min_age={args.min_age}",
                    f"rebalance.max_moves_per_second={args.moves}",
                    f"balancing.poll_interval={args.poll_interval}",
                    f"admin.token={TOKEN}",
                    "shutdown.drain_period=0s",
                    "workers=1",
                ],
            )
            admins.append(admin)
            urls.append(f"ws://127.0.0.1:{port}/echo")
        talkers = await connect_all(urls, args.sessions, args.pause)
        tasks = [asyncio.ensure_future(t.run()) for t in talkers]
        try:
            before = await asyncio.to_thread(
                wait_until, lambda: (c := counts(backends)) and sum(c) == args.sessions and c
            )
            newcomer = free_port()
            spawn_demo_backend(children, newcomer, name="b4")
            backends.append(newcomer)
            added = time.monotonic()
            for admin in admins:
                await asyncio.to_thread(
                    get_json,
                    f"http://127.0.0.1:{admin}/api/backends",
                    {"id": "b4", "url": f"ws://127.0.0.1:{newcomer}"},
                )
            converged_after = None
            timeline = []
            while time.monotonic() - added < args.limit:
                now = await poll_counts(backends)
                timeline.append((round(time.monotonic() - added, 1), now))
                if sum(now) == args.sessions and deviation(now) <= args.tolerance / 100:
                    converged_after = time.monotonic() - added
                    break
                await asyncio.sleep(0.5)
            # Then a while longer: the spread must stay put (no oscillation).
            await asyncio.sleep(args.settle)
            after = await poll_counts(backends)
        finally:
            for t in talkers:
                t.stopping = True
            await asyncio.wait(tasks, timeout=15)
        views = [
            await asyncio.to_thread(get_json, f"http://127.0.0.1:{a}/api/sessions") for a in admins
        ]
        moves = [
            await asyncio.to_thread(get_json, f"http://127.0.0.1:{a}/api/rebalance") for a in admins
        ]
        rounds = [
            e["text"]
            for a in admins
            for e in (await asyncio.to_thread(get_json, f"http://127.0.0.1:{a}/balancer-metrics"))[
                "events"
            ]
            if e["text"].startswith("rebalancing")
        ]
        await asyncio.gather(*(t.ws.close() for t in talkers), return_exceptions=True)
    sessions = [s for view in views for s in _session_list(view)]
    return {
        "instances": args.instances,
        "sessions": args.sessions,
        "before": before,
        "converged_after_s": None if converged_after is None else round(converged_after, 1),
        "after_settle": after,
        "after_deviation": round(deviation(after), 4),
        "timeline": timeline,
        "closed": sum(t.closed is not None for t in talkers),
        "problems": [p for t in talkers for p in t.problems],
        "messages": sum(t.answered for t in talkers),
        "moved_twice": sum(s["reconnects"] > 1 for s in sessions),
        "moved": sum(s["reconnects"] == 1 for s in sessions),
        "moves_by_instance": [m["moves"] for m in moves],
        "rounds": rounds,
    }


def _session_list(view: Any) -> list[dict[str, Any]]:
    return view["sessions"] if isinstance(view, dict) else view


def report(f: dict[str, Any], args: argparse.Namespace) -> bool:
    checks = {
        f"within {args.tolerance:g}% of the mean within {args.limit:g} s": (
            f["converged_after_s"] is not None
        ),
        f"still within {args.tolerance:g}% {args.settle:g} s later": (
            f["after_deviation"] <= args.tolerance / 100
        ),
        "no client session closed": f["closed"] == 0,
        "no message lost, duplicated or reordered": not f["problems"],
        "no session moved twice": f["moved_twice"] == 0,
    }
    print(
        f"{f['instances']} instance(s), {f['sessions']} sessions; backend counts before "
        f"{f['before']}, fourth added; converged after {f['converged_after_s']} s; "
        f"{args.settle:g} s later {f['after_settle']} "
        f"(max deviation {f['after_deviation']:.1%})"
    )
    print(
        f"  {f['moved']} sessions moved once, {f['moved_twice']} more than once; moves per "
        f"instance {f['moves_by_instance']}; {f['messages']} messages echoed, "
        f"{f['closed']} sessions closed, {len(f['problems'])} message problems"
    )
    for text in f["rounds"]:
        print(f"    {text}")
    for problem in f["problems"][:5]:
        print(f"    {problem}")
    for name, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    return all(checks.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--sessions", type=int, default=300, help="in all, over the instances")
    parser.add_argument("--pause", type=float, default=0.1, help="seconds between exchanges")
    parser.add_argument("--tolerance", type=float, default=10.0, help="percent of the mean")
    parser.add_argument("--moves", default="20", help="rebalance.max_moves_per_second")
    parser.add_argument("--min-age", default="0s", help="rebalance.min_age")
    parser.add_argument("--poll-interval", default="1s")
    parser.add_argument("--limit", type=float, default=60.0, help="seconds to converge in")
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    figures = asyncio.run(run(args))
    ok = report(figures, args)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
