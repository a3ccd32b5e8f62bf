"""What an idle session holds in the balancer, by tracemalloc.

    .venv/bin/python bench/profile/idle_memory.py 1000         # SHOW=1: each leg's dict too

The balancer runs in this process (traced); a demo backend process and a websockets client
process open N sessions and keep them idle. Prints bytes per session traced, the lines that
allocated most, and the size of one session's leg and transport dicts.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

from twisted.internet import reactor, task

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from wsbalancer.config import load  # noqa: E402
from wsbalancer.devtools.processes import free_port, spawn_demo_backend  # noqa: E402
from wsbalancer.service.tap import build_service  # noqa: E402

CLIENT = """
import asyncio, websockets
async def main():
    held = []
    for i in range(0, {n}, 100):
        held += await asyncio.gather(*(
            websockets.connect("ws://127.0.0.1:{port}/echo", compression=None)
            for _ in range(min(100, {n} - i))))
    await asyncio.sleep(3600)
asyncio.run(main())
"""
SHARED = {"factory", "transport", "session", "partner", "lane", "reactor", "protocol"}
SHARED |= {"server", "connector", "dial", "fileno"}


def rss_kib() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])
    return 0


def owned_bytes(state: dict[str, Any]) -> int:
    """Rough size of the objects a dict holds that are its own (not shared ones)."""
    total = 0
    for name, value in state.items():
        if name in SHARED or value is None or isinstance(value, bool | int):
            continue
        total += sys.getsizeof(value)
        inner = getattr(value, "__dict__", None)
        if inner is not None:
            total += sys.getsizeof(inner) + sum(sys.getsizeof(v) for v in inner.values())
    return total


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    children: list[Any] = []
    backend = free_port()
    spawn_demo_backend(children, backend, name="b1")
    port = free_port()
    overrides = [
        ("listen", f"tcp:{port}:interface=127.0.0.1:backlog=2048", "bench"),
        ("admin.listen", "tcp:0:interface=127.0.0.1", "bench"),
        ("workers", "1", "bench"),
        ("log.level", "warn", "bench"),
    ]
    config = load(None, environ={}, overrides=overrides, backends=[f"b1=ws://127.0.0.1:{backend}"])
    service = build_service(config, reactor)
    service.startService()
    state: dict[str, Any] = {}

    def start() -> None:
        gc.collect()
        state["before"], state["rss"] = tracemalloc.take_snapshot(), rss_kib()
        code = CLIENT.format(n=n, port=port)
        children.append(subprocess.Popen([sys.executable, "-c", code]))
        state["loop"] = task.LoopingCall(opened)
        state["loop"].start(0.2)

    def opened() -> None:
        if len(service.balancer.sessions) >= n:
            state["loop"].stop()
            reactor.callLater(2.0, report)

    def report() -> None:
        gc.collect()
        after = tracemalloc.take_snapshot()
        grown = sum(s.size_diff for s in after.compare_to(state["before"], "traceback"))
        rss = (rss_kib() - state["rss"]) / n
        print(
            f"sessions {n}: traced +{grown / n:.0f} B a session "
            f"(RSS +{rss:.1f} KiB, tracing's own included)"
        )
        for stat in after.compare_to(state["before"], "lineno")[:25]:
            if stat.size_diff < n * 16:
                break
            where = stat.traceback[0]
            name = where.filename.split("site-packages/")[-1]
            print(
                f"{stat.size_diff / n:7.0f} B {stat.count_diff / n:5.1f} objects",
                f"{name}:{where.lineno}",
            )
        session = next(iter(service.balancer.sessions.values()))
        for label, obj in (
            ("client leg", session.client),
            ("backend leg", session.backend),
            ("client transport", session.client.transport),
            ("backend transport", session.backend.transport),
        ):
            d = obj.__dict__
            print(
                f"{label}: {len(d)} attributes, dict {sys.getsizeof(d)} B, "
                f"its own objects ~{owned_bytes(d)} B"
            )
            if os.environ.get("SHOW"):
                print("   ", sorted(d))
        for child in children:
            child.kill()
        reactor.stop()

    tracemalloc.start(1)
    reactor.callLater(0.5, start)
    reactor.run()


if __name__ == "__main__":
    main()
