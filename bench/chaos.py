"""Chaos: clients exchange numbered messages through the balancer while backends are killed.

    python bench/chaos.py                       # 200 clients, 60 s, 3 backends
    python bench/chaos.py --clients 50 --duration 15 --json chaos.json

Three echo backends (each its own process) sit behind the balancer (a twistd process, failover
on). Every client sends "<client>:<n>" with n counting up, a few times a second, and checks the
echoes. Every few seconds a random backend is killed with SIGKILL (never the last one up) and
restarted a moment later. At the end the script prints, over all clients: sessions dropped,
messages sent, echoed, lost (sent, never echoed), duplicated and out of order, the failovers
the balancer counted, and its peak RSS.

Only messages in flight to a killed backend can be lost; a dropped session, a duplicate or
a message out of order is a failure (exit status 1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import subprocess
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
    rss_kib,
    spawn_balancer,
    wait_port,
)

BIN = Path(sys.executable).parent


class Client:
    """One numbered-message client and what it saw."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.sent = 0
        self.echoed: set[int] = set()
        self.duplicates = 0
        self.out_of_order = 0
        self.last = -1
        self.dropped = False
        self.close: tuple[int | None, str] | None = None

    async def run(self, url: str, stop: asyncio.Event, rng: random.Random) -> None:
        import websockets

        try:
            async with websockets.connect(url, ping_interval=None, open_timeout=30) as ws:
                reader = asyncio.ensure_future(self._read(ws))
                while not stop.is_set():
                    await ws.send(f"{self.index}:{self.sent}")
                    self.sent += 1
                    await asyncio.sleep(rng.uniform(0.1, 0.3))
                # Let in-flight echoes arrive, then close.
                try:
                    await asyncio.wait_for(self._drain(), 5)
                except TimeoutError:
                    pass
                reader.cancel()
        except websockets.exceptions.ConnectionClosed as e:
            self.dropped = True
            self.close = (e.rcvd.code if e.rcvd else None, e.rcvd.reason if e.rcvd else "")
        except OSError:
            self.dropped = True

    async def _drain(self) -> None:
        while len(self.echoed) < self.sent:
            await asyncio.sleep(0.05)

    async def _read(self, ws: Any) -> None:
        async for message in ws:
            n = int(str(message).split(":")[1])
            if n in self.echoed:
                self.duplicates += 1
            elif n < self.last:
                self.out_of_order += 1
            self.echoed.add(n)
            self.last = max(self.last, n)


def start_backend(port: int, name: str) -> subprocess.Popen[bytes]:
    """A demo echo backend on `port`."""
    return subprocess.Popen(
        [str(BIN / "wsbalancer-demo-backend"), "--port", str(port), "--name", name],
        stdout=subprocess.DEVNULL,
    )


async def chaos(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    ports = [free_port() for _ in range(3)]
    port, admin = free_port(), free_port()
    with processes() as children:
        backends: dict[int, subprocess.Popen[bytes]] = {}
        for i, p in enumerate(ports):
            backends[p] = start_backend(p, f"b{i}")
            wait_port(p, process=backends[p])
        balancer = spawn_balancer(
            children,
            port,
            admin,
            [f"ws://127.0.0.1:{p}" for p in ports],
            [
                "log.level=warn",
                "balancing.poll_interval=0.5s",
                "failover.backoff=100ms",
                "failover.attempts=5",
                "breaker.cooldown=1s",
            ],
            wait=False,
        )
        wait_port(port, process=balancer)
        clients = [Client(i) for i in range(args.clients)]
        stop = asyncio.Event()
        tasks = [
            asyncio.ensure_future(c.run(f"ws://127.0.0.1:{port}/echo", stop, rng)) for c in clients
        ]
        kills = 0
        peak = rss_kib(balancer.pid)
        started = time.monotonic()
        down: dict[int, float] = {}
        while time.monotonic() - started < args.duration:
            await asyncio.sleep(0.25)
            peak = max(peak, rss_kib(balancer.pid))
            now = time.monotonic()
            for p, since in list(down.items()):  # restart after a short outage
                if now - since > args.outage:
                    backends[p] = start_backend(p, f"b{ports.index(p)}")
                    del down[p]
            up = [p for p in ports if p not in down]
            if len(up) > 1 and rng.random() < 0.25 / args.kill_every:
                victim = rng.choice(up)
                backends[victim].send_signal(signal.SIGKILL)
                backends[victim].wait()
                down[victim] = now
                kills += 1
        for p in list(down):
            backends[p] = start_backend(p, f"b{ports.index(p)}")
        stop.set()
        await asyncio.gather(*tasks)
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as r:
            metrics = r.read().decode()
        children.extend(backends.values())
    failovers = sum(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("wsbalancer_failovers_total")
    )
    sent = sum(c.sent for c in clients)
    echoed = sum(len(c.echoed) for c in clients)
    return {
        "clients": args.clients,
        "duration_s": args.duration,
        "backend_kills": kills,
        "failovers": int(failovers),
        "sessions_dropped": sum(c.dropped for c in clients),
        "drop_close_codes": sorted({str(c.close) for c in clients if c.dropped}),
        "messages_sent": sent,
        "messages_echoed": echoed,
        "messages_lost": sent - echoed,
        "duplicated": sum(c.duplicates for c in clients),
        "out_of_order": sum(c.out_of_order for c in clients),
        "balancer_peak_rss_mib": round(peak / 1024, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--kill-every", type=float, default=4.0, help="mean seconds between kills")
    parser.add_argument(
        "--outage", type=float, default=1.5, help="seconds a killed backend stays down"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    result = asyncio.run(chaos(args))
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    failed = result["sessions_dropped"] or result["duplicated"] or result["out_of_order"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
