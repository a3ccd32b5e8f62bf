"""A worker process (`python -m wsbalancer.service.worker`, started by the master; see workers.py).

It loads the configuration from the same sources as the master, serves its admin site on
the Unix socket it was given, says READY on stdout, and adopts the inherited listening
sockets once the master answers GO (after replaying the admin changes made so far). It
drains and stops on SIGTERM, reloads on SIGHUP, and stops when the master goes away (its
stdin closes).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import replace
from typing import Any

from twisted.internet import stdio
from twisted.internet.error import ReactorNotRunning
from twisted.internet.protocol import Protocol
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    globalLogBeginner,
)
from twisted.protocols.tls import TLSMemoryBIOFactory

from wsbalancer.config import Config, load
from wsbalancer.observe.logs import json_observer, process_predicate, text_observer
from wsbalancer.relay.ids import session_ids
from wsbalancer.service.tap import BalancerService, build_service
from wsbalancer.service.tlsreload import server_endpoint
from wsbalancer.service.workers import WORKER_ENV

_log = Logger("wsbalancer.worker")


class AdoptedListener:
    """An inherited listening socket, shaped like the master's listener services for the
    frontends pause/resume, certificate reload and drain code."""

    def __init__(self, port: Any, description: str, tls: Any) -> None:
        self.port = port
        self.description = description
        self.tls = tls

    def stopService(self) -> Any:
        return self.port.stopListening()


class MasterLink(Protocol):
    """The worker's stdin/stdout to the master."""

    def __init__(self, service: BalancerService, spec: dict[str, Any], reactor: Any) -> None:
        self.service = service
        self.spec = spec
        self.reactor = reactor
        self.adopted = False

    def dataReceived(self, data: bytes) -> None:
        if b"GO" in data and not self.adopted:
            self.adopted = True
            adopt_listeners(self.service, self.spec, self.reactor)

    def say(self, line: bytes) -> None:
        transport: Any = self.transport
        transport.write(line + b"\n")

    def connectionLost(self, reason: Any = None) -> None:
        stop_once(self.reactor)  # the master is gone: drain and stop too


def stop_once(reactor: Any) -> None:
    """Stop the reactor, or nothing if it is already stopping.

    A worker is told to stop more than once in an ordinary shutdown: systemd sends SIGTERM
    to every process of the service's control group, the master passes it on, and the
    master's exit closes the worker's stdin. Twisted's own handler would log the second
    stop's ReactorNotRunning as a traceback."""
    try:
        reactor.stop()
    except ReactorNotRunning:
        pass


def _install_stop_signals(reactor: Any) -> None:
    """SIGTERM and SIGINT stop the worker once, however often they come (see stop_once)."""

    def on_signal(signum: int, frame: Any) -> None:
        _log.info("received {signal}, draining and stopping", signal=signal.Signals(signum).name)
        reactor.callFromThread(stop_once, reactor)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)


def adopt_listeners(service: BalancerService, spec: dict[str, Any], reactor: Any) -> None:
    """Start accepting on the master's listening sockets."""
    factory = service.balancer.server_factory()
    for listen in spec["listens"]:
        _, tls = server_endpoint(reactor, listen["description"])
        wrapped = TLSMemoryBIOFactory(tls, False, factory) if tls is not None else factory
        port = reactor.adoptStreamPort(listen["fd"], listen["family"], wrapped)
        os.close(listen["fd"])  # the port holds its own duplicate
        if service.frontends is not None and service.frontends.paused:
            port.stopReading()  # paused through the API before this worker took its sockets
        service.listeners.append(AdoptedListener(port, listen["description"], tls))  # type: ignore[arg-type]


def worker_config(spec: dict[str, Any]) -> Config:
    """The configuration from the master's sources, with this worker's admin socket."""
    overrides = [tuple(o) for o in spec["overrides"]]
    overrides += [
        ("admin.listen", f"unix:{spec['admin']}:mode=600", "worker"),
        ("workers", "1", "worker"),
    ]
    config = load(spec["config"], overrides=overrides, backends=spec["backends"])  # type: ignore[arg-type]
    return replace(config, listen=())


def _start_logging(config: Config, index: int) -> None:
    stream: Any = sys.stderr
    base = json_observer(stream) if config.log_format == "json" else text_observer(stream)

    def observer(event: dict[str, Any]) -> None:
        event["log_system"] = f"worker-{index}"
        event.setdefault("worker", index)
        base(event)

    # log.level applies to everything here, as twistd's own observer does in the master.
    level = process_predicate(config.log_level)
    filtered = FilteringLogObserver(observer, [level])  # type: ignore[arg-type]
    globalLogBeginner.beginLoggingTo([filtered], redirectStandardIO=False)


def main() -> None:
    from twisted.internet import reactor

    spec = json.loads(os.environ.pop(WORKER_ENV))
    index = int(spec["index"])
    config = worker_config(spec)
    _start_logging(config, index)
    service = build_service(config, reactor, spec, session_ids=session_ids(index))
    service.reload_source = lambda: worker_config(spec)
    assert service.admin is not None
    service.admin.factory.log = lambda request: None  # the master's calls, not worth a line each
    reactor.callWhenRunning(_install_stop_signals, reactor)  # after Twisted installs its own
    reactor.callWhenRunning(service.startService)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)

    link = MasterLink(service, spec, reactor)
    stdio.StandardIO(link)

    def announce() -> None:
        assert service.admin is not None
        service.admin.listening().addCallback(lambda _: link.say(b"READY"))

    reactor.callWhenRunning(announce)
    reactor.run()


if __name__ == "__main__":
    main()
