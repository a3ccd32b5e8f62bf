"""The listening socket's backlog: a burst of connections while the balancer is busy is
queued by the kernel, not dropped (Twisted's own default of 50 drops SYNs past it)."""

from __future__ import annotations

import os
import select
import signal
import socket
import time

from websockets.sync.client import connect

from wsbalancer.devtools.processes import free_port, processes, spawn_balancer, spawn_demo_backend
from wsbalancer.service.listeners import LISTEN_BACKLOG, ListenerService, with_default_backlog

BURST = 300  # well past Twisted's 50, well under our default


def test_a_burst_of_connects_is_queued_while_the_balancer_cannot_accept() -> None:
    with processes() as children:
        backend = free_port()
        spawn_demo_backend(children, backend, "b0")
        port, admin = free_port(), free_port()
        balancer = spawn_balancer(children, port, admin, [f"b0=ws://127.0.0.1:{backend}"])
        sockets: list[socket.socket] = []
        balancer.send_signal(signal.SIGSTOP)  # it accepts nothing: the kernel's queue holds all
        try:
            for _ in range(BURST):
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", port))
                sockets.append(s)
            # A connect completes once the kernel queued the connection; past a full queue
            # the SYN is dropped and the connect stays pending for a retransmit (1 s, 3 s...).
            pending = {s.fileno(): s for s in sockets}
            poller = select.poll()
            for fd in pending:
                poller.register(fd, select.POLLOUT)
            deadline = time.monotonic() + 0.9
            while pending and time.monotonic() < deadline:
                for fd, _ in poller.poll(100):
                    if pending.pop(fd, None) is not None:
                        poller.unregister(fd)
            assert not pending, f"{len(pending)} of {BURST} connects not queued"
            assert all(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0 for s in sockets)
        finally:
            balancer.send_signal(signal.SIGCONT)
            for s in sockets:
                s.close()
        with connect(f"ws://127.0.0.1:{port}/echo", open_timeout=10) as ws:
            ws.send("after the burst")
            assert ws.recv(timeout=10) == "after the burst"
        assert os.path.exists(f"/proc/{balancer.pid}")


def test_the_default_backlog_applies_unless_the_description_sets_one() -> None:
    assert with_default_backlog("tcp:8080") == f"tcp:8080:backlog={LISTEN_BACKLOG}"
    assert with_default_backlog("tcp6:8080:interface=\\:\\:1").endswith(
        f":backlog={LISTEN_BACKLOG}"
    )
    assert with_default_backlog("ssl:443:privateKey=k.pem:certKey=c.pem").endswith(
        f":certKey=c.pem:backlog={LISTEN_BACKLOG}"
    )
    assert with_default_backlog("unix:/run/wsb.sock:mode=600").endswith(
        f"mode=600:backlog={LISTEN_BACKLOG}"
    )
    assert with_default_backlog("tcp:8080:backlog=64") == "tcp:8080:backlog=64"
    assert with_default_backlog("tcp:8080:interface=127.0.0.1:backlog=4096:") == (
        "tcp:8080:interface=127.0.0.1:backlog=4096:"
    )
    assert with_default_backlog("systemd:domain=INET:index=0") == "systemd:domain=INET:index=0"


def test_a_listener_keeps_a_backlog_given_by_position() -> None:
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory

    def backlog(description: str) -> int:
        service = ListenerService(reactor, description, Factory())
        return service.endpoint._backlog  # type: ignore[attr-defined,no-any-return]

    assert backlog("tcp:0:interface=127.0.0.1") == LISTEN_BACKLOG
    assert backlog("tcp:0:127.0.0.1:128") == 128  # port, interface, backlog
    assert backlog("tcp6:0:64") == 64  # port, backlog
    assert backlog("tcp:0:interface=127.0.0.1:backlog=32") == 32
