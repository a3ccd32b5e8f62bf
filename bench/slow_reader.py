"""Bounded memory with a slow reader: a backend streams a lot to a client that reads slowly.

    python bench/slow_reader.py                      # 1 GiB at 1 MiB/s (about 17 minutes)
    python bench/slow_reader.py --total 128MiB --rate 4MiB

A backend (its own process) streams `--total` bytes in 64 KiB messages through the balancer
(a twistd process) to a client that reads `--rate` bytes a second. Flow control should hold
the balancer's memory flat: its RSS is sampled from /proc twice a second and the growth over
the start is printed. Without backpressure the balancer would buffer what the client has
not read yet, growing by (backend speed - rate) per second.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wsbalancer.config import parse_size  # noqa: E402
from wsbalancer.devtools.processes import (  # noqa: E402
    free_port,
    processes,
    rss_kib,
    spawn_balancer,
    wait_port,
)

CHUNK = 64 * 1024


def serve_backend(port: int) -> None:
    """The streaming backend: on "stream N" it sends N bytes, pausing when its peer does."""
    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
    from twisted.internet import reactor
    from twisted.internet.interfaces import IPushProducer
    from zope.interface import implementer

    @implementer(IPushProducer)
    class Streamer(WebSocketServerProtocol):
        left = 0
        paused = False

        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            self.left = int(payload.split()[1])
            self.transport.registerProducer(self, True)
            self.resumeProducing()

        def pauseProducing(self) -> None:
            self.paused = True

        def resumeProducing(self) -> None:
            self.paused = False
            while self.left > 0 and not self.paused:
                size = min(CHUNK, self.left)
                self.left -= size
                self.sendMessage(b"x" * size, isBinary=True)
            # No close from here: with a slow reader it would wait behind the whole backlog
            # and a backend's close-handshake timeout would cut the stream short.

        def stopProducing(self) -> None:
            self.left = 0

    factory = WebSocketServerFactory()
    factory.protocol = Streamer
    factory.setProtocolOptions(maxMessagePayloadSize=0)
    reactor.listenTCP(port, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--total", default="1GiB")
    parser.add_argument("--rate", default="1MiB", help="bytes the client reads per second")
    parser.add_argument("--serve-backend", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_backend:
        serve_backend(args.serve_backend)
        return
    total, rate = parse_size(args.total), parse_size(args.rate)
    from websockets.sync.client import connect

    backend_port, port, admin = free_port(), free_port(), free_port()
    with processes() as children:
        backend = subprocess.Popen([sys.executable, __file__, "--serve-backend", str(backend_port)])
        children.append(backend)
        wait_port(backend_port, process=backend)
        balancer = spawn_balancer(
            children,
            port,
            admin,
            [f"ws://127.0.0.1:{backend_port}"],
            [
                "log.level=warn",
                "balancing.metric_path=none",
                "compression.client=false",
                "keepalive.client.ping_interval=0",
                "keepalive.backend.ping_interval=0",
            ],
        )
        samples: list[int] = []
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.5):
                samples.append(rss_kib(balancer.pid))

        with connect(f"ws://127.0.0.1:{port}/", max_size=None, max_queue=1, compression=None) as ws:
            base = rss_kib(balancer.pid)
            threading.Thread(target=sample, daemon=True).start()
            started = time.monotonic()
            ws.send(f"stream {total}")
            received = 0
            while received < total:
                received += len(ws.recv(timeout=60))
                # Read at `rate`: wait until the clock catches up with what was read.
                ahead = received / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
            elapsed = time.monotonic() - started
        done.set()
    peak = max(samples or [base])
    print(
        f"streamed {total / 2**20:.0f} MiB at {received / elapsed / 2**20:.2f} MiB/s "
        f"in {elapsed:.0f} s through the balancer"
    )
    print(
        f"balancer RSS: {base / 1024:.1f} MiB at start, peak {peak / 1024:.1f} MiB, "
        f"growth {(peak - base) / 1024:.1f} MiB ({len(samples)} samples)"
    )


if __name__ == "__main__":
    main()
