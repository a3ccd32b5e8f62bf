"""A backend at an IP address without TLS is dialled with `connectTCP` itself (no endpoint
and its per-dial wrapper protocol, Deferred and canceller); host names keep an endpoint. The
connector's own failures reach the dial as an endpoint's did. Socket-free, through the rig.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import error
from twisted.internet.endpoints import HostnameEndpoint
from twisted.python.failure import Failure

from wsbalancer.config import load
from wsbalancer.relay.protocols import BackendProtocol
from wsbalancer.upstream.dialer import BackendDialer, _DialFactory

from .memory import IGNORE


def test_an_address_is_dialled_with_connect_tcp_and_the_leg_reads_its_own_bytes(
    rig: Any, reactor: Any
) -> None:
    r = rig(("b1",))
    client = r.connect()
    assert client.opened
    leg = r.session.backend
    assert type(leg.dial.protocol) is type(leg)
    assert leg.transport.protocol is leg  # reads go to the leg itself
    r.send(client, b"x")
    assert client.messages == [b"x:b1"]


def test_a_connect_timeout_fails_the_dial_as_a_timeout(rig: Any) -> None:
    r = rig(("b1", "b2"))
    r.net.answer("10.0.0.1", 9000, IGNORE)
    client = r.connect()
    ((connector, factory),) = r.net.unanswered
    assert isinstance(factory, _DialFactory)  # connectTCP was given the dial's own factory
    factory.clientConnectionFailed(connector, Failure(error.TimeoutError()))
    r.net.pump()
    assert client.opened  # the next backend took the session
    assert r.session.backend_state.id == "b2"
    assert r.state("b1").connect_failures == 1
    assert r.metric("wsbalancer_backend_dial_failures_total", backend="b1") == 1


def test_a_failure_after_the_dial_was_given_up_is_not_the_backends(rig: Any) -> None:
    r = rig(("b1", "b2"))
    r.net.answer("10.0.0.1", 9000, IGNORE)
    client = r.connect()
    ((connector, factory),) = r.net.unanswered
    client.pipe.drop()  # the client leaves while TCP is still connecting
    r.net.pump()
    assert connector.stoppedConnecting
    # A real connector reports a stopped attempt as failed (UserError): not held against b1.
    factory.clientConnectionFailed(connector, Failure(error.UserError()))
    r.net.pump()
    assert r.state("b1").connect_failures == 0
    assert r.metric("wsbalancer_backend_dial_failures_total", backend="b1") == 0
    assert r.attempts("b2") == 0


def test_a_host_name_keeps_its_endpoint(reactor: Any) -> None:
    for url, expected in (("ws://backend.test:9000", None), ("ws://10.0.0.1:9000", True)):
        config = load(None, environ={}, backends=[f"b1={url}"])  # the default pool
        dialer = BackendDialer(reactor, config, BackendProtocol, process=config)
        _, target = dialer._prepared(config.backends[0])
        if expected:
            assert target == ("10.0.0.1", 9000)
        else:
            assert isinstance(target, HostnameEndpoint)
