"""The leaner epoll main loop keeps the reactor's behaviour: timed calls (due, chained,
cancelled), calls from threads, reads, writes that must wait for the socket, an error in a
protocol (logged, that connection dropped, the others served), an error while a connection
is dropped (logged for it, not in the loop) and a clean stop. Run in a
fresh process with its own reactor, the loop put in place by `patches.install()`."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import json, sys, threading, time
    from twisted.internet import epollreactor
    epollreactor.install()
    from twisted.internet import protocol, reactor
    from twisted.logger import globalLogPublisher
    from wsbalancer.wire import lean, patches, reactor_loop

    patches.install()
    seen = {"loop": type(reactor).mainLoop is reactor_loop.main_loop, "events": [],
            "errors": 0, "echoed": 0, "main_loop_errors": 0, "lost_errors": 0}
    events = seen["events"]

    def observe(event):
        if event.get("isError") or event.get("log_failure"):
            seen["errors"] += 1
            failure = event.get("log_failure") or event.get("failure")
            text = str(event.get("log_format", "")) + str(failure.value if failure else "")
            seen["main_loop_errors"] += "Unexpected error in main loop" in text
            seen["lost_errors"] += "an error on close" in text
    globalLogPublisher.addObserver(observe)

    started = time.monotonic()
    def timed(name):
        events.append((name, round(time.monotonic() - started, 3)))
    cancelled = reactor.callLater(0.05, timed, "cancelled")
    cancelled.cancel()
    reactor.callLater(0.1, timed, "later")
    reactor.callLater(0.02, lambda: reactor.callLater(0.03, timed, "chained"))
    threading.Thread(
        target=lambda: reactor.callFromThread(timed, "from thread"), daemon=True
    ).start()

    BIG = b"x" * (8 << 20)  # more than the socket takes at once: the rest waits for POLLOUT

    class Server(protocol.Protocol):
        fail_on_close = False

        def connectionLost(self, reason):
            if self.fail_on_close:
                raise RuntimeError("an error on close")
        def dataReceived(self, data):
            if data.startswith(b"boom"):
                raise RuntimeError("a protocol error")
            if data == b"bye":
                self.fail_on_close = True
                return
            if data == b"big?":
                self.transport.write(BIG)
            else:
                self.transport.write(data)

    class Client(protocol.Protocol):
        def __init__(self, name, first):
            self.name, self.first, self.got = name, first, b""
        def connectionMade(self):
            self.transport.write(self.first)
            if self.first == b"bye":
                self.transport.loseConnection()  # the server reads the end: its close fails
        def dataReceived(self, data):
            self.got += data
            if self.got == BIG:
                events.append((self.name, "big"))
                self.transport.loseConnection()
            elif self.got == b"hello":
                seen["echoed"] += 1
                self.transport.loseConnection()
        def connectionLost(self, reason):
            events.append((self.name, "lost"))
            if len([e for e in events if e[1] == "lost"]) == 4:
                reactor.callLater(0.15, reactor.stop)

    port = reactor.listenTCP(0, protocol.Factory.forProtocol(Server), interface="127.0.0.1")
    for name, first in [("boom", b"boom"), ("bye", b"bye"), ("echo", b"hello"), ("big", b"big?")]:
        protocol.ClientCreator(reactor, Client, name, first).connectTCP(
            "127.0.0.1", port.getHost().port
        )
    reactor.addSystemEventTrigger("before", "shutdown", lambda: events.append(("shutdown", 0)))
    reactor.callLater(20, reactor.stop)  # a bound, should anything above never happen
    reactor.run()
    print(json.dumps(seen))
    """
)


def test_the_lean_loop_keeps_the_reactors_behaviour() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["loop"]
    events = [tuple(event) for event in seen["events"]]
    at = {name: when for name, when in events if isinstance(when, float)}
    assert "cancelled" not in at and "from thread" in at
    assert at["later"] >= 0.1 and at["chained"] >= 0.05
    assert ("big", "big") in events and seen["echoed"] == 1  # other connections served
    assert ("boom", "lost") in events and seen["errors"] >= 1  # logged, that one dropped
    assert ("shutdown", 0) in events
    # A protocol failing while its connection is dropped is logged for that connection;
    # the loop itself never sees it.
    assert seen["lost_errors"] == 1 and seen["main_loop_errors"] == 0
