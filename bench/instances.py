"""Many instances: three balancers share three backends; is the fleet fair without a shared store?

    python bench/instances.py                          # both strategies, 100 connects per instance
    python bench/instances.py --strategy power-of-two --per-instance 50 --json out.json

Each balancer is a twistd process and each backend a demo backend process reporting its count
on /metric. A simultaneous burst of connects on every instance at once must leave the backends'
own counts within 5% of even. Then a fourth, empty backend joins (added on every instance
through the admin API) and a burst of new sessions that would make it level must go to it
first: it must end within 5% of the others. Exit status 1 if either is off.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wsbalancer.devtools.processes import (  # noqa: E402
    free_port,
    processes,
    spawn_balancer,
    spawn_demo_backend,
    wait_until,
)

TOKEN = "instances-bench"


def get_json(url: str, body: dict[str, Any] | None = None) -> Any:
    """GET (or POST `body` to) a local JSON endpoint with the bench's admin token."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    request.add_header("Authorization", f"Bearer {TOKEN}")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def counts(backends: list[int]) -> list[int]:
    """Each backend's own count, as it reports it on /metric."""
    return [get_json(f"http://127.0.0.1:{p}/metric")["agentsConnections"] for p in backends]


def counted(backends: list[int], total: int) -> list[int] | None:
    """The counts once the backends report `total` sessions between them, else None."""
    values = counts(backends)
    return values if sum(values) == total else None


def deviation(values: list[int]) -> float:
    """The largest distance from the mean, as a fraction of the mean."""
    mean = sum(values) / len(values)
    return max(abs(v - mean) for v in values) / mean if mean else 0.0


async def burst(urls: list[str], per_instance: int) -> list[Any]:
    """`per_instance` connects on every instance, all at once; the sessions stay open."""
    import websockets

    connects = [websockets.connect(url) for url in urls for _ in range(per_instance)]
    results = await asyncio.gather(*connects, return_exceptions=True)
    clients = [r for r in results if not isinstance(r, BaseException)]
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        await close_all(clients)
        raise RuntimeError(f"{len(errors)} of {len(results)} connects failed: {errors[0]!r}")
    return clients


async def close_all(clients: list[Any]) -> None:
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


def split(total: int, parts: int) -> list[int]:
    """`total` as `parts` near-equal whole numbers."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


async def run(strategy: str, args: argparse.Namespace) -> dict[str, Any]:
    """One measurement with one strategy; returns the figures."""
    with processes() as children:
        backends = [free_port() for _ in range(args.backends)]
        for i, port in enumerate(backends):
            spawn_demo_backend(children, port, name=f"b{i + 1}")
        balancers = []
        for _ in range(args.instances):
            port, admin = free_port(), free_port()
            spawn_balancer(
                children,
                port,
                admin,
                [f"b{i + 1}=ws://127.0.0.1:{p}" for i, p in enumerate(backends)],
                # a burst is a reconnect wave: Twisted's default backlog of 50 would drop SYNs
                listen=f"tcp:{port}:interface=127.0.0.1:backlog=1024",
                settings=[
                    f"balancing.strategy={strategy}",
                    f"balancing.poll_interval={args.poll_interval}",
                    f"admin.token={TOKEN}",
                    "shutdown.drain_period=0s",
                    # One process per instance by default, as the figures are stated; each
                    # worker process picks on its own, like one more instance.
                    f"workers={args.workers}",
                ],
            )
            balancers.append((port, admin))
        urls = [f"ws://127.0.0.1:{port}/echo" for port, _ in balancers]
        clients: list[Any] = []
        try:
            started = time.monotonic()
            clients += await burst(urls, args.per_instance)
            burst_seconds = time.monotonic() - started
            total = args.per_instance * args.instances
            burst_counts = wait_until(lambda: counted(backends, total), "the burst's count")

            # A new, empty backend joins every instance.
            newcomer = free_port()
            spawn_demo_backend(children, newcomer, name="new")
            backends.append(newcomer)
            for _, admin in balancers:
                get_json(
                    f"http://127.0.0.1:{admin}/api/backends",
                    {"id": "new", "url": f"ws://127.0.0.1:{newcomer}"},
                )

            def polled() -> bool:  # every instance has read the newcomer's count once
                return all(
                    get_json(f"http://127.0.0.1:{admin}/api/backends/new")["reportedConnections"]
                    is not None
                    for _, admin in balancers
                )

            wait_until(polled, "every instance to poll the new backend")
            # The sessions that would make it level: (total + k) / n == k.
            to_level = total // (len(backends) - 1)
            join_clients = []
            for url, n in zip(urls, split(to_level, len(urls)), strict=True):
                join_clients.append(burst([url], n))
            for batch in await asyncio.gather(*join_clients):
                clients += batch
            final = wait_until(lambda: counted(backends, total + to_level), "the joined count")
        finally:
            await close_all(clients)
    return {
        "strategy": strategy,
        "instances": args.instances,
        "per_instance": args.per_instance,
        "burst_seconds": round(burst_seconds, 3),
        "burst_counts": burst_counts,
        "burst_deviation": round(deviation(burst_counts), 4),
        "new_sessions": to_level,
        "newcomer_got": final[-1],
        "newcomer_share": round(final[-1] / to_level, 4),
        "final_counts": final,
        "final_deviation": round(deviation(final), 4),
    }


def report(figures: dict[str, Any], tolerance: float) -> bool:
    """Print one strategy's figures; True if both checks hold."""
    ok_burst = figures["burst_deviation"] <= tolerance
    ok_join = figures["final_deviation"] <= tolerance
    f = figures
    print(
        f"{f['strategy']}: {f['instances']} instances x {f['per_instance']} simultaneous "
        f"connects ({f['burst_seconds']}s)"
    )
    print(
        f"  backend counts {f['burst_counts']}  max deviation from even "
        f"{f['burst_deviation']:.1%}  {'ok' if ok_burst else 'OFF'}"
    )
    print(
        f"  new empty backend joined; {f['new_sessions']} new sessions: "
        f"{f['newcomer_got']} went to it ({f['newcomer_share']:.0%})"
    )
    print(
        f"  backend counts {f['final_counts']}  max deviation from even "
        f"{f['final_deviation']:.1%}  {'ok' if ok_join else 'OFF'}"
    )
    return ok_burst and ok_join


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategy", choices=["power-of-two", "least-loaded", "both"])
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--backends", type=int, default=3)
    parser.add_argument("--workers", default="1", help="worker processes per instance")
    parser.add_argument("--per-instance", type=int, default=100)
    parser.add_argument("--poll-interval", default="0.5s")
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    strategies = (
        ["power-of-two", "least-loaded"] if args.strategy in (None, "both") else [args.strategy]
    )
    results = [asyncio.run(run(s, args)) for s in strategies]
    ok = all([report(r, args.tolerance) for r in results])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
