"""`wsbalancer-demo`: three demo backends (own processes), the balancer in front, a chat page.

ws://127.0.0.1:8080/chat        the balancer (WebSocket)
http://127.0.0.1:8000/          the chat page (open it in several tabs)
http://127.0.0.1:8081/balancer-metrics   where the sessions went
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Site

from wsbalancer.config import load
from wsbalancer.devtools.demo.backend import chat_page
from wsbalancer.devtools.processes import bin_path, wait_port


class _Page(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return chat_page()


def main(argv: list[str] | None = None) -> None:
    """Start the demo; Ctrl-C stops everything."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    parser.add_argument("--port", type=int, default=8080, help="balancer WebSocket port")
    parser.add_argument("--admin-port", type=int, default=8081)
    parser.add_argument("--page-port", type=int, default=8000)
    parser.add_argument("--backend-ports", default="9001,9002,9003")
    parser.add_argument("--strategy", default="least-loaded")
    args = parser.parse_args(argv)

    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from wsbalancer.service.tap import build_service

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])

    ports = [int(p) for p in args.backend_ports.split(",")]
    children: list[subprocess.Popen[Any]] = []
    try:
        for index, port in enumerate(ports, 1):
            child = subprocess.Popen(
                [
                    bin_path("wsbalancer-demo-backend"),
                    "--port",
                    str(port),
                    "--interface",
                    "127.0.0.1",
                    "--name",
                    f"backend-{index}",
                ]
            )
            children.append(child)
            wait_port(port, process=child)
        config = load(
            None,
            overrides=[
                ("listen", f"tcp:{args.port}:interface={args.host}", "flag --port"),
                (
                    "admin.listen",
                    f"tcp:{args.admin_port}:interface={args.host}",
                    "flag --admin-port",
                ),
                ("balancing.strategy", args.strategy, "flag --strategy"),
                ("balancing.poll_interval", "1s", "demo"),
            ],
            backends=[f"backend-{i}=ws://127.0.0.1:{p}" for i, p in enumerate(ports, 1)],
        )
        service = build_service(config, reactor)
        service.exit_on_listen_error = True
        service.privilegedStartService()
        service.startService()
        reactor.listenTCP(args.page_port, Site(_Page()), interface=args.host)  # type: ignore
        shown = "127.0.0.1" if args.host in ("0.0.0.0", "") else args.host
        page = f"http://{shown}:{args.page_port}/?ws=ws://{shown}:{args.port}/chat"
        print(
            f"\nwsbalancer demo running:\n"
            f"  chat page         {page}\n"
            f"  balancer          ws://{shown}:{args.port}/  (/chat broadcasts, others echo)\n"
            f"  dashboard         http://{shown}:{args.admin_port}/dashboard\n"
            f"  distribution      http://{shown}:{args.admin_port}/balancer-metrics\n"
            f"  prometheus        http://{shown}:{args.admin_port}/metrics\n"
            f"Ctrl-C stops it.\n",
            flush=True,
        )
        reactor.addSystemEventTrigger("before", "shutdown", service.stopService)  # type: ignore
        reactor.run()  # type: ignore[attr-defined]
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.wait(10)


if __name__ == "__main__":
    main(sys.argv[1:])
