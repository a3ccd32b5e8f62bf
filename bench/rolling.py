"""Rolling restart: every backend in turn restarted while clients exchange numbered messages.

    python bench/rolling.py                         # 300 clients, evacuate each backend first
    python bench/rolling.py --backend-close 1012    # each backend closes its sessions with 1012
    python bench/rolling.py --clients 50 --json rolling.json

Three demo backends (each its own process) sit behind the balancer (a twistd process). Every
client sends "<client>:<n>" with n counting up, a few times a second, and checks that each
echo comes back once and in order. Then, for each backend in turn:

- default: `POST /api/backends/{id}/evacuate?pace=`, wait until its `evacuation.done` and
  `localSessions` 0, stop the process (SIGTERM), start it again on the same port,
  `POST /api/backends/{id}/enable`, wait until the balancer finds it usable again;
- `--backend-close CODE`: the backend runs with `--close-on-stop CODE`, so its SIGTERM closes
  every session with CODE before it exits; the balancer fails them over (1012 and 1001 are in
  `failover.close_codes`); start it again on the same port, wait until it is usable.

Either way one new session must then land on the restarted backend (it is back in
rotation). At the end the script prints client sessions closed, messages sent, echoed, lost,
duplicated and out of order, migrations and failovers by outcome as the balancer counted
them, and each backend's time; PASS/FAIL lines; exit status 1 on any FAIL.
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
import urllib.error
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from instances import TOKEN, get_json  # noqa: E402  (the admin API with a token)

from wsbalancer.devtools.processes import (  # noqa: E402
    free_port,
    processes,
    spawn_balancer,
    spawn_demo_backend,
    wait_until,
)


class Client:
    """One numbered-message client and what it saw."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.sent = 0
        self.echoed: set[int] = set()
        self.duplicates = 0
        self.out_of_order = 0
        self.last = -1
        self.closed: tuple[int | None, str] | None = None  # a close we did not ask for
        self.error: str | None = None
        self.connected = asyncio.Event()

    async def run(self, url: str, stop: asyncio.Event, rng: random.Random, gap: float) -> None:
        import websockets

        try:
            async with websockets.connect(
                url, ping_interval=None, open_timeout=60, compression=None
            ) as ws:
                self.connected.set()
                reader = asyncio.ensure_future(self._read(ws))
                while not stop.is_set() and not reader.done():
                    await ws.send(f"{self.index}:{self.sent}")
                    self.sent += 1
                    await asyncio.sleep(rng.uniform(0.5 * gap, 1.5 * gap))
                try:  # let the echoes in flight arrive, then close with 1000
                    await asyncio.wait_for(self._drain(), 10)
                except TimeoutError:
                    pass
                if reader.done():  # the connection ended before we closed it
                    await reader  # raises the ConnectionClosed that ended it, if one did
                    self.closed = (ws.close_code, ws.close_reason or "")  # a clean 1000 too
                reader.cancel()
        except websockets.exceptions.ConnectionClosed as e:
            self.closed = (e.rcvd.code if e.rcvd else None, e.rcvd.reason if e.rcvd else "")
        except (OSError, TimeoutError) as e:
            self.error = repr(e)
        finally:
            self.connected.set()

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


def api(admin: int, path: str, method: str = "GET") -> Any:
    """An admin API call (the bench's token); POST sends an empty JSON body."""
    return get_json(f"http://127.0.0.1:{admin}{path}", {} if method == "POST" else None)


def metric_values(admin: int, family: str, names: dict[str, str]) -> dict[str, int]:
    """One Prometheus counter family summed by its first label's value (a backend id is
    shown by the bench's name for it)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as r:
        text = r.read().decode()
    values: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith(family + "{"):
            labels, _, value = line.rpartition(" ")
            label = labels[len(family) + 1 :].split(",")[0].split("=", 1)[1].strip('"}')
            label = names.get(label, label)
            values[label] = values.get(label, 0) + int(float(value))
    return values


async def in_thread(check: Any, what: str, timeout: float) -> Any:
    """`wait_until` without stopping the clients' event loop."""
    return await asyncio.to_thread(wait_until, check, what, timeout)


async def restart(
    children: list[subprocess.Popen[Any]],
    backends: dict[str, subprocess.Popen[Any]],
    name: str,
    port: int,
    url: str,
    admin: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One backend restarted the chosen way; its figures."""
    backend_id = f"127.0.0.1:{port}"
    started = time.monotonic()
    phase: dict[str, Any] = {"backend": name}
    before = api(admin, f"/api/backends/{backend_id}")["localSessions"]
    phase["sessions_on_it"] = before
    if args.backend_close is None:
        api(admin, f"/api/backends/{backend_id}/evacuate?pace={args.pace}", "POST")

        def evacuated() -> Any:
            doc = api(admin, f"/api/backends/{backend_id}")
            done = doc["evacuation"]["done"] and doc["localSessions"] == 0
            return doc["evacuation"] if done else None

        progress = await in_thread(evacuated, f"{name}'s evacuation", 60 + before / args.pace)
        phase["evacuation"] = {
            k: progress[k] for k in ("sessions", "migrated", "skipped", "failed")
        }
        phase["evacuate_s"] = round(time.monotonic() - started, 2)
    process = backends[name]
    process.send_signal(signal.SIGTERM)
    await asyncio.to_thread(process.wait, 30)
    phase["exit_status"] = process.returncode
    if args.backend_close is not None:
        await in_thread(
            lambda: api(admin, f"/api/backends/{backend_id}")["localSessions"] == 0,
            f"{name}'s sessions to fail over",
            30,
        )
    phase["stopped_after_s"] = round(time.monotonic() - started, 2)
    # in a thread: waiting for the port must not stop the clients' loop
    backends[name] = await asyncio.to_thread(start_backend, children, port, name, args)
    if args.backend_close is None:
        api(admin, f"/api/backends/{backend_id}/enable", "POST")

    def usable() -> bool:
        doc = api(admin, f"/api/backends/{backend_id}")
        return bool(doc["usable"] and not doc["draining"] and doc["lastPollError"] is None)

    await in_thread(usable, f"{name} usable again", 30)
    phase["in_rotation"] = await lands_on(url, admin, backend_id)
    phase["total_s"] = round(time.monotonic() - started, 2)
    return phase


async def lands_on(url: str, admin: int, backend_id: str) -> bool:
    """Back in rotation: a new session goes to the restarted (emptiest) backend."""
    import websockets

    picks = api(admin, f"/api/backends/{backend_id}")["picks"]
    async with websockets.connect(url, compression=None, open_timeout=30) as ws:
        await ws.send("probe:0")
        await asyncio.wait_for(ws.recv(), 10)
        return bool(api(admin, f"/api/backends/{backend_id}")["picks"] > picks)


def start_backend(
    children: list[subprocess.Popen[Any]], port: int, name: str, args: argparse.Namespace
) -> subprocess.Popen[Any]:
    extra: list[str] = []
    if args.backend_close is not None:
        extra += ["--close-on-stop", str(args.backend_close)]
    return spawn_demo_backend(children, port, name=name, args=extra)


async def rolling(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    ports = {f"b{i + 1}": free_port() for i in range(3)}
    port, admin = free_port(), free_port()
    with processes() as children:
        backends = {name: start_backend(children, p, name, args) for name, p in ports.items()}
        spawn_balancer(
            children,
            port,
            admin,
            [f"ws://127.0.0.1:{p}" for p in ports.values()],
            [
                "log.level=warn",
                f"admin.token={TOKEN}",
                "balancing.poll_interval=0.5s",
                "shutdown.drain_period=0s",
                "workers=1",
            ],
            listen=f"tcp:{port}:interface=127.0.0.1:backlog=1024",
        )
        url = f"ws://127.0.0.1:{port}/echo"
        clients = [Client(i) for i in range(args.clients)]
        stop = asyncio.Event()
        tasks = []
        for first in range(0, len(clients), 50):  # 50 handshakes at a time
            batch = clients[first : first + 50]
            tasks += [asyncio.ensure_future(c.run(url, stop, rng, args.gap)) for c in batch]
            await asyncio.gather(*(c.connected.wait() for c in batch))
        connected = sum(c.closed is None and c.error is None for c in clients)

        def settled() -> dict[str, int] | None:
            counts = {
                name: api(admin, f"/api/backends/127.0.0.1:{p}")["localSessions"]
                for name, p in ports.items()
            }
            return counts if sum(counts.values()) == connected else None

        spread = await in_thread(settled, "every session on a backend", 30)
        await asyncio.sleep(args.settle)  # traffic before the first restart
        started = time.monotonic()
        phases = []
        for name, p in ports.items():
            phases.append(await restart(children, backends, name, p, url, admin, args))
            await asyncio.sleep(args.settle)
        total_s = round(time.monotonic() - started, 2)
        # The balancer's own bound on what failovers may have lost: client messages relayed
        # to a backend after the last one it sent back, when its leg ended.
        sessions = api(admin, "/api/sessions")["sessions"]
        possibly_lost = sum(s["possiblyLost"] for s in sessions)
        stop.set()
        await asyncio.gather(*tasks)
        names = {f"127.0.0.1:{p}": name for name, p in ports.items()}
        migrations = metric_values(admin, "wsbalancer_migrations_total", names)
        failovers = metric_values(admin, "wsbalancer_failovers_total", names)
        failover_outcomes = metric_values(admin, "wsbalancer_failover_outcomes_total", names)
    sent = sum(c.sent for c in clients)
    echoed = sum(len(c.echoed) for c in clients)
    closes: dict[str, int] = {}
    for c in clients:
        if c.closed is not None or c.error is not None:
            key = str(c.closed) if c.closed is not None else str(c.error)
            closes[key] = closes.get(key, 0) + 1
    return {
        "mode": "evacuate" if args.backend_close is None else f"backend close {args.backend_close}",
        "clients": args.clients,
        "clients_connected": connected,
        "sessions_per_backend_at_start": spread,
        "sessions_closed": sum(closes.values()),
        "close_codes": closes,
        "messages_sent": sent,
        "messages_echoed": echoed,
        "messages_lost": sent - echoed,
        "balancer_possibly_lost": possibly_lost,
        "duplicated": sum(c.duplicates for c in clients),
        "out_of_order": sum(c.out_of_order for c in clients),
        "migrations_by_outcome": migrations,
        "failovers_by_backend": failovers,
        "failovers_by_outcome": failover_outcomes,
        "restarts": phases,
        "rolling_restart_s": total_s,
    }


def report(result: dict[str, Any]) -> bool:
    """Print the figures and the PASS/FAIL lines; True if all pass."""
    for key, value in result.items():
        if key != "restarts":
            print(f"{key:<30}  {value}")
    for phase in result["restarts"]:
        print(
            f"  {phase['backend']}: "
            + ", ".join(f"{k} {v}" for k, v in phase.items() if k != "backend")
        )
    checks = [
        ("all clients connected", result["clients_connected"] == result["clients"]),
        ("0 client sessions closed", result["sessions_closed"] == 0),
        ("0 messages lost", result["messages_lost"] == 0),
        (
            "the balancer's possiblyLost bounds the loss",
            result["messages_lost"] <= result["balancer_possibly_lost"],
        ),
        ("0 messages duplicated", result["duplicated"] == 0),
        ("0 messages out of order", result["out_of_order"] == 0),
        ("every backend back in rotation", all(p["in_rotation"] for p in result["restarts"])),
    ]
    if result["mode"] == "evacuate":
        checks.append(
            (
                "every session on an evacuated backend migrated",
                all(
                    p["evacuation"]["migrated"] == p["evacuation"]["sessions"]
                    for p in result["restarts"]
                ),
            )
        )
    for what, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {what}")
    return all(ok for _, ok in checks)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=300)
    parser.add_argument("--gap", type=float, default=0.2, help="mean seconds between messages")
    parser.add_argument("--pace", type=float, default=50.0, help="evacuate's migrations/s")
    parser.add_argument(
        "--backend-close",
        type=int,
        metavar="CODE",
        help="instead of evacuating, each backend closes its sessions with CODE (1012, 1001)",
    )
    parser.add_argument("--settle", type=float, default=2.0, help="seconds between restarts")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    try:
        result = asyncio.run(rolling(args))
    except urllib.error.HTTPError as e:
        print(f"FAIL  admin API: {e.code} {e.read().decode(errors='replace')}")
        return 1
    ok = report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
